"""ExecuTorch .pte for phones: XNNPACK-delegated FP32, or INT8 through PT2E with the XNNPACK quantizer.
ExecuTorch's op profiler needs a runtime built with ETDump, which the Python package is not: no breakdown."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifact import Artifact, load_artifact
from ..quant.backends import ExecuTorchBackend
from ..targets.executorch import PTE, export_pte
from .base import ExportContext, Format


def build(ctx: ExportContext, precision: str, out: Path) -> Artifact:
    if precision != "int8":
        return export_pte(ctx.model, ctx.io, out, precision, None, ctx.parent, dict(ctx.meta))
    built, info = ctx.int8(FORMAT)
    quantized = load_artifact(built)  # its manifest holds what the runner needs (input order, planned bounds)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built / PTE, out / PTE)
    return Artifact(
        "executorch", precision, out, PTE, ctx.io, ctx.parent, {**ctx.meta, **quantized.meta, "quantization": info}
    )


FORMAT = Format(
    name="executorch",
    suffix=".pte",
    precisions=("fp32", "int8"),
    build=build,
    runner="edgekit.runtimes.executorch:ExecuTorchRunner",
    runtime=("executorch", "executorch"),
    int8=ExecuTorchBackend,
    runs_here=("executorch",),
    needs=(("executorch", "executorch"),),
    summary="ExecuTorch .pte with the XNNPACK delegate, for phones; INT8 through PT2E",
)
