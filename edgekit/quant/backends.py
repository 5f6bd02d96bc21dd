"""The INT8 backends behind one interface, and the search that drives them: quantize with some ONNX nodes kept
in float, write the model, and run it in its own runtime. Every format names its backend (edgekit/formats/);
`compress` and `export` both quantize through `ExportContext.int8`, so one model gets one INT8 artifact."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from ..artifact import Artifact
from ..branches import Branches, branch_of, discover, fx_branches, input_seeds, module_branches
from ..data import FeedDataset
from ..data.calibration import CalibrationSet
from ..errors import EdgeKitError
from ..evaluation import evaluate
from ..graphs import SIZE_OPS, Node, reach
from ..hardware import HardwareProfile
from ..hardware.cpu import int8_saturates
from ..io import IOSpec
from ..runtimes import Runner, onnx_runner, predict_fn, qdq_emulator
from ..runtimes.openvino import convert_onnx
from ..tasks import Gate, Task
from .accuracy_aware import Backend, Predict, SensitivityReport, Unit, accuracy_aware, layer_sqnr, quant_units
from .onnx_qdq import Scheme, cpu_scheme, nonfinite_nodes, quantize_qdq


@dataclass(frozen=True)
class Int8Job:
    """What every backend quantizes from: the float model, its parity-checked hub ONNX, paired calibration samples
    and the profile of the device that runs the result."""

    model: nn.Module
    io: IOSpec
    hub: Path
    calib: CalibrationSet
    profile: HardwareProfile
    overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)  # a package's `branches:` override

    @functools.cached_property
    def branches(self) -> Branches:
        return discover(onnx.load(str(self.hub)), self.io, self.overrides)

    @functools.cached_property
    def units(self) -> tuple[Unit, ...]:
        return tuple(quant_units(onnx.load(str(self.hub)), self.branches))


@dataclass(frozen=True)
class OnnxQDQBackend:
    """onnxruntime static QDQ in a consumer's scheme (formats onnx, ort-mobile, tensorrt). `emulate`: its runtime
    cannot run here (TensorRT), so the Q/DQ graph runs in onnxruntime with the INT8 arithmetic emulated in float."""

    job: Int8Job
    scheme: Scheme
    emulate: bool = False
    name: str = "onnx"

    @property
    def key(self) -> str:
        return f"qdq-{self.scheme.name}"

    def quantize(self, exclude: frozenset[str], dst: Path) -> dict[str, Any]:
        dst.mkdir(parents=True, exist_ok=True)
        return quantize_qdq(self.job.hub, dst / "model.onnx", self.job.calib, sorted(exclude), self.scheme)

    def runner(self, dst: Path) -> Runner:
        run = qdq_emulator if self.emulate else onnx_runner
        return run(dst / "model.onnx", self.job.io)


@dataclass(frozen=True)
class OpenVINOBackend:
    """NNCF on the OpenVINO model converted from the hub ONNX, run in OpenVINO with an f32 precision hint. A CPU
    without VNNI gets 7-bit weights (NNCF's overflow fix)."""

    job: Int8Job
    name: str = "openvino"
    key: str = "openvino"

    @functools.cached_property
    def unbounded(self) -> set[str]:
        """Nodes carrying -inf or NaN (an attention mask's fill): no INT8 scale fits them, so they stay float."""
        return nonfinite_nodes(self.job.hub, self.job.calib)

    def quantize(self, exclude: frozenset[str], dst: Path) -> dict[str, Any]:
        import openvino as ov

        from .openvino_nncf import quantize_openvino

        units = self.job.units if exclude else ()  # a branch whose units are all excluded is floated whole
        # OpenVINO names ops after their ONNX node, splitting off parts ("node_Conv_9/WithoutBiases").
        patterns = [f"^{re.escape(n)}(/.*)?$" for n in sorted(exclude | self.unbounded)]
        floated = {b for b in {u.branch for u in units} if {u.node for u in units if u.branch == b} <= exclude}
        # Auto-generated op names ("MVN_5691") differ between conversions: the branch ops come from this one.
        model = convert_onnx(self.job.hub)
        ops = ov_branches(model, self.job.io, self.job.branches)
        patterns += [f"^{re.escape(op)}$" for op, b in ops.items() if b in floated]
        model, info = quantize_openvino(model, self.job.calib, patterns, int8_saturates(self.job.profile.cpu_isa))
        dst.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(dst / "model.xml"), compress_to_fp16=False)
        return info

    def runner(self, dst: Path) -> Runner:
        from ..runtimes.openvino import OpenVINORunner

        return OpenVINORunner(Artifact("openvino", "int8", dst, "model.xml", self.job.io, ""))


