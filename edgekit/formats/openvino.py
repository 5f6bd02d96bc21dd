"""OpenVINO IR (.xml + .bin) for x86 CPUs: FP32, FP16 (fp16 weights) and INT8 (NNCF), from the hub ONNX."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifact import Artifact, versions
from ..quant.backends import OpenVINOBackend
from ..runtimes.openvino import convert_onnx
from ..runtimes.ops import openvino_ops
from .base import ExportContext, Format


def build(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    info: dict[str, object] = {}
    out.mkdir(parents=True, exist_ok=True)  # inside the export's temporary directory: no partial files survive
    if precision == "int8":
        built, info = ctx.int8(FORMAT)
        for name in ("model.xml", "model.bin"):
            shutil.copyfile(built / name, out / name)
    else:
        import openvino as ov

        ov.save_model(convert_onnx(ctx.onnx_fp32), str(out / "model.xml"), compress_to_fp16=precision == "fp16")
    meta = {**ctx.meta, "quantization": info, "versions": versions("torch", "onnx", "openvino", "nncf")}
    return Artifact("openvino", precision, out, "model.xml", ctx.io, ctx.parent, meta)


FORMAT = Format(
    name="openvino",
    suffix=".xml",
    precisions=("fp32", "fp16", "int8"),
    build=build,
    runner="edgekit.runtimes.openvino:OpenVINORunner",
    runtime=("openvino", "openvino"),
    int8=OpenVINOBackend,
    runs_here=("openvino",),
    needs=(("openvino", "openvino"),),
    int8_needs=(("nncf", "nncf"),),
    saturates_without_vnni=True,
    op_profiler=openvino_ops,
    summary="OpenVINO IR for x86 CPUs; INT8 through NNCF",
)
