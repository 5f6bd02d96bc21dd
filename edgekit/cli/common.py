"""What every verb shares: output (rich for people, one JSON object for machines) and options."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import api

EpochProgress = Callable[[int, int, float, float, str], None]  # (epoch, epochs, loss, val score, its metric)

# Where output goes to a log or a pipe, rich would cut every table to 80 columns ("│ ope… │ in… │"): there it prints
# at full width instead, unless COLUMNS sets one.
FULL_WIDTH = 1000


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=FULL_WIDTH if piped else None)


out = console()
err = console(stderr=True)


def say(line: str) -> None:
    """A verdict's or an error's one line on stderr, never wrapped, however many artifacts it names."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing, non-empty output directory.")]
MlflowOpt = Annotated[
    str | None,
    typer.Option("--mlflow", metavar="URI", help="Log this command as an MLflow run there (env EDGEKIT_MLFLOW_URI).",
                 show_default=False),
]  # fmt: skip


DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Torch device for training: cpu, cuda, cuda:N, mps (default: the best).")
]
AmpOpt = Annotated[
    str | None, typer.Option("--amp", help="Mixed-precision training: bf16 or fp16, where the device has it.")
]
MetricDropOpt = Annotated[
    str | None,
    typer.Option("--max-metric-drop", help="Gate one metric of the model's task in its own unit, e.g. mae=0.05."),
]
AgainstTeacherOpt = Annotated[
    bool,
    typer.Option(
        "--against-teacher",
        help="Gate agreement with the float model's outputs instead of labels (the "
        "default for data without labels): top-1 agreement, or relative error for regression.",
    ),
]
RemoteOpt = Annotated[str | None, typer.Option("--remote", help="Run it on this device over ssh: user@host[:port].")]
SshConfigOpt = Annotated[Path | None, typer.Option("--ssh-config", help="ssh_config file (default: your own).")]
RemoteEdgekitOpt = Annotated[
    str, typer.Option("--remote-edgekit", help="The edgekit command on the device, e.g. ~/venv/bin/edgekit.")
]
RemotePythonOpt = Annotated[
    str,
    typer.Option("--remote-python", help="The device's Python, which runs EdgeKit's agent where EdgeKit is not there."),
]
RemoteTimeoutOpt = Annotated[
    float, typer.Option("--remote-timeout", min=1, help="Seconds the remote command may take.")
]
FleetOpt = Annotated[
    Path | None, typer.Option("--fleet", help="A fleet.yaml: every device runs the artifacts built for its profile.")
]
FleetOutOpt = Annotated[
    Path | None, typer.Option("--out", help="With --fleet: write fleet.json and report.html into this directory.")
]


_argv: list[str] = []  # this command's arguments, for relaunching it under torchrun


def set_argv(args: list[str]) -> None:
    _argv[:] = args


def argv() -> list[str]:
    return list(_argv)


def without_option(args: list[str], name: str) -> list[str]:
    """`args` less `name VALUE` and `name=VALUE`."""
    kept, skip = [], False
    for a in args:
        if skip or a.startswith(f"{name}="):
            skip = False
        elif a == name:
            skip = True
        else:
            kept.append(a)
    return kept


_json_fd: list[int] = []  # the real stdout while library chatter is redirected to stderr


@contextmanager
def stdout_for_json(active: bool) -> Iterator[None]:
    """With --json, point fd 1 at stderr while the verb runs: runtimes and quantizers print progress
    (some from C++), and stdout must hold exactly one JSON object."""
    if not active:
        yield
        return
    sys.stdout.flush()
    _json_fd.append(os.dup(1))
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        fd = _json_fd.pop()
        os.dup2(fd, 1)
        os.close(fd)


def real_stdout() -> int | None:
    """The descriptor of the command's stdout while --json points fd 1 at stderr (None: fd 1 is stdout)."""
    return _json_fd[-1] if _json_fd else None


def emit(result: api.Record | dict[str, Any], as_json: bool, render: Callable[[], None]) -> None:
    """One JSON object on stdout (a record as written), or the rendered tables."""
    if as_json:
        text = json.dumps(result.dump() if isinstance(result, api.Record) else result) + "\n"
        if (fd := real_stdout()) is not None:
            os.write(fd, text.encode())
        else:
            print(text, end="")
    else:
        render()


@contextmanager
def epoch_progress(description: str) -> Iterator[EpochProgress]:
    """A progress bar on stderr for training loops: loss and the validation score per epoch (accuracy, or the
    metric the run gates)."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}  val {task.fields[metric]} {task.fields[val]:.4g}"),
        TimeElapsedColumn(),
        console=err, transient=False,
    )  # fmt: skip
    task = bar.add_task(description, total=None, loss=float("nan"), val=float("nan"), metric="")

    def update(epoch: int, total: int, loss: float, val: float, metric: str) -> None:
        bar.start()  # only once the first epoch ends, so input errors stay a single line
        bar.update(task, completed=epoch, total=total, loss=loss, val=val, metric=metric)

    try:
        yield update
    finally:
        if bar.live.is_started:  # a bar never shown prints nothing, so an early error stays one line
            bar.stop()


def subsets_table(title: str, subsets: dict[str, dict[str, float]]) -> Table:
    """A task's metrics (the columns, its primary first) per modality subset (the rows)."""
    table = Table(title=title)
    table.add_column("modalities")
    metrics = list(next(iter(subsets.values()), {}))
    for name in metrics:
        table.add_column(METRIC_NAMES.get(name, name), justify="right")
    for name, s in subsets.items():
        table.add_row(name, *(f"{s[m]:.3f}" for m in metrics))
    return table


METRIC_NAMES = {"macro_f1": "macro-F1", "map": "mAP", "micro_f1": "micro-F1", "mae": "MAE", "rmse": "RMSE",
                "pearson_r": "Pearson r", "ccc": "CCC", "recall_at_1": "recall@1",
                "recall_at_5": "recall@5"}  # fmt: skip


def fleet_table(run: dict[str, Any], title: str) -> Table:
    """A fleet run for people: one row per device and artifact, its error in place of numbers."""
    table = Table(title=title)
    for col in ("device", "profile", "artifact", "status", "p50 ms", "p95 ms", "error"):
        table.add_column(col, justify="right" if col.endswith("ms") else "left")
    for r in run["rows"]:
        ms = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("p50_ms", "p95_ms")]
        where = "/".join(Path(r["artifact"]).parts[-2:])  # its export directory too: many are named onnx-fp32
        table.add_row(r["device"] or "-", r["profile"] or "-", where, r["status"], *ms, r.get("error") or "")
    return table


def fleet_checks(fleet: Path | None, remote: str | None, out_dir: Path | None) -> None:
    """--fleet excludes --remote; --out is where a fleet run is written, so it needs --fleet."""
    if fleet and remote:
        raise api.UsageError("--fleet and --remote cannot be combined",
                             "a fleet file names each device's ssh destination")  # fmt: skip
    if out_dir and not fleet:
        raise api.UsageError("--out is for a fleet run", "pass --fleet fleet.yaml, or redirect --json output")


def metric_drop(flag: str | None) -> dict[str, float] | None:
    """`--max-metric-drop mae=0.05` as a budget: {metric: how much worse it may get}."""
    if flag is None:
        return None
    name, sep, value = flag.partition("=")
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not sep or not name or limit < 0:
        raise api.UsageError(f"--max-metric-drop {flag} is not METRIC=LIMIT", "e.g. --max-metric-drop mae=0.05")
    return {name: limit}
