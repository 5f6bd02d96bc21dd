"""edgekit export: a model (package or compressed run) -> the artifacts a hardware profile deploys."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import api
from .common import AgainstTeacherOpt, JsonOpt, MetricDropOpt, OverwriteOpt, emit, err, metric_drop, out
from .validate import exit_on_verdict
from .validate import render as render_validation


class Shapes(StrEnum):
    dynamic = "dynamic"
    static = "static"


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def export(
    model: Annotated[str, typer.Option(help="Model package or compress run directory.")],
    target: Annotated[
        str, typer.Option("--target", "--profile", help="Hardware profile name, alias (jetson, x86, android) or .yaml.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the artifacts to.")],
    fmt: Annotated[api.FormatName | None, typer.Option("--format", help="Default: the profile's formats.")] = None,
    precision: Annotated[Precision | None, typer.Option(help="Default: the profile's.")] = None,
    data: Annotated[
        str, typer.Option(help="Dataset for calibration (train), the INT8 search (val), parity and accuracy (test).")
    ] = "avdigits",
    calib_samples: Annotated[
        int, typer.Option(min=1, help="Paired calibration samples for INT8.")
    ] = api.DEFAULT_SAMPLES,
    max_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="INT8: keep the costliest layers in float until the drop on val fits (points; "
            "default: the profile's max_accuracy_drop).",
        ),
    ] = None,
    max_metric_drop: MetricDropOpt = None,
    against_teacher: AgainstTeacherOpt = False,
    shapes: Annotated[Shapes, typer.Option(help="dynamic (IOSpec ranges) or static (the opt point).")] = Shapes.dynamic,
    threads: Annotated[int | None, typer.Option(min=1, help="Runtime threads for the accuracy runs.")] = None,
    validate: Annotated[
        bool, typer.Option(help="Validate the profile's artifacts against its budgets at the end.")
    ] = True,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export for a target; every artifact gets a manifest and, where it runs here, its test accuracy."""
    options = api.ExportOptions(fmt and fmt.value, precision and precision.value, data, calib_samples, shapes.value,
                                threads, max_drop, validate, metric_drop(max_metric_drop),
                                against_teacher)  # fmt: skip
    result = api.export(model, target, out_dir, options, overwrite, log=lambda m: err.print(f"[dim]{m}[/dim]"))

    def render() -> None:
        m = result.metric
        table = Table(title=f"{Path(str(model)).name} for {result.profile} (source {m} {result.source.score(m):.4f})")
        drop_col = "drop (pts)" if result.unit == "points" else f"{m} worse by"
        for col in ("format", "precision", "runtime", "size MB", m, drop_col):
            table.add_column(col, justify="right" if col in ("size MB", m, drop_col) else "left")
        for a in result.artifacts:
            score, drop = a.score(m), a.score(f"{m}_drop")
            value = "builds on device" if score is None else f"{score:.4f}"
            if score is None and a.reference:
                value = f"({a.reference[m]:.4f} Q/DQ in ORT)"
            table.add_row(a.format, a.precision, ", ".join(a.runtime or []) or "-", f"{a.size_mb:.2f}", value,
                          "" if drop is None else f"{drop:+.4g}")  # fmt: skip
        out.print(table)
        out.print(f"artifacts in {result.out} (one directory each, with manifest.json)")
        p = result.parity
        top1 = f", top-1 agreement {p['top1_agreement']:.3f}" if result.task == "classification" else ""
        out.print(f"ONNX parity: {p['cases']} cases, max abs error {p['max_abs']:.2e}{top1}")
        for a in result.artifacts:  # INT8 timed against FP32 where this host is the device
            if a.speed:
                out.print(f"{a.format}: {a.speed['why']}", soft_wrap=True)
        if result.validation:
            render_validation(result.validation)

    emit(result, as_json, render)
    if result.validation:
        exit_on_verdict(result.validation, Path(result.out) / "export.json")
