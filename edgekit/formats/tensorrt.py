"""TensorRT for Jetson. Engines are built on the device, so the artifact is a bundle: the ONNX (INT8 as explicit
Q/DQ in TensorRT's symmetric scheme), the op report against the profile's TensorRT, and the build and run scripts.
Nothing runs it here; its ONNX does, in onnxruntime, as the labelled proxy of its accuracy."""

from __future__ import annotations

from pathlib import Path

from ..artifact import Artifact
from ..quant.backends import Int8Job, OnnxQDQBackend
from ..quant.onnx_qdq import TENSORRT
from ..runtimes import Runner, onnx_runner, qdq_emulator
from ..runtimes.ops import tensorrt_ops
from ..targets.onnx import OPSET, lower_onnx
from ..targets.tensorrt import ENGINE, write_bundle
from ..targets.tensorrt_ops import table_for
from .base import ExportContext, Format


def build(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    # TensorRT takes INT8 as explicit Q/DQ; FP16 is a builder flag over the FP32 graph.
    src, info = ctx.onnx_for(FORMAT, precision)
    table = table_for(ctx.profile.software.get("tensorrt", ""))
    adapted: list[str] = []
    if table.max_opset < OPSET:  # an older parser (Xavier's TensorRT 8.5): lower the graph to what it reads
        lowered = ctx.work / f"model.{precision}.opset{table.max_opset}.onnx"
        adapted = lower_onnx(src, lowered, table.max_opset, keep_layernorm="LayerNormalization" in table.ops)
        src = lowered
    meta = {**ctx.meta, "quantization": info, "adapted": adapted}
    return write_bundle(src, ctx.io, ctx.profile, precision, out, ctx.parent, meta)


def int8(job: Int8Job) -> OnnxQDQBackend:
    return OnnxQDQBackend(job, TENSORRT, emulate=True)


def proxy(art: Artifact, threads: int | None) -> tuple[Runner, str]:
    """The bundle's ONNX is the graph the engine is built from."""
    if art.precision == "int8":
        return qdq_emulator(art.path, art.io, threads), "proxy: the bundle's Q/DQ ONNX in onnxruntime"
    return onnx_runner(art.path, art.io, threads), "proxy: the bundle's float ONNX in onnxruntime"


FORMAT = Format(
    name="tensorrt",
    suffix=".onnx",
    precisions=("fp32", "fp16", "int8"),
    build=build,
    runner="edgekit.runtimes.tensorrt:TensorRTRunner",
    runtime=("tensorrt", None),
    int8=int8,
    op_profiler=tensorrt_ops,
    proxy=proxy,
    device_build=ENGINE,
    summary="a bundle (ONNX, op report, build scripts) whose engine is built on the Jetson; INT8 as explicit Q/DQ",
)
