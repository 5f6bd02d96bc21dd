"""edgekit build: build a TensorRT engine from an export bundle, on the device that will run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, emit, out


def build(
    bundle: Annotated[Path, typer.Argument(help="A tensorrt bundle directory written by `edgekit export`.")],
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (GPU fallback allowed).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the bundle's build_engine.py here; needs TensorRT and a GPU (build on the Jetson itself)."""
    from ..targets.tensorrt import build_engine

    engine = build_engine(bundle, dla_core=dla_core)
    result = {"bundle": str(bundle), "engine": str(engine)}
    emit(result, as_json, lambda: out.print(f"engine written to {engine}"))
