"""edgekit eval: a model's scores by its task (accuracy and macro-F1, MAE, RMSE and r, mAP), overall and per modality
subset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import JsonOpt, emit, err, out, subsets_table


def eval_cmd(
    model: Annotated[str, typer.Option(help="Model package directory, or pkg.module:factory with --io.")],
    data: Annotated[str, typer.Option(help="Dataset name, directory, or module:function.")] = "avdigits",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    weights: Annotated[Path | None, typer.Option(help="Weights file (.safetensors, .pt).")] = None,
    io: Annotated[Path | None, typer.Option(help="IO spec YAML (needed with a factory).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow a .pt that holds pickled code (runs it).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate on a dataset split; subsets are keyed by modalities joined with '+'."""
    report = api.evaluate_model(model, data, split, weights, io, trust_checkpoint)
    result = {"model": model, "data": data, "split": split, **report.as_dict()}
    title = f"{Path(model).name or model} on {data}/{split} ({report.task}, {report.samples} samples)"
    emit(result, as_json, lambda: out.print(subsets_table(title, result["subsets"])))
    for warning in report.warnings:
        err.print(f"warning: {warning}")
    for subset in report.nonfinite:
        err.print(f"warning: outputs with only {subset} present hold NaN or inf; its scores mean nothing "
                  "(declare the missing inputs' `absent` value in the IO spec)")  # fmt: skip
