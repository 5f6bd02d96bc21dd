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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from torch import nn

from .artifact import model_hash, versions
from .branches import ModuleBranches, module_branches
from .data import DataLike, Splits
from .data.adapter import subset_names
from .devices import barrier, broadcast, is_main
from .errors import EdgeKitError, UsageError
from .evaluation import torch_predict
from .fsutil import check_writable, content_hash, write_text
from .hardware import HardwareProfile, resolve_profile
from .io import IOSpec
from .loading import LoadedModel, load_model, portable_factory
from .provenance import provenance, tree_hashes
from .recipe import Recipe, dump_recipe, load_recipe
from .records import CompressReport, StageRow, Validation, Verdict, write_record
from .stages.steps import Current, Log, ModelStage, StageContext, model_stats, split_score
from .tasks import Gate, Task, gate_for
from .training import ProgressFn
from .validate import Options, validate
from .zoo import reference_teacher

REPORT = "report.json"
IN_MEMORY = "in-memory"  # how records name a model or data given as Python objects


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


@dataclass(frozen=True)
class Plan:
    """A recipe resolved once, before any work: its data as `Splits`, its target profiles, its typed stages and
    budgets, and the model given in memory, if any. The layers below take the plan and never resolve a spec."""

    recipe: Recipe
    data: Splits
    profiles: tuple[HardwareProfile, ...]
    notes: tuple[str, ...]  # how an alias or this host's class resolved to a profile
    model: LoadedModel | None = None  # in memory (it needs its manifest's factory); else the recipe's package

    @classmethod
    def of(cls, recipe: Recipe, data: DataLike | None = None, model: LoadedModel | None = None) -> Plan:
        splits = Splits.of(recipe.data.name if data is None else data)
        update: dict[str, Any] = {"data": recipe.data.model_copy(update={"name": splits.name})}
        if model is not None:
            update["model"] = IN_MEMORY
        resolved = [resolve_profile(t) for t in recipe.targets]
        return cls(recipe.model_copy(update=update), splits, tuple(p for p, _ in resolved),
                   tuple(n for _, n in resolved if n), model)  # fmt: skip

    def splits(self) -> set[str]:
        d = self.recipe.data
        return {d.train, d.val, d.test, d.calibration}

    def trial(self, recipe: Recipe) -> Plan:
        """The same data, profiles and model under another recipe (a search trial's)."""
        return replace(self, recipe=recipe)


@dataclass
class Start:
    """What every run of one model on one dataset starts from, loaded once (a search runs many)."""

    source: Path | LoadedModel  # the teacher's package, or the model given in memory
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
    def load(cls, plan: Plan) -> Start:
        recipe = plan.recipe
        if plan.model is not None:
            source: Path | LoadedModel = plan.model
            loaded, base_dir = plan.model, Path.cwd()
        else:
            source = base_dir = reference_teacher() if recipe.model == "reference-teacher" else Path(recipe.model)
            loaded = load_model(source)
        if loaded.manifest is None:
            raise UsageError(f"{recipe.model} is not a model package", "pass a model package directory as the "
                             "recipe's model, or give an in-memory model its factory (edgekit.api.model)")  # fmt: skip
        data, task, b = recipe.data, loaded.task, recipe.budgets
        for split in plan.splits():  # a missing split fails now, not mid-run
            plan.data(split)
        subset_names(b.max_subset_drop, loaded.io)
        teacher, io = loaded.model, loaded.io
        score = functools.partial(split_score, torch_predict(teacher), io, plan.data, task=task)
        if task.user:  # a package's metric learns its direction from its first score
            score(data.val, metric=task.user.name)
        gate = gate_for(task, b.max_drop, b.max_metric_drop)
        return cls(source, teacher, io, loaded.labels, portable_factory(loaded.manifest.factory, base_dir),
                   dict(loaded.manifest.kwargs), dict(loaded.manifest.branches),
                   module_branches(teacher, io, loaded.manifest.branches), model_hash(teacher), task, gate,
                   score(data.val, metric=gate.metric), score(data.test, metric=gate.metric))  # fmt: skip

    @property
    def name(self) -> str:
        """The teacher as records name it: its package, or `in-memory`."""
        return IN_MEMORY if isinstance(self.source, LoadedModel) else str(self.source)

    def context(self, plan: Plan, checkpoints: Path, progress: ProgressFn | None = None,
                device: str | None = "cpu") -> StageContext:  # fmt: skip
        """A stage context whose current model is a fresh copy of the teacher."""
        base_dir = self.source if isinstance(self.source, Path) else Path.cwd()
        metric = self.task.user and portable_factory(self.task.user.spec, base_dir)
        current = Current(copy.deepcopy(self.teacher), self.io, self.labels, self.factory, dict(self.kwargs),
                          dict(self.branches), self.mb, task=self.task.name, metric=metric)  # fmt: skip
        d = plan.recipe.data
        return StageContext(plan.data, d.train, d.val, d.test, d.calibration, plan.recipe.seed, self.task,
                            self.gate, self.reference_val, plan.profiles[0], self.teacher, current, checkpoints,
                            progress=progress, device=device)  # fmt: skip


