"""Experiment tracking: `--mlflow URI` (or EDGEKIT_MLFLOW_URI) gives a command one MLflow run.

The run holds the recipe (or the command's settings) as params, metrics (per epoch with step=epoch; per stage or
trial in nested runs), provenance as tags, and report.json, report.html and the recipe as artifacts. A command that
fails ends its run FAILED with its one-line error in the `edgekit.error` tag. Without a URI, and on every rank but
0 under torchrun (RANK), the run is `Run`, which does nothing. MLflow is an optional extra, imported in this module
only, once a URI is given. A tracking server that cannot be reached fails the command before its work starts; one
that stops answering later costs a warning, not the work (the rest of the run is not logged)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .errors import EdgeKitError, UsageError
from .hardware.identity import host_facts
from .provenance import git_commit
from .records import CompressReport, SearchRecord, StageRow, Validation, Verdict

ENV_URI = "EDGEKIT_MLFLOW_URI"
ENV_EXPERIMENT = "EDGEKIT_MLFLOW_EXPERIMENT"
EXPERIMENT = "edgekit"
ERROR_TAG = "edgekit.error"
EXTRA_HINT = "pip install 'edgekit[mlflow]'"
Progress = Callable[[int, int, float, float, str], None]  # (epoch, epochs, loss, val score, its metric): training's
Warn = Callable[[str], None]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested dict/list as MLflow params: dotted keys (list items by index), None left out."""
    if isinstance(value, Mapping):
        items: Iterator[tuple[str, Any]] = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {} if value is None else {prefix: str(value)}
    flat: dict[str, str] = {}
    for k, v in items:
        flat.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return flat


def key(name: str) -> str:
    """A param, metric or tag name MLflow accepts: other characters (a subset's `+`) become `_`."""
    return re.sub(r"[^\w\-. :/]", "_", name)[:250]


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are numbers (not bools, not None): what MLflow takes as metrics."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Run:
    """A command's run with tracking off: every call does nothing."""

    enabled = False

    def params(self, values: Mapping[str, Any]) -> None:
        """Params, logged as text, once each; None entries are skipped."""

    def metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        """Numbers only: None, bool and text entries are skipped."""

    def tags(self, values: Mapping[str, Any]) -> None:
        """Tags (provenance, outcomes); None entries are skipped."""

    def artifact(self, path: Path) -> None:
        """A file, when it exists."""

    def text(self, text: str, name: str) -> None:
        """A file written from text, e.g. recipe.yaml."""

    def child(self, name: str, seconds: float | None = None) -> Run:
        """A nested run (a stage, a trial), started now, or `seconds` ago; `end` it."""
        return self

    def end(self, error: str | None = None) -> None:
        """End a nested run: FINISHED, or FAILED with its error."""

    def fail(self, message: str) -> None:
        """The command failed without raising (it exits 1 after printing its result): the run ends FAILED."""

    def epochs(self, progress: Progress) -> Progress:
        """`progress` that also logs `loss` and the val score (`val_accuracy`, `val_mae`, ...) with step=epoch to
        this run."""
        return progress


