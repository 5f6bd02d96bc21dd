"""The INT8 backends the accuracy-aware loop drives, behind one interface: quantize with some ONNX nodes
kept in float, write the artifact, and return a predictor that runs it in its own runtime."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..artifact import Artifact
from ..io import MODALITY_MASK, IOSpec
from ..runtimes import load_runner, onnx_runner, predict_fn
from .accuracy_aware import Predict, Unit
from .calibration import CalibrationSet
from .onnx_qdq import CPU, Scheme, nonfinite_nodes, quantize_qdq


@dataclass(frozen=True)
class OnnxQDQBackend:
    """onnxruntime static QDQ (what the onnx, tensorrt and ort-mobile targets carry), run in onnxruntime."""

    src: Path
    io: IOSpec
    calib: CalibrationSet
    scheme: Scheme = CPU
    name: str = "onnx"

    def build(self, exclude: frozenset[str], dst: Path) -> Predict:
        dst.mkdir(parents=True, exist_ok=True)
        quantize_qdq(self.src, dst / "model.onnx", self.calib, sorted(exclude), self.scheme)
        return predict_fn(onnx_runner(dst / "model.onnx", self.io))


@dataclass(frozen=True)
class OpenVINOBackend:
    """NNCF on the OpenVINO model converted from the hub ONNX, run in OpenVINO with an f32 precision hint."""

    src: Path
    io: IOSpec
    calib: CalibrationSet
    overflow_fix: bool = False  # 7-bit weights, for x86 CPUs without VNNI
    units: tuple[Unit, ...] = ()  # the loop's units: a branch whose units are all excluded is floated whole
    name: str = "openvino"

    @functools.cached_property
    def unbounded(self) -> set[str]:
        """Nodes carrying -inf or NaN (an attention mask's fill): no INT8 scale fits them, so they stay float."""
        return nonfinite_nodes(self.src, self.calib)

    def build(self, exclude: frozenset[str], dst: Path) -> Predict:
        import openvino as ov

        from .openvino_nncf import quantize_openvino

        # OpenVINO names ops after their ONNX node, splitting off parts ("node_Conv_9/WithoutBiases").
        patterns = [f"^{re.escape(n)}(/.*)?$" for n in sorted(exclude | self.unbounded)]
        floated = {
            b for b in {u.branch for u in self.units} if {u.node for u in self.units if u.branch == b} <= exclude
        }
        # Auto-generated op names ("MVN_5691") differ between conversions: the branch ops come from this one.
        model = ov.convert_model(str(self.src))
        patterns += [f"^{re.escape(op)}$" for op, b in ov_branches(model, self.io).items() if b in floated]
        model, _ = quantize_openvino(model, self.calib, patterns, self.overflow_fix)
        dst.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(dst / "model.xml"), compress_to_fp16=False)
        return predict_fn(load_runner(Artifact("openvino", "int8", dst, "model.xml", self.io, "")))


def ov_branches(model: Any, io: IOSpec) -> dict[str, str]:
    """Every op of an OpenVINO model, with its branch, found by reachability in the OpenVINO
    graph as edgekit/branches.py finds it in the ONNX one. NNCF quantizes more than the loop's units (the inputs
    of a transformer's residual Adds, a GRU that OpenVINO renamed "GRUSequence_217"): floating a branch means
    ignoring all of its ops, or some of it stays quantized."""
    mask = "modality mask"  # whatever reads it fuses modalities
    modality = {t.name: mask if t.name == MODALITY_MASK else t.modality for t in io.inputs}
    modality = {k: v for k, v in modality.items() if v != "other"}
    deps: dict[str, frozenset[str]] = {}
    out = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Parameter":
            deps[name] = frozenset({modality[name]}) if name in modality else frozenset()
            continue
        d = frozenset().union(*(deps.get(i.get_source_output().get_node().get_friendly_name(), frozenset())
                                for i in op.inputs()))  # fmt: skip
        deps[name] = frozenset() if op.get_type_name() == "ShapeOf" else d
        if len(d) == 1 and mask not in d:
            out[name] = next(iter(d))
    return out


@dataclass(frozen=True)
class ExecuTorchBackend:
    """PT2E with the XNNPACK quantizer on the torch model, lowered to a .pte and run in ExecuTorch. The loop's
    ONNX node exclusions map to module paths through the scopes the hub ONNX records."""

    model: nn.Module
    io: IOSpec
    calib: CalibrationSet
    scopes: Mapping[str, str]  # ONNX node -> module path
    name: str = "executorch"

    def build(self, exclude: frozenset[str], dst: Path) -> Predict:
        from ..targets.executorch import export_pte

        modules = sorted({self.module_of(self.scopes[n]) for n in exclude if self.scopes.get(n)})
        art = export_pte(self.model, self.io, dst, "int8", self.calib, "", {}, float_modules=modules)
        return predict_fn(load_runner(art))

    def module_of(self, scope: str) -> str:
        """A Conv fused with its BatchNorm is scoped to the BatchNorm in the ONNX graph; float the pair."""
        is_bn = isinstance(self.model.get_submodule(scope), nn.modules.batchnorm._BatchNorm)
        return scope.rpartition(".")[0] if is_bn else scope
