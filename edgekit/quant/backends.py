"""The INT8 backends the accuracy-aware loop drives, behind one interface: quantize with some ONNX nodes
kept in float, write the artifact, and return a predictor that runs it in its own runtime."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..io import IOSpec
from ..runtimes import load_runner, onnx_runner, predict_fn
from .accuracy_aware import Predict
from .calibration import CalibrationSet
from .onnx_qdq import OP_TYPES, quantize_qdq


@dataclass(frozen=True)
class OnnxQDQBackend:
    """onnxruntime static QDQ (what the onnx, tensorrt and ort-mobile targets carry), run in onnxruntime."""

    src: Path
    io: IOSpec
    calib: CalibrationSet
    op_types: tuple[str, ...] = OP_TYPES
    name: str = "onnx"

    def build(self, exclude: frozenset[str], dst: Path) -> Predict:
        dst.mkdir(parents=True, exist_ok=True)
        quantize_qdq(self.src, dst / "model.onnx", self.calib, sorted(exclude), self.op_types)
        return predict_fn(onnx_runner(dst / "model.onnx", self.io))


@dataclass(frozen=True)
class OpenVINOBackend:
    """NNCF on the OpenVINO model converted from the hub ONNX, run in OpenVINO with an f32 precision hint."""

    src: Path
    io: IOSpec
    calib: CalibrationSet
    name: str = "openvino"

    def build(self, exclude: frozenset[str], dst: Path) -> Predict:
        import openvino as ov

        from .openvino_nncf import quantize_openvino

        # OpenVINO names ops after their ONNX node, splitting off parts ("node_Conv_9/WithoutBiases").
        patterns = [f"^{re.escape(n)}(/.*)?$" for n in sorted(exclude)]
        model, _ = quantize_openvino(self.src, self.calib, patterns=patterns)
        dst.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(dst / "model.xml"), compress_to_fp16=False)
        return predict_fn(load_runner(Artifact("openvino", "int8", dst, "model.xml", self.io, "")))
