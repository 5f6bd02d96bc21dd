"""edgekit train: train a zoo fusion model on a dataset and write a model package."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import AmpOpt, DeviceOpt, JsonOpt, MlflowOpt, OverwriteOpt, emit, epoch_progress, out, subsets_table

Fusion = StrEnum("Fusion", {f: f for f in api.FUSIONS})
Preset = StrEnum("Preset", {p: p for p in api.PRESETS})


def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Model package directory to write.")],
    arch: Annotated[Fusion, typer.Option(help="Fusion design.")] = Fusion.attention,
    preset: Annotated[Preset, typer.Option(help="Size.")] = Preset.teacher,
    data: Annotated[str, typer.Option(help="Dataset name or directory.")] = "avdigits",
    epochs: Annotated[int, typer.Option(min=1)] = api.TrainConfig.epochs,
    seed: Annotated[int, typer.Option()] = api.TrainConfig.seed,
    modality_dropout: Annotated[float, typer.Option(min=0.0, max=0.9)] = api.TrainConfig.modality_dropout,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    mlflow: MlflowOpt = None,
) -> None:
    """Train a zoo model; the package holds safetensors weights, its IO spec and its test scores."""
    cfg = dataclasses.replace(api.TrainConfig(), epochs=epochs, seed=seed, modality_dropout=modality_dropout, amp=amp)
    where = api.placement(device, amp)  # an unusable device or precision fails before any work
    with epoch_progress(f"train {arch.value}/{preset.value} on {where.device}") as progress:
        result = api.train(arch.value, preset.value, data, out_dir, cfg, overwrite=overwrite,
                           device=str(where.device), progress=progress, mlflow=mlflow)  # fmt: skip

    def render() -> None:
        out.print(subsets_table(f"{arch.value}/{preset.value} on {data} (test split)", result["test"]["subsets"]))
        out.print(f"{result['params']:,} parameters, trained in {result['train_seconds']} s -> {result['model']}")

    emit(result, as_json, render)
