"""edgekit train: train a zoo fusion model on a dataset and write a model package."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from ..fsutil import check_out_dir
from ..models import FUSIONS, PRESETS
from ..training import TrainConfig
from .common import JsonOpt, OverwriteOpt, emit, epoch_progress, out, subsets_table


def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Model package directory to write.")],
    arch: Annotated[str, typer.Option(help=f"Fusion: {', '.join(FUSIONS)}.")] = "attention",
    preset: Annotated[str, typer.Option(help=f"Size: {', '.join(PRESETS)}.")] = "teacher",
    data: Annotated[str, typer.Option(help="Dataset name or directory.")] = "avdigits",
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    seed: Annotated[int, typer.Option()] = TrainConfig.seed,
    modality_dropout: Annotated[float, typer.Option(min=0.0, max=0.9)] = TrainConfig.modality_dropout,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a zoo model; the package holds safetensors weights, its IO spec and its test scores."""
    check_out_dir(out_dir, overwrite)
    cfg = dataclasses.replace(TrainConfig(), epochs=epochs, seed=seed, modality_dropout=modality_dropout)
    with epoch_progress(f"train {arch}/{preset}") as progress:
        result = api.train(arch, preset, data, out_dir, cfg, progress)

    def render() -> None:
        out.print(subsets_table(f"{arch}/{preset} on {data} (test split)", result["test"]["subsets"]))
        out.print(f"{result['params']:,} parameters, trained in {result['train_seconds']} s -> {result['model']}")

    emit(result, as_json, render)
