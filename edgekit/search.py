"""`edgekit search`: the best deployable configurations for a hardware profile under its budgets.

A trial is a recipe: per-branch prune ratios, a head ratio, distillation epochs and an INT8 format, chosen by
Optuna's multi-objective TPE sampler (how much worse the task's gated metric gets on `val`: accuracy, mAP, MAE or
a package's own; p95 latency at batch 1; size), with the budgets as constraints. Its stages run in one shared stage
cache (`compress.run_stages`: a pruned model per ratio vector, a student per architecture and schedule, an INT8
artifact per exclusion set), and latencies are cached per artifact hash and device, so no two trials repeat work.
The study lives in SQLite in the run directory (a killed search resumes), or in any storage Optuna reaches
(`--storage`), which lets several workers share it.

Optuna's pruners are single-objective (`Trial.report` raises in a multi-objective study), so the early stop is
a budget rule: a trial whose `val` drop after `probe_epochs` is further over the budget than any finished trial
recovered after that epoch stops there; so does one whose distilled float model is already over it."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .artifact import load_artifact
from .compress import Plan, Start, run_log, run_stages
from .errors import EdgeKitError, UsageError
from .formats import FORMATS
from .fsutil import check_writable, content_hash, write_json, write_text
from .hardware import HardwareProfile
from .hardware.estimator import estimate
from .profiling.local import Settings, profile
from .profiling.remote import Remote, profile_remote
from .profiling.source import latency_source
from .recipe import Recipe, SearchSpace, dump_recipe
from .records import SearchRecord, write_record
from .stages.heads import has_heads
from .stages.prune import parts_of
from .tasks import Gate, Task, gate_for
from .training import ProgressFn

Log = Callable[[str], None]
OnTrial = Callable[[int, int | None, dict[str, Any] | None], None]  # (finished, target, best feasible so far)
SEARCH = "search.json"
OBJECTIVES = ("val_drop", "latency_p95_ms", "size_mb")


def optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise UsageError("edgekit search needs Optuna", "pip install 'edgekit[search]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Limits:
    """The budgets a trial must meet (constraints, not objectives): the flags', else the recipe's, else the
    profile's. The drop is the gate's: points of accuracy (mAP, recall@1), or `max_metric_drop` in its metric's
    unit."""

    gate: Gate
    latency_p95_ms: float | None
    size_mb: float | None

    @classmethod
    def of(cls, recipe: Recipe, profile: HardwareProfile, task: Task) -> Limits:
        b, p = recipe.budgets, profile.budgets
        points = next(d for d in (p.max_accuracy_drop, 1.0) if d is not None)
        # the recipe's metric, as compress gates it (and as Start scored the teacher by); the profile's points
        gate = gate_for(task, b.max_drop, b.max_metric_drop, default_points=points)
        if gate.limit is None:
            raise UsageError(f"search constrains how much worse {gate.metric} gets, and task {task.name} has no "
                             "budget on it", f"set budgets.max_metric_drop: {{{gate.metric}: LIMIT}}, or "
                             f"--max-metric-drop {gate.metric}=LIMIT")  # fmt: skip
        return cls(gate, b.latency_p95_ms or p.latency_p95_ms, b.size_mb or p.max_size_mb)

    @property
    def max_drop(self) -> float:
        assert self.gate.limit is not None
        return self.gate.limit

    def as_dict(self) -> dict[str, Any]:
        """As search.json records them: `max_drop` in `unit` of `metric`."""
        g = self.gate
        return {"max_drop": g.limit, "metric": g.metric, "unit": g.unit, "latency_p95_ms": self.latency_p95_ms,
                "size_mb": self.size_mb}  # fmt: skip

    def violated(self, values: dict[str, float]) -> dict[str, float]:
        """Each budget's excess (<= 0: met), as Optuna's constraints."""
        limits = {"val_drop": self.max_drop, "latency_p95_ms": self.latency_p95_ms, "size_mb": self.size_mb}
        return {k: values[k] - v for k, v in limits.items() if v is not None}


@dataclass(frozen=True)
class Options:
    trials: int | None = None  # finished trials the study should hold (with `time_budget_s`: whichever comes first)
    time_budget_s: float | None = None  # of this invocation
    storage: str | None = None  # an Optuna storage URL, or grpc://host:port; default: SQLite in the run directory
    remote: Remote | None = None  # the profile's device over ssh, for latency
    seed_points: tuple[dict[str, Any], ...] = ()  # configurations to try first (e.g. the hand-written recipe's)
    device: str | None = "cpu"  # where distillation runs


def space(recipe: Recipe, start: Start, profile: HardwareProfile) -> dict[str, list[Any]]:
    """Every parameter a trial chooses, and its choices: the recipe's `search:` narrowed to what the model has."""
    s = recipe.search or SearchSpace()
    parts = parts_of(start.mb)
    if s.branches is not None:
        unknown = sorted(set(s.branches) - set(parts))
        if unknown:
            raise UsageError(f"search.branches names '{unknown[0]}', which this model does not have",
                             f"choose among {', '.join(parts)}")  # fmt: skip
        parts = list(s.branches)
    formats = list(s.formats or dict.fromkeys(e.format for e in profile.exports if e.precision == "int8"))
    if not formats:
        raise UsageError(f"profile {profile.name} deploys no INT8 format", "name INT8 formats in search.formats")
    choices: dict[str, list[Any]] = {f"prune.{p}": list(s.prune_ratios) for p in parts}
    if has_heads(start.teacher):
        choices["heads"] = list(s.head_ratios)
    choices["distill_epochs"] = list(s.distill_epochs)
    choices["format"] = formats
    return choices


