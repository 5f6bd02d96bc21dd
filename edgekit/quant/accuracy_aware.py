"""Accuracy-aware INT8, governed per modality branch: the capability no peer offers for fusion models.

1. Quantize everything; if the drop on the val split fits the budget, stop.
2. Sensitivity per branch: quantize one branch at a time (the rest stays float) and measure the drop.
3. Keep the most sensitive branches in float, one at a time, until the drop fits.
4. Inside the last branch that had to stay float, rank its layers by their activations' quantization
   SQNR (onnxruntime's QDQ debugger) and keep only the worst 1, 2, 4, ... layers in float instead of the
   whole branch, if that fits too.
Every accuracy is the quantized artifact's, run in its own runtime. When nothing fits, the run fails with
the sensitivity table, which says what would be needed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from ..branches import Branches
from ..data.calibration import CalibrationSet
from ..errors import EdgeKitError
from ..graphs import COMPUTE_OPS
from ..runtimes import Runner, predict_fn
from ..targets.onnx import module_scope
from ..tasks import Gate
from .onnx_qdq import ort_reader

# What some backend quantizes: onnxruntime the compute ops, OpenVINO (NNCF) also the recurrent cells' weights and
# embedding tables; both the inputs of an Add or Mul that joins two activations (a residual, or a late fusion's sum
# of branch scores, where 8 bits over the calibration's range cost a regression 0.08 MAE). The search can keep any of
# them in float.
QUANTIZED_OPS = (*COMPUTE_OPS, "Gather")
JOINS = ("Add", "Mul")
Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Unit:
    """A quantizable ONNX node and the part of the fusion model it belongs to."""

    node: str
    branch: str  # image / text / audio / video, or "fusion" for the fusion module and the head
    scope: str


def quant_units(model: onnx.ModelProto, branches: Branches, op_types: tuple[str, ...] = QUANTIZED_OPS) -> list[Unit]:
    """The nodes a backend quantizes (`op_types`, and the joins of two activations; empty = every node), each
    labelled with its branch. A Gather counts only on a weight table (an embedding), not on shapes or indices."""
    weights = {i.name for i in model.graph.initializer}
    constants = weights | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}

    def quantized(n: onnx.NodeProto) -> bool:
        if n.op_type in JOINS:
            return len(n.input) == 2 and not constants & set(n.input)
        return n.op_type in op_types and (n.op_type != "Gather" or n.input[0] in weights)

    return [Unit(n.name, branches.of_node[n.name], module_scope(n) or "") for n in model.graph.node
            if not op_types or quantized(n)]  # fmt: skip


class Backend(Protocol):
    name: str  # in messages and the sensitivity table
    key: str  # backends with one key write the same model (the Q/DQ formats share one per scheme)

    def quantize(self, exclude: frozenset[str], dst: Path) -> dict[str, Any]:
        """Write the INT8 model under `dst` with the named ONNX nodes kept in float; return how it was made."""
        ...

    def runner(self, dst: Path) -> Runner:
        """Run what `quantize` wrote in its own runtime."""
        ...


@dataclass
class Trial:
    float_parts: tuple[str, ...]  # branches ("audio") or layers ("audio: branches.audio.features.0.1") in float
    score: float  # the gated metric
    drop: float  # how much worse than the reference (the float model, or a compress run's teacher), gate's unit


@dataclass
class SensitivityReport:
    backend: str
    baseline: float  # the reference's score
    gate: Gate
    labels: dict[str, str] = field(default_factory=dict)  # branch -> "audio (aud.lstm)"
    branch_drop: dict[str, float] = field(default_factory=dict)  # drop when only that branch is quantized
    layer_sqnr: list[tuple[str, str, float]] = field(default_factory=list)  # (node, scope, dB), worst first
    trials: list[Trial] = field(default_factory=list)
    float_nodes: tuple[str, ...] = ()
    fits: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend, "baseline": self.baseline, "metric": self.gate.metric, "unit": self.gate.unit,
            "max_drop": self.gate.limit, "fits": self.fits,
            "branch_drop": self.branch_drop, "branch_labels": self.labels, "float_nodes": list(self.float_nodes),
            "top_layers": [{"node": n, "scope": s, "sqnr_db": round(q, 2)} for n, s, q in self.layer_sqnr[:10]],
            "trials": [vars(t) for t in self.trials],
        }  # fmt: skip

    def accepted(self) -> Trial:
        """The trial whose exclusions were kept: the last that fit (the search stops at the first fit per step)."""
        return next(t for t in reversed(self.trials) if self.gate.fits(t.drop))

    def table(self) -> str:
        g = self.gate
        unit = "pts" if g.unit == "points" else g.metric
        rows = [f"how much worse {g.metric} gets, in {g.unit}, against the reference ({g.metric} {self.baseline:.4f})"]
        rows += ["", f"{'branch quantized alone':<28}{f'drop ({unit})':>14}"]
        rows += [
            f"{self.labels.get(b, b):<28.28}{d:>14.4g}"
            for b, d in sorted(self.branch_drop.items(), key=lambda x: -x[1])
        ]
        rows += ["", f"{'kept in float':<60}{f'drop ({unit})':>14}"]
        rows += [f"{', '.join(t.float_parts) or '(nothing)':<60.60}{t.drop:>14.4g}" for t in self.trials]
        return "\n".join(rows)


def layer_sqnr(float_path: Path, qdq_path: Path, calib: CalibrationSet, n: int = 64) -> dict[str, float]:
    """SQNR (dB) of each quantized node's input activation in the QDQ model against the float model:
    low means information is lost there (onnxruntime's QDQ debugger)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )  # fmt: skip

    acts = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-sqnr-") as tmp:
        for name, path in (("float", float_path), ("qdq", qdq_path)):
            augmented = Path(tmp) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            acts[name] = collect_activations(str(augmented), ort_reader(calib, n))
    # Masked attention logits hold -inf, where the SQNR is undefined (NaN): such tensors are not ranked.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
    sqnr = {
        node.name: float(errors[node.input[0]]["xmodel_err"])
        for node in onnx.load(str(float_path)).graph.node
        if node.input and node.input[0] in errors
    }
    return {k: v for k, v in sqnr.items() if np.isfinite(v)}


def accuracy_aware(
    backend: Backend,
    units: list[Unit],
    score: Callable[[Predict], float],
    baseline: float,
    gate: Gate,
    work: Path,
    rank_layers: Callable[[], dict[str, float]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> SensitivityReport:
    """Find the smallest float exclusion (branches, then layers) whose INT8 model on val is within `gate` of
    `baseline`: `score` is the gated metric of a predict function (accuracy, MAE, a package's own)."""
    report = SensitivityReport(backend.name, baseline, gate, dict(labels or {}))
    fits = gate.fits
    branches = list(dict.fromkeys(u.branch for u in units))
    nodes_of = {b: frozenset(u.node for u in units if u.branch == b) for b in branches}
    count = iter(range(1_000_000))

    def trial(parts: tuple[str, ...], exclude: frozenset[str], record: bool = True) -> float:
        trial_dir = work / f"trial-{next(count)}"
        backend.quantize(exclude, trial_dir)
        value = score(predict_fn(backend.runner(trial_dir)))
        drop = gate.worsening(baseline, value)
        if record:
            report.trials.append(Trial(parts, value, drop))
        return drop

    if fits(trial((), frozenset())):
        report.fits = True
        return report
    everything = frozenset(u.node for u in units)
    for b in branches:  # sensitivity: only branch b quantized
        report.branch_drop[b] = trial((), everything - nodes_of[b], record=False)
    kept: list[str] = []
    for b in sorted(branches, key=lambda x: -report.branch_drop[x])[:-1]:  # all in float is not INT8
        kept.append(b)
        exclude = frozenset().union(*(nodes_of[k] for k in kept))
        if fits(trial(tuple(kept), exclude)):
            report.fits = True
            report.float_nodes = tuple(sorted(exclude))
            break
    if not report.fits:
        raise BudgetError(report)
    if rank_layers is not None:  # refine: the last branch kept in float needs only its worst layers in float
        last, rest = kept[-1], frozenset().union(*(nodes_of[k] for k in kept[:-1]))
        sqnr = rank_layers()
        scope = {u.node: u.scope for u in units}
        ranked = sorted(nodes_of[last], key=lambda n: sqnr.get(n, float("inf")))
        report.layer_sqnr = [(n, scope[n], sqnr[n]) for n in ranked if n in sqnr]
        k = 1
        while k < len(ranked):
            parts = (*kept[:-1], *(f"{last}: {scope[n] or n}" for n in ranked[:k]))
            if fits(trial(parts, rest | frozenset(ranked[:k]))):
                report.float_nodes = tuple(sorted(rest | frozenset(ranked[:k])))
                break
            k *= 2
    return report


class BudgetError(EdgeKitError):
    """The accuracy budget cannot be met even with every branch but one in float (exit 1)."""

    def __init__(self, report: SensitivityReport) -> None:
        worst = max(report.branch_drop, key=lambda b: report.branch_drop[b])
        g = report.gate
        super().__init__(
            f"INT8 on {report.backend} cannot meet {g.budget} {g.limit} ({g.unit}): best trial lost "
            f"{min(t.drop for t in report.trials):.4g}; most sensitive branch '{worst}' "
            f"({report.branch_drop[worst]:.4g} alone)",
            f"raise {g.budget}, keep the model in FP16/FP32 for this target, or recover accuracy with distillation",
            details={"sensitivity": report.as_dict()},
        )
        self.report = report
