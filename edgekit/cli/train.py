"""edgekit train: train a zoo fusion model on a dataset and write a model package."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .. import api, tracking
from ..devices import placement
from ..fsutil import check_out_dir
from ..models import FUSIONS, PRESETS
from ..training import TrainConfig
from .common import AmpOpt, DeviceOpt, JsonOpt, MlflowOpt, OverwriteOpt, emit, epoch_progress, out, subsets_table

Fusion = StrEnum("Fusion", {f: f for f in FUSIONS})
Preset = StrEnum("Preset", {p: p for p in PRESETS})


def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Model package directory to write.")],
    arch: Annotated[Fusion, typer.Option(help="Fusion design.")] = Fusion.attention,
    preset: Annotated[Preset, typer.Option(help="Size.")] = Preset.teacher,
    data: Annotated[str, typer.Option(help="Dataset name or directory.")] = "avdigits",
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    seed: Annotated[int, typer.Option()] = TrainConfig.seed,
    modality_dropout: Annotated[float, typer.Option(min=0.0, max=0.9)] = TrainConfig.modality_dropout,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    mlflow: MlflowOpt = None,
) -> None:
    """Train a zoo model; the package holds safetensors weights, its IO spec and its test scores."""
    check_out_dir(out_dir, overwrite)
    cfg = dataclasses.replace(TrainConfig(), epochs=epochs, seed=seed, modality_dropout=modality_dropout, amp=amp)
    where = placement(device, amp)  # an unusable device or precision fails before any work
    settings = {"arch": arch.value, "preset": preset.value, "data": data, **dataclasses.asdict(cfg)}
    with (
        tracking.start("train", mlflow, str(out_dir)) as run,
        epoch_progress(f"train {arch.value}/{preset.value} on {where.device}") as progress,
    ):
        run.params({**settings, "device": str(where.device)})
        result = api.train(arch.value, preset.value, data, out_dir, cfg, run.epochs(progress), str(where.device))
        tracking.train(run, settings, result, out_dir)

    def render() -> None:
        out.print(subsets_table(f"{arch.value}/{preset.value} on {data} (test split)", result["test"]["subsets"]))
        out.print(f"{result['params']:,} parameters, trained in {result['train_seconds']} s -> {result['model']}")

    emit(result, as_json, render)
