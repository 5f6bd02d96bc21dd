"""The recipe's stages: one class per kind (its settings and how it runs), registered by `kind`. The recipe's
discriminated union and the compress loop both come from `STAGES`, so adding a stage is one class here.

A stage writes its output directory atomically, with stage.json last (its row in report.json); a rerun of the same
recipe finds that directory and `reuse`s it instead of running again."""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from torch import nn

from ..agent import usable_cpus
from ..artifact import Artifact, model_hash, sha256_file
from ..branches import ModuleBranches
from ..data import Splits
from ..data.calibration import DEFAULT_SAMPLES, calibration_set
from ..devices import is_main, placement
from ..errors import UsageError
from ..evaluation import evaluate, torch_predict
from ..formats import ExportContext, Format, Int8Format, Search, get_format, load_runner
from ..fsutil import atomic_dir, write_json
from ..hardware import HardwareProfile
from ..hardware.estimator import graph_costs
from ..hardware.identity import host_facts
from ..io import IOSpec
from ..loading import load_model, save_model_package
from ..models import build_fusion_model, count_params
from ..pipeline import Built, Scoring, Speed, build_artifact, int8_speed
from ..quant.accuracy_aware import BudgetError
from ..runtimes import predict_fn
from ..targets.onnx import export_onnx
from ..tasks import Gate, Task
from ..training import ProgressFn
from .distill import DistillConfig, distill
from .prune import FACTORY as PRUNED_FACTORY
from .prune import PruneConfig, check_config, measure, parts_of, prune, save_pruned

Log = Callable[[str], None]


@dataclass
class Current:
    """The model as the stages hand it on, and how to save it again."""

    model: nn.Module
    io: IOSpec
    labels: tuple[str, ...]
    factory: str
    kwargs: dict[str, Any]
    branches: dict[str, list[str]]  # the package's override of the branches found in the graph, if any
    mb: ModuleBranches  # the teacher's module branches (stages keep module names)
    pruned: bool = False
    task: str = "classification"  # the teacher's, which every package of the run keeps
    metric: str | None = None  # the teacher package's own metric, a spec that resolves from anywhere

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        scoring = {"task": self.task, "metric": self.metric}
        if self.pruned:
            save_pruned(self.model, self.io, path, {"factory": self.factory, "kwargs": self.kwargs}, self.labels, meta,
                        self.branches, **scoring)  # fmt: skip
        else:
            save_model_package(self.model, self.io, path, factory=self.factory, kwargs=self.kwargs,
                               labels=self.labels, meta=meta, branches=self.branches, **scoring)  # fmt: skip


@dataclass
class StageContext:
    """What every stage runs with: the recipe's data and seed, the first target, the teacher, the current model."""

    data: Splits  # the recipe's dataset, resolved once
    train: str
    val: str
    test: str
    calibration: str
    seed: int
    task: Task  # what the model predicts and how it is scored (the teacher package's)
    gate: Gate  # the recipe's budget on one metric (limit None: none set), for a quantize stage that sets none
    reference_val: float  # the teacher's gated metric on `val`: every drop of the run is against the teacher
    profile: HardwareProfile  # the first target's
    teacher: nn.Module
    current: Current
    checkpoints: Path  # where a stage keeps what lets it resume mid-stage
    log: Log = lambda _: None
    progress: ProgressFn | None = None
    device: str | None = "cpu"  # where training stages run (edgekit/devices.py); None: the best available


# A branch: a modality, `fusion`, or a name from a model package's `branches:` override; the model decides which
# exist (the prune stage names them when one is unknown).
Part = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
PART_ORDER = ("image", "text", "audio", "video")
Ratio = Annotated[float, pydantic.Field(ge=0.0, lt=1.0)]
Share = Annotated[float, pydantic.Field(ge=0.0, le=1.0)]
DEFAULT_PRUNING_RATIO = 0.3  # named in PruneStage.pruning_ratio's docstring
# The stages' defaults are the library's, so a recipe and a direct API call do the same thing.
_PRUNE = PruneConfig()
_DISTILL = DistillConfig()


class Frozen(pydantic.BaseModel):
    """A recipe entry: frozen, and a typo in a field name fails."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Stage(Frozen):
    """A recipe stage. `run` writes `where` (atomically, stage.json last) and returns its report row."""

    kind: str
    last: ClassVar[bool] = False  # must be the recipe's last stage
    # Run by every process under torchrun, data-parallel (rank 0 alone saves it); other stages run on rank 0 only.
    distributed: ClassVar[bool] = False

    def key(self, ctx: StageContext) -> dict[str, Any]:
        """What its output depends on beyond its settings and the stages before it."""
        return {}

    def check(self, ctx: StageContext) -> None:
        """Fail on what would fail minutes into the run, before the run directory exists."""

    def run(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        raise NotImplementedError

    def reuse(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        """An earlier run's output, taken up as if this stage had just run."""
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    STAGES[cls.model_fields["kind"].default] = cls
    return cls