class MlflowRun(Run):
    """A run on a tracking server (or any tracking URI MLflow takes), through MlflowClient's explicit run ids: no
    global active run, so nested runs can be logged to in any order."""

    enabled = True

    def __init__(self, client: Any, run_id: str, experiment_id: str, warn: Warn, root: MlflowRun | None = None):
        self.client, self.run_id, self.experiment_id, self.warn = client, run_id, experiment_id, warn
        self.root = root or self  # the command's run: whether logging broke, the failure, the open nested runs
        self.error: str | None = None
        self.broken = False
        self.open: list[MlflowRun] = []

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A logging call after the start. A call MLflow refuses (a value it does not take) is a warning; a server
        that does not answer (after MLflow's own retries) stops the run's logging, with one warning."""
        if self.root.broken or not self.run_id:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if getattr(e, "error_code", "INTERNAL_ERROR") != "INTERNAL_ERROR":  # the request was answered: refused
                self.warn(f"MLflow refused {what} ({_first_line(e)})")
                return None
            self.root.broken = True  # a connection error, a timeout, a server error
            self.warn(f"MLflow logging stopped, the command goes on ({what}: {_first_line(e)})")
            return None

    def _batch(self, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        for i in range(0, max(len(metrics), len(params), len(tags)), 100):  # the REST API's limit per call
            self._call("log_batch", self.client.log_batch, self.run_id, metrics=metrics[i : i + 100],
                       params=params[i : i + 100], tags=tags[i : i + 100], synchronous=True)  # fmt: skip

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._batch(params=[Param(key(k), str(v)[:6000]) for k, v in values.items() if v is not None])

    def metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(key(k), v, now, step) for k, v in numbers(values).items()])

    def tags(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._batch(tags=[RunTag(key(k), str(v)[:8000]) for k, v in values.items() if v is not None])

    def artifact(self, path: Path) -> None:
        if Path(path).is_file():
            self._call("log_artifact", self.client.log_artifact, self.run_id, str(path))

    def text(self, text: str, name: str) -> None:
        self._call("log_text", self.client.log_text, self.run_id, text, name)

    def child(self, name: str, seconds: float | None = None) -> MlflowRun:
        root = self.root
        start = int((time.time() - seconds) * 1000) if seconds is not None else None
        run = self._call("create_run", self.client.create_run, self.experiment_id, start_time=start, run_name=name,
                         tags={"mlflow.parentRunId": root.run_id})  # fmt: skip
        nested = MlflowRun(self.client, run.info.run_id if run else "", self.experiment_id, self.warn, root)
        root.open.append(nested)
        return nested

    def end(self, error: str | None = None) -> None:
        if self in self.root.open:
            self.root.open.remove(self)
        if self is self.root:  # nested runs still open end with their command
            for nested in list(self.open):
                nested.end(error)
        if error:
            self.tags({ERROR_TAG: error})
        # MLflow prints the run's URL on stdout as it ends: stdout is the command's result (with --json, one JSON
        # object), so the command's own run says it on stderr, and only when it succeeded (an error is one line).
        with contextlib.redirect_stdout(sys.stderr if self is self.root and not error else io.StringIO()):
            self._call("set_terminated", self.client.set_terminated, self.run_id, "FAILED" if error else "FINISHED")

    def fail(self, message: str) -> None:
        self.root.error = message

    def epochs(self, progress: Progress) -> Progress:
        def update(epoch: int, epochs: int, loss: float, val: float, metric: str) -> None:
            progress(epoch, epochs, loss, val, metric)
            self.metrics({"loss": loss, f"val_{metric}": val}, step=epoch)

        return update


def rank() -> int:
    """This process's rank under torchrun (RANK), 0 when not distributed."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _stderr(message: str) -> None:
    print(f"edgekit: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def start(command: str, uri: str | None, name: str, warn: Warn = _stderr) -> Iterator[Run]:
    """The command's run on `uri` (the --mlflow flag), else on EDGEKIT_MLFLOW_URI; a Run that does nothing when
    neither is set, and on every rank but 0. An exception ends the run FAILED with its one-line error (str() of an
    EdgeKitError, as the CLI prints it) and propagates; `fail()` ends it FAILED on a clean exit."""
    source = "--mlflow" if uri else ENV_URI
    uri = uri or os.environ.get(ENV_URI) or None
    if uri is None:
        yield Run()
        return
    if importlib.util.find_spec("mlflow") is None:  # on every rank: the same command fails the same way
        raise UsageError(f"{source} needs the mlflow extra", EXTRA_HINT)
    if rank() != 0:
        yield Run()
        return
    run = _open(command, uri, name, warn)
    try:
        yield run
    except EdgeKitError as e:
        run.end(str(e))  # the line the CLI prints
        raise
    except KeyboardInterrupt:
        run.end("interrupted")
        raise
    except BaseException as e:
        code = getattr(e, "exit_code", None)  # typer.Exit: 0 success, 3 unverified (nothing failed)
        if code in (0, 3):
            run.end(run.error)
        else:
            why = f"exit code {code}" if isinstance(code, int) else f"{type(e).__name__}: {_first_line(e)}"
            run.end(run.error or why)
        raise
    run.end(run.error)


def _open(command: str, uri: str, name: str, warn: Warn) -> MlflowRun:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:  # found but broken: a partial install
        raise UsageError(f"mlflow does not import ({_first_line(e)})", EXTRA_HINT) from e
    experiment = os.environ.get(ENV_EXPERIMENT) or EXPERIMENT
    try:
        _reachable(uri)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=name, tags={"edgekit.command": command})
    except Exception as e:
        raise EdgeKitError(f"cannot start an MLflow run at {uri}: {_first_line(e)}",
                           f"check the tracking server, or drop --mlflow / unset {ENV_URI}") from e  # fmt: skip
    return MlflowRun(client, run.info.run_id, experiment_id, warn)


def _reachable(uri: str) -> None:
    """An http(s) server that refuses connections fails now, not after MLflow's minutes of retries."""
    url = urlsplit(uri)
    if url.scheme in ("http", "https") and url.hostname:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname, port), timeout=10):
            pass


