"""edgekit compress: build a recipe from a file and/or flags, then run it into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import api
from .common import (
    AmpOpt,
    DeviceOpt,
    JsonOpt,
    MetricDropOpt,
    MlflowOpt,
    OverwriteOpt,
    argv,
    emit,
    epoch_progress,
    err,
    metric_drop,
    out,
    real_stdout,
    say,
    without_option,
)
from .validate import UNVERIFIED
from .validate import render as render_validation


def compress(
    recipe_file: Annotated[
        Path | None, typer.Option("--recipe", help="Recipe YAML; flags override its fields.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model package directory (default: the reference teacher).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name or directory.")] = None,
    stages: Annotated[str | None, typer.Option(help="Comma list of stage kinds, e.g. prune,distill,quantize.")] = None,
    target: Annotated[str | None, typer.Option(help="Hardware profile(s), comma separated.")] = None,
    max_drop: Annotated[float | None, typer.Option(min=0.0, help="Accuracy budget in points.")] = None,
    max_metric_drop: MetricDropOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/compress).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Data-parallel distillation in this many processes (launches torchrun).")
    ] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and stop.")] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    mlflow: MlflowOpt = None,
) -> None:
    """Compress a model: the recipe's stages in order; a rerun of the same recipe resumes.

    Distillation runs on --device (with --amp), and data-parallel under torchrun (or --nproc N); rank 0 writes."""
    where = api.placement(device, amp).device  # an unusable device or precision fails before any work
    base = api.load_recipe(recipe_file) if recipe_file else None
    recipe = api.recipe_from_flags(base, model=model, data=data, stages=stages, targets=target, max_drop=max_drop,
                                   out=out_dir, seed=seed, amp=amp,
                                   max_metric_drop=metric_drop(max_metric_drop))  # fmt: skip
    if dry_run:
        print(api.dump_recipe(recipe), end="")
        return
    if nproc > 1:
        raise typer.Exit(api.launch(nproc, without_option(argv(), "--nproc"), real_stdout()))
    run_dir = Path(recipe.out or "runs/compress")
    log = lambda m: err.print(m, markup=False, highlight=False)  # noqa: E731
    with epoch_progress(f"distill on {where}") as progress:
        report = api.compress(recipe, run_dir, overwrite=overwrite, device=str(where), amp=amp, log=log,
                              progress=progress, mlflow=mlflow)  # fmt: skip
    if report is None:  # a torchrun rank other than 0: rank 0 reports
        return

    v = report.verdict
    assert v is not None  # a finished run has one

    def render() -> None:
        table = Table(title=f"compress -> {run_dir}")
        b, m = report.baseline, report.metric
        drop = "drop (pts)" if report.unit == "points" else f"{m} worse by"
        for col in ("stage", "params", "MACs", m, drop, "seconds", "cached"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        table.add_row("baseline", f"{b['params']:,}", f"{b['macs'] or 0:,}", f"{b[m]:.4f}", "", "", "")
        for s in report.stages:
            cells = (f"{s.params or 0:,}", f"{s.macs or 0:,}", f"{s.score(m):.4f}", f"{s.score(m + '_drop'):+.4g}")
            table.add_row(s.name, *cells, f"{s.seconds or 0:.1f}", "yes" if s.cached else "")
        out.print(table)
        ci = v.score("drop_ci")
        ci_text = f" [95% CI {ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else ""
        what = "drop" if (v.unit or "points") == "points" else f"{m} worse by"
        gate = f" ({what} {v.score(m + '_drop'):.4g}{ci_text}, budget {v.max_drop})" if v.gated else " (nothing gated)"
        out.print(f"verdict: {v.status}{gate}" + (f"; {v.note}" if v.gated and v.note else ""))
        for validation in report.validation:
            render_validation(validation)

    emit(report, as_json, render)
    if v.status == "fail":
        # Exit 1 after the report, which holds the verdict: with --json, stdout stays one JSON object.
        say(f"edgekit: error: {api.budget_missed(v)} (see {run_dir / 'report.json'})")
        raise typer.Exit(1)
    if v.status == "unverified":
        say(
            f"edgekit: unverified: only the device decides {'; '.join(v.unverified or [])} "
            f"(see {run_dir / 'report.json'})"
        )
        raise typer.Exit(UNVERIFIED)
