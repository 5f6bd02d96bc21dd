"""`edgekit compress`: run a recipe's stages in order into a run directory.

Every stage's output lands in `stages/NN-kind-KEY/`, written atomically, where KEY hashes everything that
determines it (the previous stage's key, this stage's settings, the data, the seed). A rerun with the same
recipe finds those directories and skips the stages; distillation also resumes mid-stage from its per-epoch
checkpoint. `report.json` is written last: a run directory without it is not complete."""

from __future__ import annotations

import copy
import functools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from .artifact import model_hash, versions
from .branches import ModuleBranches, module_branches
from .data import load_split
from .devices import barrier, broadcast, is_main
from .errors import EdgeKitError, UsageError
from .evaluation import torch_predict
from .fsutil import check_writable, content_hash, write_json, write_text
from .hardware import HardwareProfile, resolve_profile
from .io import IOSpec
from .loading import load_model, portable_factory
from .provenance import data_hashes, provenance, tree_hashes
from .recipe import Recipe, dump_recipe, load_recipe
from .records import KEY, VERSION
from .stages.steps import Current, Log, ModelStage, StageContext, model_stats, split_score
from .tasks import Gate, Task, gate_for
from .training import ProgressFn
from .validate import Options, subset_names, validate
from .zoo import reference_teacher

REPORT = "report.json"