def provenance_tags(prov: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Tags from a run's provenance record (provenance.provenance()), else EdgeKit's version and commit; `extra`
    as edgekit.KEY."""
    prov = prov or {}
    host = prov.get("host") or {}
    inputs = prov.get("inputs") or {}
    tags: dict[str, Any] = {
        "edgekit.version": prov.get("edgekit", __version__),
        "edgekit.git_commit": prov["git_commit"] if "git_commit" in prov else git_commit(),
        "edgekit.seed": prov.get("seed"), "edgekit.host_cpu": host.get("cpu") or host_facts()["cpu_model"],
        "edgekit.host": host.get("hostname") or platform.node(),
        "edgekit.model_sha256": inputs.get("model_sha256"),
        **{f"edgekit.data_sha256.{k}": v for k, v in (inputs.get("data_sha256") or {}).items()},
    }  # fmt: skip
    tags.update({f"edgekit.{k}": v for k, v in extra.items()})
    return tags


# -- per command: what each verb's result holds, as params, metrics, nested runs, tags and artifacts --------------


class Compress:
    """A compress run: the recipe as params and recipe.yaml, one nested run per stage (per-epoch metrics go to the
    stage running), then the report's metrics, provenance, report.json and report.html. As a context manager: a
    run that fails still logs the report.json it wrote (what it measured, and why it stopped)."""

    def __init__(self, run: Run, recipe: Any, run_dir: Path) -> None:  # a recipe.Recipe
        from .recipe import dump_recipe

        self.run, self.run_dir, self.began = run, run_dir, time.time()
        self.stages = [s.model_dump(mode="json") for s in recipe.stages]
        self.done, self.current = 0, None
        self.by_dir: dict[str, Run] = {}
        run.params(flatten(recipe.model_dump(mode="json", exclude={"search"})))
        run.tags({"edgekit.profile": ",".join(recipe.targets), "edgekit.data": recipe.data.name,
                  "edgekit.model": recipe.model})  # fmt: skip
        run.text(dump_recipe(recipe), "recipe.yaml")

    def __enter__(self) -> Compress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        path = self.run_dir / "report.json"
        if kind is not None and path.is_file() and path.stat().st_mtime >= self.began - 1:
            self.run.artifact(path)  # this run's, not one an earlier run left

    def _stage(self, seconds: float | None = None) -> Run:
        if self.current is None:
            i = self.done + 1
            spec = self.stages[i - 1] if i <= len(self.stages) else {"kind": "stage"}
            self.current = self.run.child(f"{i:02d}-{spec['kind']}", seconds)
            self.current.params(flatten(spec))
        return self.current

    def epochs(self, progress: Progress) -> Progress:
        """Per-epoch loss and val score (`val_accuracy`, `val_mae`, ...) into the nested run of the stage that
        trains."""
        if not self.run.enabled:
            return progress

        def update(epoch: int, epochs: int, loss: float, val: float, metric: str) -> None:
            progress(epoch, epochs, loss, val, metric)
            self._stage().metrics({"loss": loss, f"val_{metric}": val}, step=epoch)

        return update

    def stage(self, row: StageRow, where: Path) -> None:
        """A stage ended (or was reused): its row's metrics into its nested run, which ends."""
        if not self.run.enabled:
            return
        run = self._stage(row.seconds)
        art = row.artifact
        run.metrics({**numbers(row.dump()), "size_mb": art and art.size_mb})  # accuracy, drop, params, MACs, seconds
        run.tags({"edgekit.cached": row.cached, "edgekit.stage_dir": where.name})
        run.end()
        if art:
            self.by_dir[Path(art.path).parent.name] = run
        self.current, self.done = None, self.done + 1

    def report(self, report: CompressReport | None, run_dir: Path) -> None:
        """The finished run: final and baseline metrics, validation latency per artifact (into the stage that made
        it), provenance, the verdict, report.json and report.html; a failed verdict fails the run."""
        if not self.run.enabled or report is None or report.verdict is None:
            return
        run, v, m = self.run, report.verdict, report.metric  # the gated metric names its keys
        final = report.stages[-1].dump() if report.stages else report.baseline
        base = report.baseline
        run.metrics({f"baseline.{m}": base.get(m), "baseline.params": base.get("params"),
                     "baseline.macs": base.get("macs"), m: final.get(m), f"{m}_drop": v.score(f"{m}_drop"),
                     "params": final.get("params"), "macs": final.get("macs")})  # fmt: skip
        for validation in report.validation:
            for i, row in enumerate(validation.dump()["rows"]):
                values = latency_metrics(row)
                run.metrics(values if i == 0 else {f"{Path(row['artifact']).name}.{k}": x for k, x in values.items()})
                self.by_dir.get(Path(row["artifact"]).name, Run()).metrics(values)
        run.tags({**provenance_tags(report.provenance), "edgekit.verdict": v.status})
        artifacts(run, run_dir, "report.json")
        if v.status == "fail":
            run.fail(budget_missed(v))


def budget_missed(verdict: Verdict) -> str:
    """A failed compress verdict in one line, as the CLI prints it."""
    m = verdict.metric or "accuracy"
    missed = verdict.failed or [f"{m} drop {verdict.score(f'{m}_drop'):.4g} > {verdict.gated[0]} {verdict.max_drop}"]
    return f"budget missed: {'; '.join(missed)}"


def latency_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A validation row's numbers (as recorded): accuracy, drop, latency p50/p95, size, peak RAM."""
    m = row.get("metric") or "accuracy"
    keys = {m: f"artifact_{m}", f"{m}_drop": f"artifact_{m}_drop", "p50_ms": "latency_p50_ms",
            "p95_ms": "latency_p95_ms", "size_mb": "size_mb", "peak_ram_mb": "peak_ram_mb"}  # fmt: skip
    return {name: row.get(k) for k, name in keys.items()}


def artifacts(run: Run, run_dir: Path, report: str) -> None:
    """report.json (or search.json), report.html (rendered here when the run has none: compress writes none) and
    the run's log. A report.json a failed run did not write (an older run's) is not logged."""
    path = run_dir / report
    if not path.is_file():
        return
    run.artifact(path)
    html = path.with_suffix(".html")
    if report == "report.json" and (not html.is_file() or html.stat().st_mtime < path.stat().st_mtime):
        try:
            from .report import render

            render(run_dir)
        except Exception as e:  # e.g. the charts' matplotlib (the report extra) missing: the JSON is the record
            run.tags({"edgekit.report_html": f"not rendered: {_first_line(e)}"})
    run.artifact(html)
    for log in ("compress.log", "search.log"):
        run.artifact(run_dir / log)


def search(run: Run, result: SearchRecord, run_dir: Path) -> None:
    """A search: one nested run per trial (its choices as params, its objectives and test drop as metrics), the
    front and the chosen point as metrics and tags, search.json and search.html; no feasible trial fails the run."""
    if not run.enabled:
        return
    front = {p.number for p in result.front}
    for t in result.trials:
        trial = run.child(f"trial-{t.number:03d}")
        trial.params({**t.params, **({"origin": t.origin} if t.origin else {})})
        trial.metrics({**(t.values or {}), "test_drop": t.score("test_drop"), "macs": t.macs})
        trial.tags({"edgekit.trial_status": t.status, "edgekit.front": t.number in front,
                    "edgekit.reason": t.reason})  # fmt: skip
        trial.end(None if t.status != "failed" else str(t.error or "trial failed"))
    chosen = next((p for p in result.front if p.number == result.chosen), None)
    run.metrics({"trials": len(result.trials), "front_size": len(result.front), "seconds": result.seconds,
                 **{f"chosen.{k}": v for k, v in ((chosen and chosen.values) or {}).items()}})  # fmt: skip
    run.tags(provenance_tags(profile=result.profile, data=result.data, model=result.model,
                             latency_source=result.latency_source, chosen_trial=result.chosen))  # fmt: skip
    artifacts(run, run_dir, "search.json")
    if not result.front:
        run.fail(f"no trial met the budgets (see {run_dir / 'search.json'})")


def validation(run: Run, validated: Validation | Mapping[str, Any], budgets: Mapping[str, Any]) -> None:
    """A validation (or a fleet's, whose rows are per device): the budgets as params, one nested run per artifact
    with its numbers as recorded, validation.json; a verdict of fail (a budget missed, an artifact that did not
    run) fails the run."""
    if not run.enabled:
        return
    result = validated.dump() if isinstance(validated, Validation) else validated
    run.params({"profile": result.get("profile"), "split": result.get("split"), **budgets})
    for row in result["rows"]:
        art = run.child(Path(row["artifact"]).name)
        art.params({"format": row.get("format"), "precision": row.get("precision"), "artifact": row["artifact"]})
        art.metrics(latency_metrics(row))
        art.tags({"edgekit.status": row["status"], "edgekit.sha256": row.get("sha256")})
        art.end(row.get("error") if row["status"] == "error" else None)
    if len(result["rows"]) == 1:
        run.metrics(latency_metrics(result["rows"][0]))
    run.tags({**provenance_tags(), "edgekit.profile": result.get("profile"), "edgekit.verdict": result["verdict"]})
    run.text(json_text(result), "validation.json")
    if result["verdict"] in ("fail", "error"):
        bad = [f"{Path(r['artifact']).name}: {r.get('error') or r['status']}" for r in result["rows"]
               if r["status"] in ("fail", "error")]  # fmt: skip
        run.fail(f"validation failed: {'; '.join(bad) or result['verdict']}")


def train(run: Run, settings: Mapping[str, Any], result: dict[str, Any], package: Path) -> None:
    """A training run: its settings as params (given at the start), test accuracy per modality subset, the model
    package's manifest."""
    if not run.enabled:
        return
    test = result.get("test") or {}
    metrics = {"params": result.get("params"), "train_seconds": result.get("train_seconds"),
               "best_val_accuracy": result.get("best_val_accuracy"), "best_epoch": result.get("best_epoch"),
               "epochs_run": result.get("epochs_run")}  # fmt: skip
    for subset, s in (test.get("subsets") or {}).items():
        metrics.update({f"test.{subset}.accuracy": s.get("accuracy"), f"test.{subset}.macro_f1": s.get("macro_f1")})
    run.metrics(metrics)
    run.tags({**provenance_tags(), **{f"edgekit.{k}": v for k, v in settings.items() if k in ("data", "arch")}})
    run.artifact(package / "edgekit-model.yaml")
    run.text(json_text(result), "train.json")


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