def suggest(trial: Any, choices: dict[str, list[Any]]) -> dict[str, Any]:
    """The trial's configuration; a trial that prunes nothing is not distilled, so it chooses no epochs."""
    params = {k: trial.suggest_categorical(k, v) for k, v in choices.items() if k != "distill_epochs"}
    if any(v > 0 for k, v in params.items() if k.startswith("prune.") or k == "heads"):
        params["distill_epochs"] = trial.suggest_categorical("distill_epochs", choices["distill_epochs"])
    return params


def trial_recipe(base: Recipe, params: dict[str, Any], prefer_faster: bool = True) -> Recipe:
    """The recipe that `edgekit compress` reproduces this configuration with. Its distillation takes the settings
    of the base recipe's distill stage, if it has one (learning rate, temperature, amp, ...). A front point whose
    INT8 model shipped is written with `prefer_faster` off, so that compress rebuilds that same file without
    timing it against FP32 again."""
    ratios = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("prune.") and v > 0}
    stages: list[dict[str, Any]] = []
    if ratios or params.get("heads", 0) > 0:
        settings = next((s.model_dump() for s in base.stages if s.kind == "distill"), {"kind": "distill"})
        stages.append({"kind": "prune", "branch_ratios": ratios, "head_ratio": params.get("heads", 0.0)})
        stages.append({**settings, "student": "pruned", "epochs": params["distill_epochs"]})
    stages.append({"kind": "quantize", "backend": params["format"], "accuracy_aware": True,
                   **({} if prefer_faster else {"prefer_faster": False})})  # fmt: skip
    fields = base.model_dump(exclude={"search", "out", "stages"})
    return Recipe.model_validate({**fields, "stages": stages})