def check_run_dir(out: Path, recipe_text: str, overwrite: bool) -> bool:
    """Refuse an --out that is a file, a directory that holds no EdgeKit run, or another recipe's run without
    --overwrite, before any work; True when `out` holds another recipe's run that --overwrite replaces."""
    check_writable(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is a file", "choose a directory for --out")
    previous = out / "recipe.yaml"
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not previous.is_file():  # --overwrite replaces an EdgeKit run, never an arbitrary directory
        raise UsageError(f"{out} is not empty and holds no EdgeKit run", "choose a new or empty --out")
    try:  # read as this version reads it: a field added since (its default filled in) is the same recipe
        same = dump_recipe(load_recipe(previous)) == recipe_text
    except UsageError:
        same = False
    if not same and not overwrite:
        raise UsageError(f"{out} holds a different run", "choose a new --out, or pass --overwrite to replace it")
    return not same


def prepare_run_dir(out: Path, recipe_text: str, overwrite: bool) -> None:
    """A new directory, or the same recipe's earlier run (resumed); another recipe's run only with --overwrite."""
    if check_run_dir(out, recipe_text, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)  # the run is incomplete until the new report is written
    for stale in [*out.rglob(".*.tmp"), *out.rglob(".*.old")]:  # what a killed run was writing (nested too)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    write_text(out / "recipe.yaml", recipe_text)


def run_log(path: Path, echo: Log) -> Log:
    """Echo each message and append it, time-stamped, to the run's log (a log is appended to, not replaced)."""

    def log(message: str) -> None:
        echo(message)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    return log


@dataclass
class Start:
    """What every run of one model on one dataset starts from, loaded once (a search runs many)."""

    source: Path
    teacher: nn.Module
    io: IOSpec
    labels: tuple[str, ...]
    factory: str
    kwargs: dict[str, Any]
    branches: dict[str, list[str]]
    mb: ModuleBranches
    sha: str  # of the teacher's weights
    task: Task
    gate: Gate  # the recipe's budget on one metric of the task (limit None: none set there)
    reference_val: float  # the teacher's gated metric on val: the search's reference
    base_acc: float  # the teacher's gated metric on test: the verdict's

    @classmethod
    def load(cls, recipe: Recipe) -> Start:
        source = reference_teacher() if recipe.model == "reference-teacher" else Path(recipe.model)
        loaded = load_model(source)
        if loaded.manifest is None:
            raise UsageError(f"{source} is not a model package", "pass a model package directory as the recipe's model")
        data, task, b = recipe.data, loaded.task, recipe.budgets
        for split in {data.train, data.val, data.test, data.calibration}:  # a missing split fails now, not mid-run
            load_split(data.name, split)
        teacher, io = loaded.model, loaded.io
        score = functools.partial(split_score, torch_predict(teacher), io, data.name, task=task)
        if task.user:  # a package's metric learns its direction from its first score
            score(data.val, metric=task.user.name)
        gate = gate_for(task, b.max_drop, b.max_metric_drop)
        return cls(source, teacher, io, loaded.labels, portable_factory(loaded.manifest.factory, source),
                   dict(loaded.manifest.kwargs), dict(loaded.manifest.branches),
                   module_branches(teacher, io, loaded.manifest.branches), model_hash(teacher), task, gate,
                   score(data.val, metric=gate.metric), score(data.test, metric=gate.metric))  # fmt: skip

    def context(self, recipe: Recipe, profile: HardwareProfile, checkpoints: Path,
                progress: ProgressFn | None = None, device: str | None = "cpu") -> StageContext:  # fmt: skip
        """A stage context whose current model is a fresh copy of the teacher."""
        metric = self.task.user and portable_factory(self.task.user.spec, self.source)
        current = Current(copy.deepcopy(self.teacher), self.io, self.labels, self.factory, dict(self.kwargs),
                          dict(self.branches), self.mb, task=self.task.name, metric=metric)  # fmt: skip
        d = recipe.data
        return StageContext(d.name, d.train, d.val, d.test, d.calibration, recipe.seed, self.task, self.gate,
                            self.reference_val, profile, self.teacher, current, checkpoints,
                            progress=progress, device=device)  # fmt: skip


def run_stages(recipe: Recipe, start: Start, ctx: StageContext, stages: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """Run (or reuse) the recipe's stages in `stages/NN-kind-KEY`, yielding each one's report row and directory.
    KEY chains every stage's settings onto the teacher's weights, the data and the seed, so two runs that share a
    prefix of stages share its directories."""
    # What a run scores by (distillation stops early on it) joins the key where it is not plain accuracy, so the
    # directories of classification runs written before tasks existed are still found.
    scoring = (
        {}
        if (start.task.name, start.gate.metric) == ("classification", "accuracy")
        else {"task": start.task.name, "metric": start.gate.metric, "spec": start.task.user and start.task.user.spec}
    )
    key = content_hash({"model": start.sha, "data": recipe.data.model_dump(), "seed": recipe.seed, **scoring})
    for i, stage in enumerate(recipe.stages, 1):
        if not (is_main() or any(s.distributed for s in recipe.stages[i - 1 :])):
            return  # under torchrun the other ranks' part ends with the last data-parallel stage
        key = content_hash({"previous": key, "stage": stage.model_dump(mode="json"), **stage.key(ctx)})
        where = stages / f"{i:02d}-{stage.kind}-{key}"
        cached = broadcast((where / "stage.json").is_file())  # rank 0's view; waits for every rank
        ctx.log(f"stage {i} ({stage.kind}): {'cached, reusing ' + str(where) if cached else 'running'}")
        if cached:
            row = stage.reuse(ctx, where)
        elif is_main():
            row = stage.run(ctx, where)
        elif stage.distributed:
            cast(ModelStage, stage).transform(ctx, where)  # this rank's share; rank 0 saves the result
        if not cached:
            barrier()  # rank 0 has saved the stage
            row = row if is_main() else stage.reuse(ctx, where)
        m = start.gate.metric  # the key of its value (a stage cached before rows named their metric has none)
        row.update({"metric": m, "cached": cached, f"{m}_drop": start.gate.worsening(start.base_acc, row[m])})
        yield row, where


def compress(recipe: Recipe, out: Path, overwrite: bool = False, log: Log = lambda _: None,
             progress: ProgressFn | None = None, on_stage: Callable[[dict[str, Any], Path], None] | None = None,
             device: str | None = "cpu") -> dict[str, Any]:  # fmt: skip
    """Run `recipe` into `out` and return its report: training stages on `device`, `on_stage(row, directory)` as
    each stage ends (tracking). Under torchrun every rank calls this, rank 0 alone writes, and the other ranks
    return an empty dict after their last data-parallel stage."""
    text = dump_recipe(recipe)
    if is_main():  # a refused --out fails before the teacher is loaded and scored
        check_run_dir(out, text, overwrite)
    resolved = [resolve_profile(t) for t in recipe.targets]
    profiles = [p for p, _ in resolved]
    start = Start.load(recipe)
    data, io, gate = recipe.data, start.io, start.gate
    ctx = start.context(recipe, profiles[0], out / "checkpoints", progress, device)
    for stage in recipe.stages:  # bad data or branch names fail before the run directory exists
        stage.check(ctx)
    subset_names(recipe.budgets.max_subset_drop, io)
    if not is_main():
        for _ in run_stages(recipe, start, ctx, out / "stages"):
            pass
        return {}
    prepare_run_dir(out, text, overwrite)
    ctx.log = log = run_log(out / "compress.log", log)
    for _, note in resolved:
        if note:
            log(note)
    splits = {data.train, data.val, data.test, data.calibration}
    report: dict[str, Any] = {
        KEY: VERSION,
        "recipe": recipe.model_dump(mode="json", exclude={"search"}), "model": str(start.source),
        "task": start.task.name, "metric": gate.metric, "unit": gate.unit, "higher_is_better": gate.higher_is_better,
        "baseline": {gate.metric: start.base_acc, **model_stats(start.teacher, io, start.mb)},
        # One reference for every drop: the teacher as given; the INT8 search spends the budget on val, the
        # verdict and validation on test.
        "reference": {"model": "the teacher as given", "search": {"split": data.val, gate.metric: start.reference_val},
                      "verdict": {"split": data.test, gate.metric: start.base_acc}},
        "stages": [], "artifacts": [],
        "versions": versions("torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "torch-pruning"),
        "provenance": provenance(recipe.seed, start.sha, data_hashes(data.name, splits)),
    }  # fmt: skip
    outputs: dict[str, str] = {}
    report["provenance"]["outputs"] = outputs
    try:
        for row, where in run_stages(recipe, start, ctx, out / "stages"):
            report["stages"].append(row)
            report["artifacts"] += [row["artifact"]] if "artifact" in row else []
            outputs.update({f"stages/{where.name}/{k}": v for k, v in tree_hashes(where).items()})
            if on_stage:
                on_stage(row, where)
    except EdgeKitError as e:  # a failed run still says what it measured, and why it stopped
        report["verdict"] = {"status": "fail", "error": str(e), **(e.details or {})}
        write_json(out / REPORT, report)
        raise
    report["verdict"] = verdict(report, recipe, profiles)
    if report["artifacts"]:  # the artifact, proven against the first target the way `edgekit validate` does
        arts = [Path(a["path"]).parent for a in report["artifacts"]]
        b = recipe.budgets
        limits = {"max_accuracy_drop": b.max_drop, "max_metric_drop": b.max_metric_drop,
                  "latency_p95_ms": b.latency_p95_ms, "max_size_mb": b.size_mb,
                  "max_subset_drop": b.max_subset_drop}  # fmt: skip
        log(f"validating against {profiles[0].name}")
        report["validation"] = [validate(arts, recipe.targets[0], start.source, budgets=limits,
                                         options=Options(data.name))]  # fmt: skip
        rows = report["validation"][0]["rows"]
        check = next((c for c in rows[0].get("checks", []) if c.get("metric") == gate.metric), {})
        report["verdict"].update(
            {k: v for k, v in (("drop_ci", rows[0].get("drop_ci")), ("note", check.get("note"))) if v is not None}
        )  # the verdict's drop, with its interval on the same samples
        failed = checks_of(rows, "fail") + [f"{Path(r['artifact']).name}: {r['error']}" for r in rows if "error" in r]
        if failed:
            report["verdict"].update(status="fail", failed=failed)
        elif unverified := checks_of(rows, "unverified", "open"):  # decided nowhere here: never a silent pass
            report["verdict"].update(status="unverified", unverified=unverified)
    write_json(out / REPORT, report)
    return report


def checks_of(rows: list[dict[str, Any]], *statuses: str) -> list[str]:
    """The validation checks with these statuses, one line each."""
    return [f"{Path(r['artifact']).name}: {c['budget']} {'-' if c['value'] is None else c['value']} vs {c['limit']}"
            for r in rows for c in r.get("checks", []) if c["status"] in statuses]  # fmt: skip


def verdict(report: dict[str, Any], recipe: Recipe, profiles: list) -> dict[str, Any]:
    """Pass when the final model's gated metric on test is within budget of the teacher's: the recipe's
    `max_metric_drop` or `max_drop`, else the profile's accuracy budget (points of accuracy or mAP). A metric in
    its own unit (MAE) with no budget on it is unverified, never a silent pass."""
    final = report["stages"][-1] if report["stages"] else None
    b, metric = recipe.budgets, report["metric"]
    limit = (b.max_metric_drop or {}).get(metric, b.max_drop)
    if limit is None and report["unit"] == "points":
        limit = profiles[0].budgets.max_accuracy_drop
    if final is None or limit is None:
        if final is None or report["unit"] == "points":
            return {"status": "pass", "gated": [], "note": "nothing was gated"}
        return {"status": "unverified", "gated": [], "note": f"no budget on {metric}: set budgets.max_metric_drop"}
    drop = final[f"{metric}_drop"]
    if final.get("artifact"):
        final["artifact"][f"{metric}_drop"] = drop
    gated = "max_metric_drop" if b.max_metric_drop else "max_drop"
    return {"status": "pass" if drop <= limit else "fail", "gated": [gated], "metric": metric,
            f"{metric}_drop": drop, "max_drop": limit, "unit": report["unit"]}  # fmt: skip