def split_score(predict: Callable, io: IOSpec, data: Splits, split: str, task: Task, metric: str) -> float:
    """`task`'s `metric` of `predict` on a split, with every modality present."""
    return evaluate(predict, io, data(split), per_modality=False, task=task).overall[metric]


def model_stats(model: nn.Module, io: IOSpec, mb: ModuleBranches) -> dict[str, Any]:
    """Parameters and MACs per sample, in total and per branch. `mb`: the teacher's module branches, which hold
    for every model of the run (pruning and distillation keep module names)."""
    parts = measure(model, io, mb)
    return {"params": count_params(model), "macs": parts["total"][1],
            "per_branch": {k: {"params": p, "macs": m} for k, (p, m) in parts.items() if k != "total"}}  # fmt: skip


class ModelStage(Stage):
    """A torch -> torch stage: its output is a model package the next stage starts from."""

    def transform(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        """Change ctx.current.model; return what the report should say of it."""
        raise NotImplementedError

    def run(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        start, c = time.perf_counter(), ctx.current
        extra = self.transform(ctx, where)
        m = ctx.gate.metric
        value = split_score(torch_predict(c.model), c.io, ctx.data, ctx.test, ctx.task, m)
        row = {"name": self.kind, "path": str(where), "metric": m, m: value, **model_stats(c.model, c.io, c.mb),
               **extra}  # fmt: skip
        c.save(where, {"stage": self.kind})  # atomic; stage.json, written last, marks the stage complete
        write_json(where / "stage.json", {**row, "seconds": round(time.perf_counter() - start, 1)})
        return self.reuse(ctx, where)

    def reuse(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        reloaded = load_model(where)  # what later stages start from is what was saved, on a rerun or not
        c, factory = ctx.current, reloaded.manifest.factory if reloaded.manifest else ""
        c.model, c.pruned = reloaded.model, factory == PRUNED_FACTORY
        if reloaded.manifest and not c.pruned:
            c.factory, c.kwargs = factory, dict(reloaded.manifest.kwargs)
        return json.loads((where / "stage.json").read_text())


@register
class PruneStage(ModelStage):
    """Structured pruning (edgekit/stages/prune.py): whole attention heads first, then channels."""

    kind: Literal["prune"] = "prune"
    """Selects this stage."""
    pruning_ratio: Ratio | None = None
    """Share of channels removed model-wide, ranked across all layers. When neither this nor `branch_ratios` is
    given: 0.3."""
    branch_ratios: dict[Part, Ratio] = {}
    """Share of channels removed per part instead (a modality branch, `fusion`, or a branch the model package's
    `branches:` names), ranked within each layer; parts not named keep their width. Excludes `pruning_ratio`."""
    head_ratio: Ratio = _PRUNE.head_ratio
    """Share of attention heads removed from every attention layer."""
    round_to: pydantic.PositiveInt = _PRUNE.round_to
    """Remaining widths are multiples of this (never below one multiple), which int8 kernels run fastest on."""
    importance: Literal["l2", "l1"] = "l2"
    """Norm of a channel group's weights that ranks it (and the heads)."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _default_ratio(cls, data: Any) -> Any:
        # A bare `kind: prune` (or `prune` in a --stages list) should prune something.
        if isinstance(data, dict) and "pruning_ratio" not in data and "branch_ratios" not in data:
            return {**data, "pruning_ratio": DEFAULT_PRUNING_RATIO}
        return data

    @pydantic.field_validator("branch_ratios")
    @classmethod
    def _part_order(cls, ratios: dict[str, float]) -> dict[str, float]:
        # One key order whatever the input's, so that a dumped recipe is the same text.
        order = [*(p for p in PART_ORDER if p in ratios), *sorted(set(ratios) - {*PART_ORDER, "fusion"})]
        return {p: ratios[p] for p in [*order, "fusion"] if p in ratios}

    @pydantic.model_validator(mode="after")
    def _one_kind_of_ratio(self) -> PruneStage:
        if self.pruning_ratio is not None and self.branch_ratios:
            raise ValueError("pruning_ratio and branch_ratios exclude each other; give one of them")
        return self

    def to_config(self) -> PruneConfig:
        return PruneConfig(
            ratios=dict(self.branch_ratios),
            global_ratio=self.pruning_ratio,
            head_ratio=self.head_ratio,
            round_to=self.round_to,
            importance=self.importance,
        )

    def check(self, ctx: StageContext) -> None:
        check_config(parts_of(ctx.current.mb), self.to_config())  # the model's branch names, before any work

    def transform(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        c = ctx.current
        result = prune(c.model, c.io, self.to_config(), c.branches, c.mb)
        c.model, c.pruned = result.model, True
        for line in result.shortfalls():  # a ratio that did not happen is said, not left to the numbers
            ctx.log(line)
        return {"parts": result.as_dict()}


@register
class DistillStage(ModelStage):
    """Knowledge distillation (edgekit/stages/distill.py): the frozen teacher (the recipe's `model`) trains a
    student from the labels, its softened logits and optionally its fused features; the student keeps the weights
    of its best `data.val` epoch."""

    kind: Literal["distill"] = "distill"
    """Selects this stage."""
    distributed: ClassVar[bool] = True
    student: Literal["pruned", "small", "teacher"] = "pruned"
    """`pruned`: the model the stages before this one produced (a copy of the teacher when none did), recovering
    the accuracy they cost. A zoo preset name (`small`, `teacher`): a new model of that size, trained from
    scratch."""
    epochs: pydantic.PositiveInt = _DISTILL.epochs
    """Most epochs to train; early stopping may end sooner."""
    batch_size: pydantic.PositiveInt = _DISTILL.batch_size
    """Training batch size."""
    lr: pydantic.PositiveFloat = _DISTILL.lr
    """Peak learning rate."""
    weight_decay: pydantic.NonNegativeFloat = _DISTILL.weight_decay
    """Weight decay."""
    temperature: pydantic.PositiveFloat = _DISTILL.temperature
    """Softens both logit sets so that the teacher's ranking of the wrong classes shows; usually 1 to 8
    (classification only)."""
    alpha: Share = _DISTILL.alpha
    """Weight of the distillation loss; 1 - alpha weighs the loss on the labels. Per task: KL on softened logits
    and cross-entropy (classification), BCE with logits against the teacher's probabilities and the labels
    (multilabel), MSE to the teacher's outputs and the targets (regression), MSE to the teacher's vectors alone
    (embedding)."""
    feature_weight: pydantic.NonNegativeFloat = _DISTILL.feature_weight
    """Weight of the MSE between teacher and student fused features; 0 turns it off."""
    label_smoothing: Ratio = _DISTILL.label_smoothing
    """Label smoothing of the cross-entropy term."""
    modality_dropout: Share = _DISTILL.modality_dropout
    """Chance that each modality is hidden from a training sample (one is always kept); both models see the same
    inputs. A model with a `modality_mask` input is told by it; in one without, a hidden modality's inputs get
    the feed a missing modality gets at validation (its IO spec's `absent` value, or zeros), so that no branch
    goes unused."""
    patience: pydantic.PositiveInt = _DISTILL.patience
    """Epochs without a better `data.val` score (accuracy, or the metric the run gates) before training stops."""
    seed: int | None = None
    """Seed of the shuffling and the modality dropout; null: the recipe's `seed`."""
    amp: Literal["bf16", "fp16"] | None = None
    """Mixed precision of the forward passes (`bf16`: CPUs, recent GPUs; `fp16`: GPUs, with loss scaling); null:
    float32. The device is chosen when the run starts (`--device`)."""

    def to_config(self, recipe_seed: int) -> DistillConfig:
        fields = self.model_dump(exclude={"kind", "student", "seed"})
        return DistillConfig(**fields, seed=recipe_seed if self.seed is None else self.seed)

    def key(self, ctx: StageContext) -> dict[str, Any]:
        # Students distilled before modality dropout reached models without a modality_mask saw every modality.
        io = ctx.current.io
        blind = self.modality_dropout > 0 and not io.has_modality_mask() and len(io.modalities) > 1
        return {"hidden_modalities": "neutral feeds"} if blind else {}

    def check(self, ctx: StageContext) -> None:
        placement(ctx.device, self.amp)  # a device or precision this machine lacks fails now

    def transform(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        c = ctx.current
        if self.student != "pruned":
            kwargs = {**c.kwargs, "preset": self.student}
            c.model, c.pruned, c.kwargs = build_fusion_model(**kwargs), False, kwargs
        checkpoints = ctx.checkpoints / where.name
        result = distill(ctx.teacher, c.model, c.io, ctx.data(ctx.train), ctx.data(ctx.val),
                         self.to_config(ctx.seed), checkpoint_dir=checkpoints, progress=ctx.progress,
                         device=ctx.device, task=ctx.task, metric=ctx.gate.metric, log=ctx.log)  # fmt: skip
        if is_main():
            shutil.rmtree(checkpoints, ignore_errors=True)
        return {f"best_val_{ctx.gate.metric}": result.best_val_accuracy, "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run, "resumed_from": result.resumed_from,
                "predicted_train_s": result.predicted_train_s, "train_s": result.train_s}  # fmt: skip


@register
class QuantizeStage(Stage):
    """Post-training INT8 quantization with real, paired calibration samples (edgekit/quant/); it always comes
    last, since pruning and distillation need the float model."""

    kind: Literal["quantize"] = "quantize"
    """Selects this stage."""
    backend: Int8Format = "auto"  # type: ignore[valid-type]
    """The format whose INT8 model it builds, with that format's backend: `openvino` (NNCF), `onnx` and
    `ort-mobile` (Q/DQ for onnxruntime), `tensorrt` (Q/DQ in TensorRT's scheme, in a bundle) or `executorch`
    (PT2E); `auto`: the format the first target deploys."""
    samples: pydantic.PositiveInt = DEFAULT_SAMPLES
    """Calibration samples drawn from the `data.calibration` split."""
    accuracy_aware: bool = True
    """Measure the quantized model in its runtime on `data.val`, and keep the layers that cost most in float until
    the gated metric is within budget of the teacher's (on `data.val`, the run's one reference): `max_drop`
    points of accuracy (mAP), or the recipe's `budgets.max_metric_drop` in its metric's unit."""
    max_drop: pydantic.NonNegativeFloat | None = None
    """Largest accuracy drop allowed, in points; null: the recipe's `budgets.max_drop`, else its
    `budgets.max_metric_drop`, else 1 point."""
    prefer_faster: bool = True
    """Where this host is the first target's device, time the INT8 model against the FP32 one of the same format
    (batch 1, side by side) and ship FP32 when it is at least 5% faster: INT8 can be the slower one on a CPU
    without VNNI (AVX2 only), or where Q/DQ boundaries outweigh a small model's arithmetic. The INT8 model stays
    in the stage's directory, and the row's `speed` says which shipped and why."""
    last: ClassVar[bool] = True  # the stages before it need a float model

    def key(self, ctx: StageContext) -> dict[str, Any]:
        # INT8 weights are sized for the target's CPU (hardware/cpu.py); `x86` is this host, whichever CPU it has.
        # The search's budget may come from the recipe's budgets, outside this stage's settings.
        g = self.budget(ctx)
        budget = {"max_drop": g.limit} if g.scale == 100 else {"gate": [g.metric, g.limit]}
        return {"profile": ctx.profile.name, "cpu_isa": list(ctx.profile.cpu_isa), **budget}

    def budget(self, ctx: StageContext) -> Gate:
        """Its `max_drop`, else the recipe's gate, else 1 point of accuracy (mAP)."""
        g = ctx.gate
        if self.max_drop is not None:
            if g.scale != 100:
                raise UsageError(
                    f"the quantize stage's max_drop counts points; this run gates {g.metric}",
                    f"drop the stage's max_drop and set budgets.max_metric_drop: {{{g.metric}: LIMIT}}",
                )
            return replace(g, limit=self.max_drop)
        return replace(g, limit=1.0) if g.limit is None and g.scale == 100 else g

    def check(self, ctx: StageContext) -> None:
        g = self.budget(ctx)
        if self.accuracy_aware and g.limit is None:
            raise UsageError(
                f"the accuracy-aware INT8 search needs a budget on {g.metric} (task {ctx.task.name})",
                f"set budgets.max_metric_drop: {{{g.metric}: LIMIT}}, or accuracy_aware: false",
            )
        calibration_set(ctx.current.io, ctx.data(ctx.calibration), self.samples, ctx.seed)

    def reuse(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        return json.loads((where / "stage.json").read_text())

    def timed_against_fp32(
        self, ctx: StageContext, ex: ExportContext, fmt: Format, int8: Artifact, scoring: Scoring, tmp: Path
    ) -> tuple[Speed | None, Built | None]:
        """The FP32 model of the same format, built and timed against `int8` where this host is the device."""
        why = ctx.profile.not_the_device(host_facts())
        if not self.prefer_faster or why is not None:
            if self.prefer_faster:
                ctx.log(f"INT8 against FP32 not timed: this host is not {ctx.profile.name}'s device ({why})")
            return None, None
        fp32 = build_artifact(ex, fmt, "fp32", tmp / f"{fmt.name}-fp32", scoring)
        speed = int8_speed(int8, fp32.artifact, scoring.test, min(ctx.profile.threads, usable_cpus()))
        ctx.log(f"{fmt.name}: {speed.why()}")
        return speed, fp32

    def run(self, ctx: StageContext, where: Path) -> dict[str, Any]:
        c, start = ctx.current, time.perf_counter()
        fmt = get_format(ctx.profile.exports[0].format if self.backend == "auto" else self.backend)
        gate = self.budget(ctx)
        with atomic_dir(where) as tmp:
            work = tmp / "work"
            work.mkdir()
            ctx.log("exporting ONNX")
            hub = export_onnx(c.model, c.io, work / "model.onnx", slim=True)
            parent = model_hash(c.model)
            val = ctx.data(ctx.val)
            search = Search(val, gate, ctx.task, ctx.reference_val) if self.accuracy_aware else None
            calib = functools.partial(calibration_set, c.io, ctx.data(ctx.calibration), self.samples,
                                      ctx.seed)  # fmt: skip
            meta = {"max_drop": gate.limit, "gate": gate.metric, "task": ctx.task.name, "costs": graph_costs(hub, c.io)}
            ex = ExportContext(c.model, c.io, hub, ctx.profile, parent, calib, work, meta, c.branches, None, search)
            ctx.log(f"branches ({ex.job.branches.method}): {', '.join(ex.job.branches.labels.values())}")
            within = f", searching what stays float for {gate.describe()}" if search else ""
            ctx.log(f"quantizing ({fmt.name}, {self.samples} calibration samples{within})")
            m = gate.metric
            scoring = Scoring(ctx.data(ctx.test), ctx.task, m, ctx.data.name, ctx.test)
            try:
                built = build_artifact(ex, fmt, "int8", tmp / f"{fmt.name}-int8", scoring)
            except BudgetError as e:
                write_json(where.parent.parent / "sensitivity.json", e.report.as_dict())
                ctx.log(e.report.table())
                raise
            art = built.artifact
            if built.score is None:
                raise UsageError(f"INT8 {fmt.name} cannot be measured here", "quantize for a format that runs here")
            searched = None
            if ex.sensitivity:
                (report,) = ex.sensitivity.values()
                ctx.log(report.table())
                write_json(tmp / "sensitivity.json", report.as_dict())
                art = art.with_meta(sensitivity="sensitivity.json")
                art.write_manifest()
                accepted = report.accepted()
                searched = {"split": ctx.val, "reference": "teacher", "metric": m,
                            f"reference_{m}": report.baseline, m: accepted.score,
                            "drop": accepted.drop, "max_drop": gate.limit}  # fmt: skip
            kept = art.meta["quantization"]["float_nodes"]
            parity = art.meta["parity"]
            agree = f"top-1 agreement {parity['top1_agreement']:.3f}, " if ctx.task.name == "classification" else ""
            ctx.log(
                f"quantized ({fmt.name}, {len(ex.calib)} calibration samples, {len(kept)} node(s) kept in float; "
                f"parity with the float model: {agree}max error {parity['max_rel']:.3g} of the largest output)"
            )
            speed, fp32 = self.timed_against_fp32(ctx, ex, fmt, art, scoring, tmp)
            if speed and fp32 and speed.ships == "fp32":
                built, art = fp32, fp32.artifact
                if searched:  # the search's objective is the shipped model's drop on val
                    score = split_score(predict_fn(load_runner(art)), c.io, ctx.data, ctx.val, ctx.task, m)
                    searched = {**searched, m: score, "drop": gate.worsening(ctx.reference_val, score),
                                "precision": "fp32"}  # fmt: skip
            shutil.rmtree(work)
            final = where / art.directory.name / art.file
            row = {"name": "quantize", "backend": fmt.name, "path": str(final), "metric": m, m: built.score,
                   "accuracy_source": built.runtime, "seconds": round(time.perf_counter() - start, 1),
                   "parity": art.meta["parity"], **({"search": searched} if searched else {}),
                   **({"speed": speed.as_dict()} if speed else {}), **model_stats(c.model, c.io, c.mb),
                   "artifact": {"format": fmt.name, "precision": art.precision, "path": str(final), m: built.score,
                                "size_mb": round(art.size_mb(), 3), "sha256": sha256_file(art.path)}}  # fmt: skip
            write_json(tmp / "stage.json", row)
        return row
