"""edgekit search: the Pareto front of deployable configurations for a profile, each with its recipe."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import api
from .common import (
    AmpOpt,
    DeviceOpt,
    JsonOpt,
    MetricDropOpt,
    MlflowOpt,
    RemoteOpt,
    SshConfigOpt,
    emit,
    err,
    metric_drop,
    out,
    say,
)


def seconds_of(text: str) -> float:
    """`90`, `90s`, `30m`, `2h` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m[1]) <= 0:
        raise api.UsageError(f"--time-budget {text!r} is not a duration", "e.g. --time-budget 30m, 90s or 2h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


def search(
    recipe_file: Annotated[
        Path | None, typer.Option("--recipe", help="Recipe YAML: model, data, targets, budgets and its search: space.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model package directory (default: the reference teacher).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name or directory.")] = None,
    target: Annotated[str | None, typer.Option(help="Hardware profile the search is for.")] = None,
    max_drop: Annotated[float | None, typer.Option(min=0.0, help="Accuracy budget in points (on val).")] = None,
    max_metric_drop: MetricDropOpt = None,
    latency: Annotated[
        float | None, typer.Option("--latency-p95-ms", min=0.0, help="p95 latency budget at batch 1, ms.")
    ] = None,
    size: Annotated[float | None, typer.Option("--max-size-mb", min=0.0, help="Artifact size budget, MB.")] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Finished trials the study should hold (default 20).")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time-budget", help="Stop starting trials after this, e.g. 30m.")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Shared study: an SQLAlchemy URL or grpc://HOST:PORT (default: SQLite in --out).")
    ] = None,
    remote: RemoteOpt = None,
    ssh_config: SshConfigOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Search directory (default: runs/search).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler and of every trial.")] = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the search space and stop.")] = False,
    as_json: JsonOpt = False,
    mlflow: MlflowOpt = None,
) -> None:
    """Search per-branch pruning, distillation and INT8 format for the best configurations under the budgets."""
    budget_s = seconds_of(time_budget) if time_budget else None
    where = api.placement(device, amp).device  # an unusable device or precision fails before any work
    base = api.load_recipe(recipe_file) if recipe_file else None
    recipe = api.recipe_from_flags(base, model=model, data=data, targets=target, max_drop=max_drop, seed=seed,
                                   amp=amp, max_metric_drop=metric_drop(max_metric_drop))  # fmt: skip
    budgets = {k: v for k, v in (("latency_p95_ms", latency), ("size_mb", size)) if v is not None}
    recipe = recipe.model_copy(update={"budgets": recipe.budgets.model_copy(update=budgets)})
    if dry_run:  # the recipe's own point only when a recipe file wrote one
        found = api.search_space(recipe, own_point=base is not None)
        emit(found, as_json, lambda: _print_space(found))
        return
    remote_device = api.Remote.parse(remote, config=ssh_config) if remote else None
    options = api.SearchOptions(trials, budget_s, storage, remote_device, device=str(where))
    run_dir = Path(recipe.out or out_dir or "runs/search")
    with trial_progress(trials or (None if budget_s else 20), budget_s) as on_trial:
        result = api.search(recipe, run_dir, options=options, own_point=base is not None,
                            log=lambda m: err.print(m, markup=False, highlight=False), on_trial=on_trial,
                            mlflow=mlflow)  # fmt: skip
    emit(result, as_json, lambda: _print_result(result, run_dir))
    if not result.front:
        say(f"edgekit: error: no trial met the budgets (see {run_dir / 'search.json'})")
        raise typer.Exit(1)


def _print_space(found: dict[str, Any]) -> None:
    table = Table(title=f"search space for {found['profile']}")
    table.add_column("parameter")
    table.add_column("choices")
    for k, v in found["space"].items():
        table.add_row(k, ", ".join(map(str, v)))
    out.print(table)
    out.print(f"budgets: {found['budgets']}")
    if point := found["recipe_point"]:
        out.print(f"the recipe's own point is tried first: {point}")


def _print_result(result: api.SearchRecord, run_dir: Path) -> None:
    unit = "pts" if result.unit == "points" else result.unit
    table = Table(title=f"search -> {run_dir} (drop: {result.metric}, {unit}; latency {result.latency_source})")
    for col in ("trial", "status", "val drop", "test drop", "p95 ms", "MB", "MACs", "config"):
        table.add_column(col, justify="left" if col in ("status", "config") else "right")
    on_front = {p.number for p in result.front}
    for t in result.trials:
        v = t.values or {}
        config = " ".join(f"{k.removeprefix('prune.')}={p}" for k, p in t.params.items())
        status = t.status + (" *front*" if t.number in on_front else "")
        table.add_row(str(t.number), status, f"{v['val_drop']:+.4g}" if v else "-",
                      f"{t.score('test_drop'):+.4g}" if t.number in on_front else "",
                      f"{v['latency_p95_ms']:.3f}" if v else "-", f"{v['size_mb']:.2f}" if v else "-",
                      f"{t.macs:,}" if t.macs is not None else "-", config)  # fmt: skip
    out.print(table)
    for p in result.front:
        out.print(f"front: trial {p.number} -> {run_dir / str(p.recipe)}")
    out.print(f"report: {result.html}")


class trial_progress:
    """Trials done, the fastest feasible point so far and the time left, on stderr."""

    def __init__(self, total: int | None, budget_s: float | None) -> None:
        self.bar = Progress(TextColumn("search"), BarColumn(), TextColumn("{task.completed}/{task.fields[n]} trials"),
                            TextColumn("{task.fields[best]}"), TextColumn("{task.fields[left]}"), TimeElapsedColumn(),
                            console=err)  # fmt: skip
        self.task = self.bar.add_task("search", total=total, n=total or "?", best="", left="")
        self.total, self.budget_s, self.begin = total, budget_s, time.monotonic()

    def __enter__(self) -> Any:
        def on_trial(done: int, target: int | None, best: dict[str, Any] | None) -> None:
            self.bar.start()
            left = (
                f"{max(0, self.budget_s - (time.monotonic() - self.begin)) / 60:.0f} min left" if self.budget_s else ""
            )
            shown = f"best: trial {best['number']}, p95 {best['values']['latency_p95_ms']:.3f} ms" if best else ""
            self.bar.update(self.task, completed=done, best=shown, left=left)

        return on_trial

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