def ov_branches(model: Any, io: IOSpec, branches: Branches) -> dict[str, str]:
    """Every op of an OpenVINO model, with its branch. OpenVINO keeps the ONNX node's name on the ops it makes of it
    ("node_Conv_9", "node_Conv_9/WithoutBiases"), and those take the node's branch from `branches`, a package's
    `branches:` override included. The ops it names itself ("GRUSequence_217", "MVN_5691", the inputs of a residual
    Add that NNCF quantizes) take theirs by the one reachability rule (edgekit/branches.py) from the ops around
    them: floating a branch means ignoring all of its ops, or some of it stays quantized."""
    ops = list(model.get_ordered_ops())

    def onnx_node(name: str) -> str | None:
        while name and name not in branches.of_node:
            name = name.rpartition("/")[0]
        return name or None

    seeds = input_seeds(io)
    for op in ops:
        # Constants are shared across branches after folding: they take no label of their own.
        if op.get_type_name() not in ("Parameter", "Constant") and (n := onnx_node(op.get_friendly_name())):
            seeds[op.get_friendly_name()] = frozenset({branches.of_node[n]})

    def node(op: Any) -> Node:
        reads = tuple(i.get_source_output().get_node().get_friendly_name() for i in op.inputs())
        return Node(op.get_friendly_name(), () if op.get_type_name() in SIZE_OPS else reads, (op.get_friendly_name(),))

    nodes = [node(op) for op in ops if op.get_type_name() != "Parameter"]
    return {n: b for n, d in reach(nodes, seeds).items() if (b := branch_of(d))}


@dataclass(frozen=True)
class ExecuTorchBackend:
    """PT2E with the XNNPACK quantizer on the torch model, lowered to a .pte and run in ExecuTorch. The search's
    ONNX node exclusions map to module paths through the scopes the hub ONNX records."""

    job: Int8Job
    name: str = "executorch"
    key: str = "executorch"

    def quantize(self, exclude: frozenset[str], dst: Path) -> dict[str, Any]:
        from ..targets.executorch import export_pte

        job = self.job
        scopes = {u.node: u.scope for u in job.units} if exclude else {}
        modules = sorted({self.module_of(scopes[n]) for n in exclude if scopes.get(n)})
        # A branch whose layers are all excluded is floated whole: the adds, softmaxes and mask products between its
        # layers too, which PT2E quantizes as well (on the reference student, fusion's cost 6 points with its
        # layers in float).
        floated = sorted({u.branch for u in job.units} - {u.branch for u in job.units if u.node not in exclude})
        modules += [p for b in floated for p in job.overrides.get(b, ())]  # a package's own branch modules
        roots = lambda: module_branches(job.model, job.io, job.overrides).roots()  # noqa: E731 (when PT2E fails)
        ops = lambda g: [n for n, b in fx_branches(g, job.io).items() if b in floated]  # noqa: E731
        art = export_pte(job.model, job.io, dst, "int8", job.calib, "", {}, float_modules=modules, branch_roots=roots,
                         float_ops=ops if floated else None)  # fmt: skip
        return {**art.meta["quantization"], "float_branches": floated}

    def runner(self, dst: Path) -> Runner:
        from ..artifact import load_artifact
        from ..runtimes.executorch import ExecuTorchRunner

        return ExecuTorchRunner(load_artifact(dst))

    def module_of(self, scope: str) -> str:
        """A Conv fused with its BatchNorm is scoped to the BatchNorm in the ONNX graph; float the pair."""
        is_bn = isinstance(self.job.model.get_submodule(scope), nn.modules.batchnorm._BatchNorm)
        return scope.rpartition(".")[0] if is_bn else scope


def find_float_nodes(backend: Backend, job: Int8Job, val: FeedDataset, gate: Gate, task: Task, work: Path,
                     reference: float | None = None) -> SensitivityReport:  # fmt: skip
    """The accuracy-aware search (quant/accuracy_aware.py) for `backend`: `task`'s gated metric measured on `val`
    against `reference` (default: the float model's own score there); layers are ranked by their SQNR in
    onnxruntime's Q/DQ graph of the profile's CPU. Raises BudgetError when nothing fits."""
    work.mkdir(parents=True, exist_ok=True)

    def score(predict: Predict) -> float:
        return evaluate(predict, job.io, val, per_modality=False, task=task).overall[gate.metric]

    def rank() -> dict[str, float]:
        quantize_qdq(
            job.hub, work / "full-int8.onnx", job.calib, scheme=getattr(backend, "scheme", cpu_scheme(job.profile))
        )
        return layer_sqnr(job.hub, work / "full-int8.onnx", job.calib)

    float_score = score(predict_fn(onnx_runner(job.hub, job.io)))
    spent = 0.0 if reference is None else gate.worsening(reference, float_score)
    if not gate.fits(spent):  # the stages before INT8 spent the budget: no exclusion can win it back
        raise EdgeKitError(f"the float model is already {spent:.4g} {gate.unit} worse on val than the reference, "
                           f"over {gate.budget} {gate.limit}: INT8 has no budget left",
                           f"recover accuracy first (distill longer, prune less) or raise {gate.budget}")  # fmt: skip
    baseline = float_score if reference is None else reference
    return accuracy_aware(backend, list(job.units), score, baseline, gate, work, rank, job.branches.labels)
