"""edgekit report: render report.html from a run directory's report.json, or a fleet run's fleet.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import JsonOpt, emit, out


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `edgekit compress`, or a fleet run's --out.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report.html: recipe, lineage, validation, sensitivity, Pareto plot, op breakdowns; for a
    fleet run's directory (fleet.json, no report.json), its devices and rows."""
    fleet = (run_dir / "fleet.json").is_file() and not (run_dir / "report.json").is_file()
    page = api.render_fleet(run_dir) if fleet else api.render_report(run_dir)
    emit({"report": str(page)}, as_json, lambda: out.print(f"report written to {page}"))
