"""edgekit report: render report.html from a run directory's report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, emit, out


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `edgekit compress`.")],
    as_json: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report.html: recipe, lineage, validation, sensitivity, Pareto plot, op breakdowns."""
    from ..report import render

    page = render(run_dir)
    emit({"report": str(page)}, as_json, lambda: out.print(f"report written to {page}"))
