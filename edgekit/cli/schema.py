"""edgekit schema: the JSON Schema of a record EdgeKit writes, or of the recipe."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import out

Name = StrEnum("Name", {n: n for n in ("recipe", *api.RECORDS)})


def schema(
    name: Annotated[Name, typer.Argument(help="report (compress), validation, search, export, or recipe.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the schema to this file (atomically) instead of printing it.")
    ] = None,
) -> None:
    """The JSON Schema of report.json, a validation, search.json, export.json or the recipe: what a later EdgeKit
    reads (each record names its schema_version)."""
    text = api.schema_text(name.value)
    if out_file is None:
        typer.echo(text, nl=False)  # plain text: rich would wrap and colour a document meant for tools
        return
    api.write_text(out_file, text)
    out.print(f"schema written to {out_file}")
