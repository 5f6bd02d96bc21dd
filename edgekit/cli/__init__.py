"""The `edgekit` command. Each verb lives in its own module; this one wires them and turns errors
into one line on stderr plus an exit code (2 usage/input, 1 failure), tracebacks only with --debug."""

from __future__ import annotations

import errno
import json
import sys
import traceback
from typing import Annotated

import typer
from typer._click.exceptions import UsageError as ClickUsageError  # typer 0.29 vendors click

from ..api import EdgeKitError, __version__, set_verbose
from . import (
    build,
    compress,
    data,
    evaluate,
    export,
    profile,
    profiles,
    recipe,
    report,
    schema,
    search,
    train,
    validate,
)
from .common import set_argv, stdout_for_json

app = typer.Typer(
    name="edgekit",
    help="Compress, export and prove multimodal fusion models on edge hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("eval")(evaluate.eval_cmd)
app.command("compress")(compress.compress)
app.command("search")(search.search)
app.command("export")(export.export)
app.command("profile")(profile.profile)
app.command("validate")(validate.validate)
app.command("report")(report.report)
app.add_typer(profiles.app, name="profiles")
app.command("build")(build.build)
app.add_typer(recipe.app, name="recipe")
app.command("schema")(schema.schema)


def _version(value: bool) -> None:
    if value:
        print(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors (any position).")] = False,
) -> None:
    """EdgeKit: compress, export and prove multimodal fusion models on edge hardware."""


# A write that failed for lack of room or permission: the disk filled, a quota, a size limit, a read-only mount.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _fail(message: str, code: int, as_json: bool, details: dict | None = None) -> int:
    """One line on stderr; with --json, also one JSON object on stdout, so a script reads failures too."""
    print(f"edgekit: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_code": code, **({"details": details} if details else {})}))
    return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    set_argv(args + (["--debug"] if debug else []))
    set_verbose(debug)
    as_json = "--json" in args
    try:
        with stdout_for_json(as_json):
            code = app(args=args, prog_name="edgekit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except ClickUsageError as e:  # an unknown option, a missing one, a value out of range: one line, not a panel
        verb = e.ctx.command_path if e.ctx else "edgekit"
        return _fail(f"{e.format_message()} (see '{verb} --help')", 2, as_json)
    except typer.Abort:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except EdgeKitError as e:
        if debug:
            traceback.print_exc()
        return _fail(str(e), e.exit_code, as_json, e.details)
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        if debug:
            traceback.print_exc()
        where = e.filename2 or e.filename or "the output"  # a rename's target is the file being written
        return _fail(f"cannot write {where}: {e.strerror} (free space or choose another --out; nothing "
                     "half-written was kept)", 1, as_json)  # fmt: skip
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        return _fail(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", 1, as_json)


def run() -> None:
    sys.exit(main())
