"""edgekit recipe: the recipe's JSON Schema, and checking a recipe file before a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import JsonOpt, emit, out

app = typer.Typer(help="Print the recipe schema and check recipe files.", no_args_is_help=True)


@app.command("schema")
def schema_cmd(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the schema to this file (atomically) instead of printing it.")
    ] = None,
) -> None:
    """The recipe's JSON Schema, e.g. for an editor's YAML completion and checks."""
    text = json.dumps(api.recipe_schema(), indent=2) + "\n"
    if out_file is None:
        typer.echo(text, nl=False)  # plain text: rich would wrap and colour a document meant for tools
        return
    api.write_text(out_file, text)
    out.print(f"schema written to {out_file}")


@app.command("check")
def check_cmd(
    file: Annotated[Path, typer.Argument(help="A recipe .yaml file.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate a recipe and print it with every default filled in: exactly what a run would do."""
    recipe = api.load_recipe(file)
    result = {"path": str(file), "recipe": recipe.model_dump(mode="json")}
    emit(result, as_json, lambda: typer.echo(api.dump_recipe(recipe), nl=False))
