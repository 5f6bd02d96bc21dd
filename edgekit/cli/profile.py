"""edgekit profile: latency, throughput, memory and an op breakdown of an artifact in its own runtime,
on this machine, with --remote on a device over ssh, or with --fleet on every device of a fleet at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .. import api
from .common import (
    FleetOpt,
    FleetOutOpt,
    JsonOpt,
    RemoteEdgekitOpt,
    RemoteOpt,
    RemotePythonOpt,
    RemoteTimeoutOpt,
    SshConfigOpt,
    emit,
    err,
    fleet_checks,
    fleet_table,
    out,
)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma list of integers", param_hint=what) from None


def parse_shapes(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise typer.BadParameter(f"'{item}' is not name=size", param_hint="--shape")
        dims[name.strip()] = int(value)
    return dims


def profile(
    artifacts: Annotated[
        list[Path],
        typer.Argument(help="An artifact directory (or a model package: torch eager); with --fleet, several."),
    ],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma separated.")] = "1",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls before timing each batch size.")] = 10,
    runs: Annotated[int | None, typer.Option(min=1, help="Timed calls per batch size (instead of --duration).")] = None,
    duration: Annotated[float, typer.Option(min=0.01, help="Seconds of timed calls per batch size.")] = 2.0,
    threads: Annotated[int | None, typer.Option(min=1, help="Runtime threads (default: the runtime's).")] = None,
    shape: Annotated[list[str] | None, typer.Option(help="A symbolic dim's size, e.g. seq=16; repeatable.")] = None,
    ops: Annotated[bool, typer.Option(help="Per-operator breakdown where the runtime offers one.")] = True,
    remote: RemoteOpt = None,
    ssh_config: SshConfigOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    remote_python: RemotePythonOpt = "python3",
    remote_timeout: RemoteTimeoutOpt = 600.0,
    fleet: FleetOpt = None,
    out_dir: FleetOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency percentiles, throughput, peak RSS and slowest ops of an artifact, here or over ssh.

    With --remote, the artifact is copied to a temporary directory on the device and removed afterwards; EdgeKit
    runs it there where it is installed, else EdgeKit's agent with the device's own Python (3.8+), numpy and
    runtime, or trtexec. With --fleet, each device of the fleet file profiles the artifacts built for its
    profile, all devices at once; exit code 1 when any device or artifact has no result."""
    fleet_checks(fleet, remote, out_dir)
    settings = api.Settings(
        parse_ints(batch, "--batch"), warmup, runs, duration, threads, parse_shapes(shape or []), ops
    )
    if fleet:
        run = api.profile_on_fleet(fleet, artifacts, settings, edgekit=remote_edgekit, ssh_config=ssh_config,
                                   timeout=remote_timeout, out=out_dir,
                                   log=lambda m: err.print(f"[dim]{m}[/dim]"))  # fmt: skip
        emit(run, as_json, lambda: out.print(fleet_table(run, f"fleet {fleet.name}: {run['status']}")))
        if run["status"] != "ok":
            raise typer.Exit(1)
        return
    if len(artifacts) != 1:
        raise api.UsageError(
            f"{len(artifacts)} artifacts given: profile takes one", "or several with --fleet fleet.yaml"
        )
    device = None
    if remote:
        device = api.Remote.parse(remote, config=ssh_config, edgekit=remote_edgekit, python=remote_python,
                                  timeout=remote_timeout)  # fmt: skip
    result = api.profile(artifacts[0], settings, device)
    emit(result, as_json, lambda: render(result))


def render(r: dict[str, Any]) -> None:
    a, host = r["artifact"], r["host"]
    title = f"{Path(a['path']).name}: {a['format']} {a['precision']} on {r['runtime']}"
    table = Table(title=title)
    for col in ("batch", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean ± std", "samples/s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for row in r["results"]:
        lat = row["latency_ms"]
        table.add_row(
            str(row["batch"]),
            *(f"{lat[k]:.3f}" for k in ("p50", "p90", "p95", "p99")),
            f"{lat['mean']:.3f} ± {lat['std']:.3f}",
            f"{row['throughput']:.1f}",
            f"{row['peak_rss_mb']:.0f}",
        )
    out.print(table)
    out.print(
        f"load {r['load_s'] * 1e3:.1f} ms, first inference {r['first_inference_ms']:.1f} ms; "
        f"host {host['cpu']} ({host['usable_cores']} cores, {' '.join(host['isa'][-4:])})"
    )
    energy = r["results"][0].get("energy")
    if energy and energy.get("energy_mj") is not None:
        how = f"{energy['mean_power_mw']:.0f} mW mean {energy['rail']}, {energy['samples']} tegrastats samples"
        out.print(f"energy at batch {r['results'][0]['batch']}: {energy['energy_mj']:.3f} mJ per inference ({how})")
    elif energy:
        out.print(f"energy: not measured ({energy['why']})")
    if r.get("ops"):
        ops = Table(title=f"slowest op types at batch {r['results'][0]['batch']} ({r['ops']['runtime']} profiler)")
        for col in ("op type", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op type" else "right")
        for o in r["ops"]["by_op_type"][:8]:
            ops.add_row(o["op"], str(o["nodes"]), f"{o['ms']:.3f}", f"{100 * o['share']:.1f}%")
        out.print(ops)
