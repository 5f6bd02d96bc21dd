"""edgekit data build: build (or reuse from cache) a built-in benchmark dataset."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import JsonOpt, OverwriteOpt, emit, out

app = typer.Typer(help="Build benchmark datasets.", no_args_is_help=True)
Dataset = StrEnum("Dataset", {n: n for n in api.BUILTIN})


@app.command("build")
def build(
    dataset: Annotated[Dataset, typer.Argument(metavar="NAME", help="A built-in dataset.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Dataset directory (default: in the cache).")] = None,
    samples: Annotated[int | None, typer.Option(help="Total samples over train/val/test.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the build is deterministic for it.")] = None,
    occlude: Annotated[float | None, typer.Option(help="Share of images with a block masked out (0-1).")] = None,
    video_frames: Annotated[int | None, typer.Option(help="Turn each image into a clip of this many frames.")] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build a dataset (deterministic, cached by content hash) and print where it is."""
    name = dataset.value
    changes = {"n_samples": samples, "seed": seed, "occlude_fraction": occlude, "video_frames": video_frames}
    cfg = dataclasses.replace(api.BUILTIN[name], **{k: v for k, v in changes.items() if v is not None})
    result = api.build_data(name, cfg, out_dir, overwrite)

    def render() -> None:
        out.print(f"[bold]{name}[/] at {result['path']} (key {result['key']}, {result['seconds']} s)")
        for split, info in result["splits"].items():
            out.print(f"  {split:5} {info['samples']:5} samples, {len(info['speakers'])} speakers")

    emit(result, as_json, render)