def run_stages(plan: Plan, start: Start, ctx: StageContext, stages: Path) -> Iterator[tuple[StageRow, Path]]:
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
    recipe = plan.recipe
    data = recipe.data.model_dump() | ({"sha256": plan.data.hashes(plan.splits())} if plan.data.in_memory else {})
    key = content_hash({"model": start.sha, "data": data, "seed": recipe.seed, **scoring})
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
        yield StageRow.model_validate(row), where


def compress(plan: Plan, out: Path, overwrite: bool = False, log: Log = lambda _: None,
             progress: ProgressFn | None = None, on_stage: Callable[[StageRow, Path], None] | None = None,
             device: str | None = "cpu") -> CompressReport | None:  # fmt: skip
    """Run the plan's recipe into `out` and return its report: training stages on `device`, `on_stage(row,
    directory)` as each stage ends (tracking). Under torchrun every rank calls this, rank 0 alone writes, and the
    other ranks return None after their last data-parallel stage."""
    recipe = plan.recipe
    text = dump_recipe(recipe)
    if is_main():  # a refused --out fails before the teacher is loaded and scored
        check_run_dir(out, text, overwrite)
    start = Start.load(plan)
    data, io, gate = recipe.data, start.io, start.gate
    ctx = start.context(plan, out / "checkpoints", progress, device)
    for stage in recipe.stages:  # bad data or branch names fail before the run directory exists
        stage.check(ctx)
    if not is_main():
        for _ in run_stages(plan, start, ctx, out / "stages"):
            pass
        return None
    prepare_run_dir(out, text, overwrite)
    ctx.log = log = run_log(out / "compress.log", log)
    for note in plan.notes:
        log(note)
    report = CompressReport(
        recipe=recipe.model_dump(mode="json", exclude={"search"}), model=start.name,
        task=start.task.name, metric=gate.metric, unit=gate.unit, higher_is_better=gate.higher_is_better,
        baseline={gate.metric: start.base_acc, **model_stats(start.teacher, io, start.mb)},
        # One reference for every drop: the teacher as given; the INT8 search spends the budget on val, the
        # verdict and validation on test.
        reference={"model": "the teacher as given", "search": {"split": data.val, gate.metric: start.reference_val},
                   "verdict": {"split": data.test, gate.metric: start.base_acc}},
        stages=[], artifacts=[],
        versions=versions("torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "torch-pruning"),
        provenance=provenance(recipe.seed, start.sha, plan.data.hashes(plan.splits())),
    )  # fmt: skip
    outputs: dict[str, str] = {}
    report.provenance["outputs"] = outputs
    try:
        for row, where in run_stages(plan, start, ctx, out / "stages"):
            report.stages.append(row)
            report.artifacts += [row.artifact] if row.artifact else []
            outputs.update({f"stages/{where.name}/{k}": v for k, v in tree_hashes(where).items()})
            if on_stage:
                on_stage(row, where)
    except EdgeKitError as e:  # a failed run still says what it measured, and why it stopped
        report.verdict = Verdict(status="fail", error=str(e), **(e.details or {}))
        write_record(out / REPORT, report)
        raise
    report.verdict = verdict(report, plan)
    if report.artifacts:  # the artifact, proven against the first target the way `edgekit validate` does
        arts = [Path(a.path).parent for a in report.artifacts]
        b = recipe.budgets
        limits = {"max_accuracy_drop": b.max_drop, "max_metric_drop": b.max_metric_drop,
                  "latency_p95_ms": b.latency_p95_ms, "max_size_mb": b.size_mb,
                  "max_subset_drop": subset_limit(plan, gate)}  # fmt: skip
        log(f"validating against {plan.profiles[0].name}")
        report.validation = [validate(arts, recipe.targets[0], start.source, budgets=limits,
                                      options=Options(plan.data))]  # fmt: skip
        v, rows = report.verdict, report.validation[0].rows
        check = next((c for c in rows[0].checks if c.metric == gate.metric), None)
        if rows[0].score("drop_ci") is not None:  # the verdict's drop, with its interval on the same samples
            v.drop_ci = rows[0].score("drop_ci")
        if check is not None and check.note is not None:
            v.note = check.note
        failed = checks_of(report.validation[0], "fail")
        failed += [f"{Path(r.artifact).name}: {r.error}" for r in rows if r.error]
        if failed:
            v.status, v.failed = "fail", failed
        elif unverified := checks_of(report.validation[0], "unverified", "open"):  # decided nowhere here: never a
            v.status, v.unverified = "unverified", unverified  # silent pass
    write_record(out / REPORT, report)
    return report


DEFAULT_SUBSET_DROP = 10.0  # points: far above what INT8 and a recovered student lose on a subset (docs/compression.md)


def subset_limit(plan: Plan, gate: Gate) -> float | dict[str, float] | None:
    """The budget on every modality subset: the recipe's, else the first target's, else DEFAULT_SUBSET_DROP for a
    metric in points. A student that stopped using a modality fails by default, as it should."""
    own = plan.recipe.budgets.max_subset_drop
    if own is None:
        own = plan.profiles[0].budgets.max_subset_drop
    return own if own is not None or gate.unit != "points" else DEFAULT_SUBSET_DROP


def checks_of(validation: Validation, *statuses: str) -> list[str]:
    """The validation checks with these statuses, one line each."""
    return [f"{Path(r.artifact).name}: {c.budget} {'-' if c.value is None else c.value} vs {c.limit}"
            for r in validation.rows for c in r.checks if c.status in statuses]  # fmt: skip


def verdict(report: CompressReport, plan: Plan) -> Verdict:
    """Pass when the final model's gated metric on test is within budget of the teacher's: the recipe's
    `max_metric_drop` or `max_drop`, else the profile's accuracy budget (points of accuracy or mAP). A metric in
    its own unit (MAE) with no budget on it is unverified, never a silent pass."""
    final = report.stages[-1] if report.stages else None
    b, metric = plan.recipe.budgets, report.metric
    limit = (b.max_metric_drop or {}).get(metric, b.max_drop)
    if limit is None and report.unit == "points":
        limit = plan.profiles[0].budgets.max_accuracy_drop
    if final is None or limit is None:
        if final is None or report.unit == "points":
            return Verdict(status="pass", gated=[], note="nothing was gated")
        return Verdict(status="unverified", gated=[], note=f"no budget on {metric}: set budgets.max_metric_drop")
    drop = final.score(f"{metric}_drop")
    if final.artifact:
        setattr(final.artifact, f"{metric}_drop", drop)
    gated = "max_metric_drop" if b.max_metric_drop else "max_drop"
    return Verdict.model_validate({"status": "pass" if drop <= limit else "fail", "gated": [gated], "metric": metric,
                                   f"{metric}_drop": drop, "max_drop": limit, "unit": report.unit})  # fmt: skip
