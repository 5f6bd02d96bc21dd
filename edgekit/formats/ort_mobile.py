"""ONNX Runtime mobile: the .ort flatbuffer format plus the reduced operator config that a minimal onnxruntime
build for Android or iOS is compiled with. The same .ort runs here in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from ..artifact import Artifact, versions
from .base import ExportContext, Format
from .onnx import ONNXRUNTIME


def build(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    src, info = ctx.onnx_for(FORMAT, precision)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmp:
        model = Path(tmp) / "model.onnx"
        shutil.copyfile(src, model)
        # Fixed optimizations: the saved graph is final, so the mobile runtime needs no optimizer.
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress lines
            convert_onnx_models_to_ort(model, Path(tmp) / "out", [OptimizationStyle.Fixed])
        produced = Path(tmp) / "out"
        shutil.copyfile(produced / "model.ort", out / "model.ort")
        shutil.copyfile(produced / "model.required_operators.config", out / "required_operators.config")
    meta = {**ctx.meta, "quantization": info, "operator_config": "required_operators.config",
            "versions": versions("torch", "onnx", "onnxruntime")}  # fmt: skip
    return Artifact("ort-mobile", precision, out, "model.ort", ctx.io, ctx.parent, meta)


FORMAT = Format(
    name="ort-mobile",
    suffix=".ort",
    precisions=("fp32", "int8"),
    build=build,
    summary="ONNX Runtime mobile's .ort flatbuffer with its reduced operator config, for phones",
    **ONNXRUNTIME,
)