class Latency:
    """p50/p95 at batch 1 of an artifact in its own runtime: on the profile's device (this host when it is the
    device, else over ssh), else here as a labelled proxy when its runtime runs here, else the estimate. Cached
    per artifact hash and device in `latency.json`."""

    def __init__(self, profile: HardwareProfile, formats: list[str], remote: Remote | None, cache: Path) -> None:
        self.profile, self.remote, self.cache = profile, remote, cache
        # One policy with validate's (profiling/source.py); a proxy only where every format's runtime runs here.
        self.where = latency_source(profile, all(FORMATS[f].runs_here for f in formats), remote)
        self.source, self.device, self.threads = self.where.source, self.where.device, self.where.threads
        self.why = self.where.not_the_device

    def __call__(self, art_dir: Path, sha: str) -> dict[str, Any]:
        cached = json.loads(self.cache.read_text()) if self.cache.is_file() else {}
        key = content_hash({"sha256": sha, "device": self.device, "threads": self.threads})
        if key in cached:
            return cached[key]
        if self.source == "estimated":
            est = estimate(load_artifact(art_dir, verify=False).meta["costs"], self.profile, "int8")
            # The objective is the pessimistic end of the calibrated interval; an estimate has no percentiles.
            hi = est["interval_ms"][1] if est["interval_ms"] else est["estimate_ms"]
            result = {"source": "estimated", "p50_ms": None, "p95_ms": hi, "estimate_ms": est["estimate_ms"],
                      "interval_ms": est["interval_ms"]}  # fmt: skip
        else:
            settings = Settings(batches=(1,), duration=self.where.duration, threads=self.threads, ops=False)
            run = profile_remote(art_dir, self.remote, settings) if self.remote else profile(art_dir, settings)
            stats = run["results"][0]["latency_ms"]
            result = {"source": self.source, "p50_ms": stats["p50"], "p95_ms": stats["p95"]}
        cached = json.loads(self.cache.read_text()) if self.cache.is_file() else {}
        write_json(self.cache, {**cached, key: result})  # re-read: another trial of this directory may have written
        return result


class Stop(Exception):
    """Ends a trial early with a reason (Optuna's PRUNED)."""


def storage_for(url: str | None, out: Path) -> Any:
    o = optuna()
    if url is None:
        return o.storages.RDBStorage(f"sqlite:///{(out / 'search.db').resolve()}")
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--storage {url} is not grpc://HOST:PORT", "e.g. grpc://127.0.0.1:13000")
        return o.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        return o.storages.RDBStorage(url)
    except Exception as e:  # SQLAlchemy's errors name the URL's problem
        raise UsageError(
            f"--storage {url} cannot be opened: {str(e).splitlines()[0]}",
            "pass an SQLAlchemy URL (sqlite:///..., postgresql://...) or grpc://HOST:PORT",
        ) from e


def requeue_interrupted(study: Any, storage: Any) -> int:
    """Trials a killed search left RUNNING in its own SQLite file: failed, and the configurations they had chosen
    queued again (their stages resume from the cache and distillation from its epoch checkpoint). Returns how
    many were queued: a trial killed before it chose one did no work."""
    o = optuna()
    stale = study.get_trials(deepcopy=False, states=(o.trial.TrialState.RUNNING,))
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
        storage.set_trial_state_values(t._trial_id, o.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"resumes": t.number})
    return sum(1 for t in stale if t.params)


TWIN_WAIT_S = 1800.0  # the longest a worker waits for another worker's trial of the same configuration


def awaited(study: Any, number: int, poll_s: float = 2.0) -> Any:
    """Trial `number` once it is no longer running, or as it is after TWIN_WAIT_S."""
    o, deadline = optuna(), time.monotonic() + TWIN_WAIT_S
    while True:
        t = next(x for x in study.get_trials(deepcopy=False) if x.number == number)
        if t.state != o.trial.TrialState.RUNNING or time.monotonic() > deadline:
            return t
        time.sleep(poll_s)


def finished(study: Any) -> list[Any]:
    o = optuna()
    done = (o.trial.TrialState.COMPLETE, o.trial.TrialState.PRUNED, o.trial.TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if t.user_attrs.get("status") != "interrupted"]


