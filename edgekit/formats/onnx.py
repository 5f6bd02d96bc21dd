"""ONNX, run by onnxruntime: FP32, and INT8 as a Q/DQ graph in the scheme of the profile's CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..artifact import Artifact, versions
from ..quant.backends import Int8Job, OnnxQDQBackend
from ..quant.onnx_qdq import cpu_scheme
from ..runtimes.ops import ort_ops
from .base import ExportContext, Format


def build(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    src, info = ctx.onnx_for(FORMAT, precision)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / "model.onnx")
    meta = {**ctx.meta, "quantization": info, "versions": versions("torch", "onnx", "onnxruntime")}
    return Artifact("onnx", precision, out, "model.onnx", ctx.io, ctx.parent, meta)


def cpu_qdq(job: Int8Job) -> OnnxQDQBackend:
    """Q/DQ in the scheme of the profile's CPU; ort-mobile shares the model (one per scheme)."""
    return OnnxQDQBackend(job, cpu_scheme(job.profile))


# What every format onnxruntime runs has in common.
ONNXRUNTIME: dict[str, Any] = {
    "runner": "edgekit.runtimes.ort:OrtRunner",
    "runtime": ("onnxruntime", None),
    "runs_here": ("onnxruntime",),
    "int8": cpu_qdq,
    "saturates_without_vnni": True,
    "op_profiler": ort_ops,
}

FORMAT = Format(
    name="onnx",
    suffix=".onnx",
    precisions=("fp32", "int8"),
    build=build,
    summary="the parity-checked hub graph; INT8 as Q/DQ for onnxruntime's CPU kernels",
    **ONNXRUNTIME,
)
