"""edgekit profiles: the shipped hardware profiles."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .. import api
from .common import JsonOpt, emit, out

app = typer.Typer(help="List and show hardware profiles.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """The shipped profiles, one line each."""
    profiles = [api.resolve_profile(n)[0] for n in api.profile_names()]
    rows = [
        {
            "name": p.name,
            "kind": p.kind,
            "runtime": p.runtime,
            "exports": [f"{e.format}/{e.precision}" for e in p.exports],
            "description": p.description,
        }
        for p in profiles
    ]

    def render() -> None:
        table = Table(title="hardware profiles")
        for col in ("name", "runtime", "exports", "description"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["runtime"], ", ".join(r["exports"]), r["description"])
        out.print(table)

    emit({"profiles": rows}, as_json, render)


@app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Profile name, alias or .yaml file.")], as_json: JsonOpt = False
) -> None:
    """Every field of one profile."""
    profile, resolution = api.resolve_profile(name)
    data = profile.model_dump(mode="json")

    def render() -> None:
        if resolution:
            out.print(f"[dim]{resolution}[/dim]")
        table = Table(title=profile.name, show_header=False)
        for key, value in data.items():
            table.add_row(key, str(value))
        out.print(table)

    emit(data, as_json, render)