class Objective:
    """One trial: its recipe's stages in the shared cache, then its artifact's latency."""

    def __init__(self, plan: Plan, start: Start, limits: Limits, choices: dict[str, list[Any]], latency: Latency,
                 out: Path, log: Log, device: str | None = "cpu") -> None:  # fmt: skip
        self.plan, self.recipe, self.start, self.limits = plan, plan.recipe, start, limits
        self.choices, self.latency, self.out, self.log, self.device = choices, latency, out, log, device
        self.probe = (self.recipe.search or SearchSpace()).probe_epochs

    def __call__(self, trial: Any) -> tuple[float, float, float]:
        o = optuna()
        params = suggest(trial, self.choices)
        try:
            return self.copy_of_twin(trial, params) or self.run(trial, params)
        except Stop as e:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", str(e))
            self.log(f"trial {trial.number}: pruned: {e}")
            raise o.TrialPruned(str(e)) from e
        except EdgeKitError as e:  # a failed trial is a row with its one-line error, never a lost study
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", str(e))
            self.log(f"trial {trial.number}: failed: {e}")
            raise

    def copy_of_twin(self, trial: Any, params: dict[str, Any]) -> tuple[float, float, float] | None:
        """A configuration another trial already has: its result, once it has one (a worker waits for another's
        run of the same configuration rather than end its share of trials without a result), or a stop when it is
        still running after TWIN_WAIT_S."""
        o = optuna()
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.params != params:
                continue
            t = other
            if t.state == o.trial.TrialState.RUNNING:
                self.log(f"trial {trial.number}: waiting for trial {t.number} (another worker): the same configuration")
                t = awaited(trial.study, t.number)
            if t.state == o.trial.TrialState.COMPLETE:
                for k, v in t.user_attrs.items():
                    trial.set_user_attr(k, v)
                trial.set_user_attr("same_as", t.number)
                for k, v in t.constraints.items():
                    trial.set_constraint(k, v)
                return tuple(t.values)  # type: ignore[return-value]
            if t.state == o.trial.TrialState.RUNNING:
                raise Stop(f"trial {t.number} (another worker) is running the same configuration")
        return None

    def run(self, trial: Any, params: dict[str, Any]) -> tuple[float, float, float]:
        begin = time.perf_counter()
        plan = self.plan.trial(trial_recipe(self.recipe, params))
        recipe = plan.recipe
        ctx = self.start.context(plan, self.out / "checkpoints", self.watch(trial), self.device)
        ctx.log = self.log
        for stage in recipe.stages:
            stage.check(ctx)
        ref, row, g = self.start.reference_val, None, self.limits.gate
        for row, _ in run_stages(plan, self.start, ctx, self.out / "stages"):
            if row.name == "distill":
                drop = g.worsening(ref, row.score(f"best_val_{g.metric}"))
                trial.set_user_attr("float_val_drop", drop)
                if drop > self.limits.max_drop:
                    raise Stop(f"the distilled float model is {drop:.4g} {g.unit} worse than the teacher on val, "
                               f"over the {self.limits.max_drop} budget before INT8")  # fmt: skip
        assert row is not None and row.artifact is not None and row.search is not None  # a trial ends in INT8
        art, found = row.artifact, row.search
        lat = self.latency(Path(art.path).parent, art.sha256)
        values = {"val_drop": found["drop"], "latency_p95_ms": lat["p95_ms"], "size_mb": art.size_mb}
        excess = self.limits.violated(values)
        for k, v in excess.items():
            trial.set_constraint(k, v)
        over = [k for k, v in excess.items() if v > 0]
        attrs = {
            "status": "infeasible" if over else "feasible", "violated": over,
            f"val_{g.metric}": found[g.metric], f"test_{g.metric}": row.score(g.metric),
            "test_drop": row.score(f"{g.metric}_drop"),
            "latency": lat, "macs": row.macs, "n_params": row.params, "artifact": art.dump(),
            "seconds": round(time.perf_counter() - begin, 1),
        }  # fmt: skip
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.log(f"trial {trial.number}: {attrs['status']}: val drop {values['val_drop']:+.2f}, p95 "
                 f"{values['latency_p95_ms']:.3f} ms ({lat['source']}), {values['size_mb']:.2f} MB")  # fmt: skip
        return values["val_drop"], values["latency_p95_ms"], values["size_mb"]

    def watch(self, trial: Any) -> ProgressFn:
        """Distillation's per-epoch callback: the probe-epoch stop."""
        ref, budget, g = self.start.reference_val, self.limits.max_drop, self.limits.gate

        def progress(epoch: int, epochs: int, loss: float, val: float, metric: str) -> None:
            if epoch != min(self.probe, epochs):
                return
            drop = g.worsening(ref, val)
            trial.set_user_attr("probe_val_drop", drop)
            both = [t.user_attrs for t in finished(trial.study)]
            recovered = [a["probe_val_drop"] - a["float_val_drop"] for a in both if "float_val_drop" in a and
                         "probe_val_drop" in a]  # fmt: skip
            if len(recovered) >= 2 and drop - max(recovered) > budget:
                raise Stop(f"{drop:.4g} {g.unit} worse than the teacher on val after {epoch} epochs; the most "
                           f"any trial recovered after that is {max(recovered):.4g}, short of the {budget} "
                           "budget")  # fmt: skip

        return progress


