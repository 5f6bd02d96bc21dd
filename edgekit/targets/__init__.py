"""Export targets: one builder per format, dispatched through one table. Each builder takes the shared
ExportContext and writes one artifact directory (files + manifest.json)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..artifact import Artifact, versions
from .context import ExportContext
from .mobile import build_ort_mobile
from .onnx import OPSET, lower_onnx
from .openvino import build_openvino

Builder = Callable[[ExportContext, str, Path], Artifact]


def build_onnx(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    src, info = ctx.qdq("onnx") if precision == "int8" else (ctx.onnx_fp32, {})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / "model.onnx")
    return Artifact(
        "onnx",
        precision,
        out,
        "model.onnx",
        ctx.io,
        ctx.parent,
        {**ctx.meta, "quantization": info, "versions": versions("torch", "onnx", "onnxruntime")},
    )


def build_tensorrt(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    from .tensorrt import write_bundle
    from .tensorrt_ops import table_for

    # TensorRT takes INT8 as explicit Q/DQ; FP16 is a builder flag over the FP32 graph.
    src, info = ctx.qdq("tensorrt") if precision == "int8" else (ctx.onnx_fp32, {})
    table = table_for(ctx.profile.software.get("tensorrt", ""))
    adapted: list[str] = []
    if table.max_opset < OPSET:  # an older parser (Xavier's TensorRT 8.5): lower the graph to what it reads
        lowered = ctx.work / f"model.{precision}.opset{table.max_opset}.onnx"
        adapted = lower_onnx(src, lowered, table.max_opset, keep_layernorm="LayerNormalization" in table.ops)
        src = lowered
    meta = {**ctx.meta, "quantization": info, "adapted": adapted}
    return write_bundle(src, ctx.io, ctx.profile, precision, out, ctx.parent, meta)


def build_executorch(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    from ..branches import module_branches
    from .executorch import export_pte

    calib = ctx.calib if precision == "int8" else None
    roots = lambda: module_branches(ctx.model, ctx.io).roots()  # noqa: E731 (only wanted when PT2E fails)
    return export_pte(ctx.model, ctx.io, out, precision, calib, ctx.parent, dict(ctx.meta), branch_roots=roots)


BUILDERS: dict[str, Builder] = {
    "onnx": build_onnx,
    "openvino": build_openvino,
    "tensorrt": build_tensorrt,
    "executorch": build_executorch,
    "ort-mobile": build_ort_mobile,
}
