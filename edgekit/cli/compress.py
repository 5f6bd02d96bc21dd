"""edgekit compress: build a recipe from a file and/or flags, then run it into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import tracking
from ..compress import compress as run_compress
from ..devices import is_main, launch, placement, process_group
from ..recipe import dump_recipe, load_recipe, recipe_from_flags
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
    where = placement(device, amp).device  # an unusable device or precision fails before any work
    base = load_recipe(recipe_file) if recipe_file else None
    recipe = recipe_from_flags(base, model=model, data=data, stages=stages, targets=target, max_drop=max_drop,
                               out=out_dir, seed=seed, amp=amp,
                               max_metric_drop=metric_drop(max_metric_drop))  # fmt: skip
    if dry_run:
        print(dump_recipe(recipe), end="")
        return
    if nproc > 1:
        raise typer.Exit(launch(nproc, without_option(argv(), "--nproc"), real_stdout()))
    run_dir = Path(recipe.out or "runs/compress")
    with process_group(where), epoch_progress(f"distill on {where}") as progress:
        if not is_main():  # a torchrun rank other than 0 trains its share; rank 0 logs, writes and reports
            run_compress(recipe, run_dir, overwrite, device=str(where))
            return
        with (
            tracking.start("compress", mlflow, str(run_dir)) as run,
            tracking.Compress(run, recipe, run_dir) as tracked,
        ):
            log = lambda m: err.print(m, markup=False, highlight=False)  # noqa: E731
            report = run_compress(recipe, run_dir, overwrite, log, tracked.epochs(progress), tracked.stage, str(where))
            tracked.report(report, run_dir)

    def render() -> None:
        table = Table(title=f"compress -> {run_dir}")
        b, m = report["baseline"], report.get("metric", "accuracy")
        drop = "drop (pts)" if report.get("unit", "points") == "points" else f"{m} worse by"
        for col in ("stage", "params", "MACs", m, drop, "seconds", "cached"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        table.add_row("baseline", f"{b['params']:,}", f"{b['macs'] or 0:,}", f"{b[m]:.4f}", "", "", "")
        for s in report["stages"]:
            cells = (f"{s['params']:,}", f"{s['macs'] or 0:,}", f"{s[m]:.4f}", f"{s[m + '_drop']:+.4g}")
            table.add_row(s["name"], *cells, f"{s['seconds']:.1f}", "yes" if s["cached"] else "")
        out.print(table)
        v = report["verdict"]
        ci = f" [95% CI {v['drop_ci'][0]:+.4g}, {v['drop_ci'][1]:+.4g}]" if "drop_ci" in v else ""
        what = "drop" if v.get("unit", "points") == "points" else f"{m} worse by"
        gate = f" ({what} {v[m + '_drop']:.4g}{ci}, budget {v['max_drop']})" if v["gated"] else " (nothing gated)"
        out.print(f"verdict: {v['status']}{gate}" + (f"; {v['note']}" if v.get("gated") and "note" in v else ""))
        for validation in report.get("validation", []):
            render_validation(validation)

    emit(report, as_json, render)
    if report["verdict"]["status"] == "fail":
        # Exit 1 after the report, which holds the verdict: with --json, stdout stays one JSON object.
        err.print(f"edgekit: error: {tracking.budget_missed(report['verdict'])} (see {run_dir / 'report.json'})",
                  markup=False)  # fmt: skip
        raise typer.Exit(1)
    if report["verdict"]["status"] == "unverified":
        err.print(f"edgekit: unverified: only the device decides {'; '.join(report['verdict']['unverified'])} "
                  f"(see {run_dir / 'report.json'})", markup=False)  # fmt: skip
        raise typer.Exit(UNVERIFIED)
