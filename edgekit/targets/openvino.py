"""OpenVINO IR (.xml + .bin) for x86 CPUs: FP32, FP16 (fp16 weights) and INT8 (NNCF), from the hub ONNX."""

from __future__ import annotations

import re
from pathlib import Path

from ..artifact import Artifact, versions
from ..hardware.cpu import int8_saturates
from .context import ExportContext


def build_openvino(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    import openvino as ov

    info: dict[str, object] = {}
    if precision == "int8":
        from ..quant.onnx_qdq import nonfinite_nodes
        from ..quant.openvino_nncf import quantize_openvino

        # Nodes carrying an attention mask's -inf fill have no INT8 scale: they stay float, as in the QDQ path.
        unbounded = [f"^{re.escape(n)}(/.*)?$" for n in sorted(nonfinite_nodes(ctx.onnx_fp32, ctx.calib))]
        model, info = quantize_openvino(ctx.onnx_fp32, ctx.calib, unbounded, int8_saturates(ctx.profile.cpu_isa))
    else:
        model = ov.convert_model(str(ctx.onnx_fp32))
    out.mkdir(parents=True, exist_ok=True)  # inside the export's temporary directory: no partial files survive
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=precision == "fp16")
    return Artifact(
        "openvino",
        precision,
        out,
        "model.xml",
        ctx.io,
        ctx.parent,
        {**ctx.meta, "quantization": info, "versions": versions("torch", "onnx", "openvino", "nncf")},
    )