def study_name(plan: Plan, start: Start, choices: dict[str, list[Any]], limits: Limits) -> str:
    """Workers share a study only when they search the same thing."""
    recipe = plan.recipe
    data = recipe.data.model_dump() | ({"sha256": plan.data.hashes(plan.splits())} if plan.data.in_memory else {})
    model = {"model": start.sha} if plan.model is not None else {"model": recipe.model}  # a path, as always keyed
    what = {**model, "data": data, "seed": recipe.seed, "profile": plan.profiles[0].name, "space": choices,
            "limits": limits.as_dict()}  # fmt: skip
    return f"edgekit-{content_hash(what)[:12]}"


def trial_row(t: Any) -> dict[str, Any]:
    """A trial as search.json lists it."""
    a = dict(t.user_attrs)
    status = a.pop("status", "failed" if t.state.name == "FAIL" else t.state.name.lower())
    row = {"number": t.number, "status": status, "params": t.params, **a}
    if t.values is not None:
        row["values"] = dict(zip(OBJECTIVES, t.values, strict=True))
    return row


def search(plan: Plan, out: Path, options: Options = Options(), log: Log = lambda _: None,
           on_trial: OnTrial | None = None, start: Start | None = None) -> SearchRecord:  # fmt: skip
    """Run (or resume) the study, then write search.json and a recipe for every point of the Pareto front. `start`:
    the plan's teacher, loaded and scored already (`Start.load(plan)`), so that a caller that needed it for
    the space does not load, evaluate and export it a second time."""
    o = optuna()
    recipe, profile = plan.recipe, plan.profiles[0]
    start = start or Start.load(plan)
    choices, limits = space(recipe, start, profile), Limits.of(recipe, profile, start.task)
    start = replace(start, gate=limits.gate)  # each trial's INT8 search keeps within what the search constrains
    trials = options.trials if options.trials is not None or options.time_budget_s else 20
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    log = run_log(out / "search.log", log)
    for note in plan.notes:
        log(note)
    latency = Latency(profile, choices["format"], options.remote, out / "latency.json")
    if latency.source != "measured":
        log(f"latency is {latency.source} ({latency.why}): the front is labelled so")
    name = study_name(plan, start, choices, limits)
    storage = storage_for(options.storage, out)
    sampler_seed = recipe.seed
    study = o.create_study(storage=storage, study_name=name, load_if_exists=True, directions=["minimize"] * 3)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and still the way to name the objectives
        warnings.simplefilter("ignore", o.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    if options.storage is None and (n := requeue_interrupted(study, storage)):
        log(f"resuming: {n} trial(s) a stopped search left running are queued again")
    if not study.trials:  # the teacher quantized as it is, and the user's own configuration, are tried first
        zero = {k: 0.0 for k in choices if k.startswith("prune.") or k == "heads"}
        teacher = all(0.0 in choices[k] for k in zero)
        origins = [("teacher, INT8 only", {**zero, "format": choices["format"][0]})] if teacher else []
        for origin, point in [*origins, *(("the recipe's own", p) for p in options.seed_points)]:
            study.enqueue_trial(point, user_attrs={"origin": origin}, skip_if_exists=True)
    sampler_seed += len(study.trials)  # a resumed search or a second worker does not replay the same draws
    # constant_liar: a worker sharing the study counts the others' running trials as bad, so none repeats their point
    study.sampler = o.samplers.TPESampler(seed=sampler_seed, multivariate=True, n_startup_trials=8, constant_liar=True)
    objective = Objective(plan, start, limits, choices, latency, out, log, options.device)
    done = len(finished(study))
    begin = time.perf_counter()

    def after(study: Any, _: Any) -> None:
        n = len(finished(study))
        if on_trial:
            on_trial(n, trials, best(study))
        if trials is not None and n >= trials:
            study.stop()

    if trials is None or done < trials:
        study.optimize(objective, timeout=options.time_budget_s, callbacks=[after], catch=(EdgeKitError,))
    result = summary(study, recipe, profile, choices, limits, latency, out)
    result.seconds = round(time.perf_counter() - begin, 1)
    result.study = {"name": name, "storage": "search.db" if options.storage is None else "given",
                    "sampler": f"TPESampler(multivariate, constant_liar, seed={sampler_seed})"}  # fmt: skip
    write_record(out / SEARCH, result)
    return result


def best(study: Any) -> dict[str, Any] | None:
    """The fastest feasible point so far, for the progress line."""
    front = [trial_row(t) for t in study.best_trials]
    return min(front, key=lambda r: r["values"]["latency_p95_ms"], default=None)


def summary(study: Any, recipe: Recipe, profile: HardwareProfile, choices: dict[str, list[Any]], limits: Limits,
            latency: Latency, out: Path) -> SearchRecord:  # fmt: skip
    """Every trial, and the Pareto front of the feasible ones, each point with the recipe that reproduces it."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    front, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: t.values[1]):
        key = content_hash(t.params)
        if key in seen:  # a twin of a point already on the front
            continue
        seen.add(key)
        path = out / "front" / f"trial-{t.number:03d}.yaml"
        shipped = (t.user_attrs.get("artifact") or {}).get("precision")
        write_text(path, dump_recipe(trial_recipe(recipe, t.params, prefer_faster=shipped != "int8")))
        front.append({**trial_row(t), "recipe": str(path.relative_to(out))})
    fastest = front[0]["number"] if front else None
    return SearchRecord.model_validate({
        "model": recipe.model, "data": recipe.data.name, "profile": profile.name,
        "latency_source": latency.source, **({"latency_note": latency.why} if latency.source != "measured" else {}),
        "objectives": list(OBJECTIVES), "metric": limits.gate.metric, "unit": limits.gate.unit,
        "space": choices, "budgets": limits.as_dict(),
        "trials": rows, "front": front, "chosen": fastest,
    })  # fmt: skip


def recipe_point(recipe: Recipe, choices: dict[str, list[Any]], profile: HardwareProfile) -> dict[str, Any] | None:
    """The configuration a hand-written recipe (prune by branch, distill, quantize) stands for in this space, so
    that the search measures it beside its own trials; None when it is not one."""
    kinds = [s.kind for s in recipe.stages]
    if kinds not in (["quantize"], ["prune", "distill", "quantize"]):
        return None
    *model_stages, quantize = recipe.stages
    fmt = profile.exports[0].format if quantize.backend == "auto" else quantize.backend
    point: dict[str, Any] = {k: 0.0 for k in choices if k.startswith("prune.") or k == "heads"}
    point["format"] = fmt
    if model_stages:
        prune, distill = model_stages
        if prune.pruning_ratio is not None or distill.student != "pruned":
            return None
        point.update({f"prune.{k}": v for k, v in prune.branch_ratios.items()})
        point.update({"heads": prune.head_ratio} if "heads" in choices else {}, distill_epochs=distill.epochs)
    fits = all(k in choices and v in choices[k] for k, v in point.items())
    return point if fits else None
