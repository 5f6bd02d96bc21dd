"""edgekit validate: artifacts against a hardware profile's budgets, one row each, exit 1 if any fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .. import api
from .common import (
    AgainstTeacherOpt,
    FleetOpt,
    FleetOutOpt,
    JsonOpt,
    MetricDropOpt,
    MlflowOpt,
    RemoteEdgekitOpt,
    RemoteOpt,
    RemotePythonOpt,
    RemoteTimeoutOpt,
    SshConfigOpt,
    emit,
    err,
    fleet_checks,
    fleet_table,
    metric_drop,
    out,
    say,
)

STATUS = {"pass": "✅ pass", "fail": "❎ fail", "unverified": "❔ unverified", "error": "❌ error"}
UNVERIFIED = 3  # exit code: nothing failed, but a budget only the device can decide was not decided


def validate(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifact directories written by `edgekit export`.")],
    profile: Annotated[
        str | None,
        typer.Option("--profile", "--target", help="Hardware profile name, alias or .yaml (not with --fleet)."),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="FP32 model package the drop is measured against (default: the one exported from, "
            "when EdgeKit built it)."
        ),
    ] = None,
    measurements: Annotated[
        list[Path] | None,
        typer.Option(
            help="`edgekit profile --json` output from the device, or trtexec's --exportTimes (and "
            "--exportProfile) JSON; repeatable."
        ),
    ] = None,
    device_facts: Annotated[
        Path | None,
        typer.Option(help="With trtexec files: the device's facts (`python3 edgekit_agent.py facts` there)."),
    ] = None,
    device_fact: Annotated[
        list[str] | None,
        typer.Option(help="With trtexec files: a device fact, e.g. device_model='Jetson Orin Nano'; repeatable."),
    ] = None,
    data: Annotated[str, typer.Option(help="Dataset whose test split measures accuracy.")] = "avdigits",
    max_drop: Annotated[float | None, typer.Option(min=0, help="Override the profile's accuracy budget.")] = None,
    max_metric_drop: MetricDropOpt = None,
    against_teacher: AgainstTeacherOpt = False,
    latency_p95_ms: Annotated[float | None, typer.Option(min=0, help="Override the p95 latency budget.")] = None,
    max_size_mb: Annotated[float | None, typer.Option(min=0, help="Override the size budget.")] = None,
    max_peak_ram_mb: Annotated[float | None, typer.Option(min=0, help="Override the peak RAM budget.")] = None,
    max_subset_drop: Annotated[
        float | None, typer.Option(min=0, help="Largest drop with modalities missing, for every subset (points).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Runtime threads (default: the profile's).")] = None,
    estimate: Annotated[bool, typer.Option(help="Estimate latency even where it could be measured here.")] = False,
    report: Annotated[
        Path | None, typer.Option(help="A compress run directory: record this validation in its report.json.")
    ] = None,
    remote: RemoteOpt = None,
    ssh_config: SshConfigOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    remote_python: RemotePythonOpt = "python3",
    remote_timeout: RemoteTimeoutOpt = 600.0,
    fleet: FleetOpt = None,
    out_dir: FleetOutOpt = None,
    as_json: JsonOpt = False,
    mlflow: MlflowOpt = None,
) -> None:
    """Prove artifacts against a profile's budgets: accuracy, latency (measured or estimated), size, RAM.

    Exit code 1 when any artifact fails a budget or cannot be run, 3 when none fails but a budget is unverified
    (an estimate's interval straddles it, or latency was measured on a host that is not the device).

    With --remote, the device measures latency, energy (tegrastats) and accuracy: it runs the test split's inputs
    and EdgeKit scores its outputs here; the device must be the profile's (its identity), and needs only its own
    Python 3.8+, numpy and the runtime (or trtexec), no EdgeKit.

    With --fleet, each device of the fleet file measures the artifacts built for its profile (all devices at once)
    and each is validated against its device's profile, accuracy measured here."""
    fleet_checks(fleet, remote, out_dir)
    if remote and (measurements or estimate):
        raise api.UsageError("--remote takes no --measurements or --estimate", "the device measures with --remote")
    if fleet and (profile or measurements or report or estimate):
        raise api.UsageError("--fleet takes no --profile, --measurements, --report or --estimate",
                         "each device's profile and measurements come from the fleet")  # fmt: skip
    if not fleet and not profile:
        raise api.UsageError("validate needs --profile", "e.g. --profile x86, or --fleet fleet.yaml")
    budgets = {"max_accuracy_drop": max_drop, "max_metric_drop": metric_drop(max_metric_drop),
               "latency_p95_ms": latency_p95_ms, "max_size_mb": max_size_mb,
               "max_peak_ram_mb": max_peak_ram_mb, "max_subset_drop": max_subset_drop}  # fmt: skip
    device = None
    if remote:
        device = api.Remote.parse(remote, config=ssh_config, edgekit=remote_edgekit, python=remote_python,
                                  timeout=remote_timeout)  # fmt: skip
    facts = read_facts(device_facts, device_fact or [])
    options = api.ValidateOptions(data=data, threads=threads, estimate_only=estimate, remote=device,
                                  device_facts=facts, against_teacher=against_teacher)  # fmt: skip
    log = lambda m: err.print(f"[dim]{m}[/dim]")  # noqa: E731
    if fleet:
        fleet_run = api.validate_on_fleet(fleet, artifacts, baseline, budgets=budgets, options=options, out=out_dir,
                                          log=log, mlflow=mlflow)  # fmt: skip
        title = f"fleet {fleet.name}: {fleet_run['verdict']}"
        emit(fleet_run, as_json, lambda: out.print(fleet_table(fleet_run, title)))
        if fleet_run["verdict"] != "pass":
            raise typer.Exit(UNVERIFIED if fleet_run["verdict"] == "unverified" else 1)
        return
    assert profile is not None
    result = api.validate(artifacts, profile, baseline, measurements=measurements or [], budgets=budgets,
                          options=options, report=report, log=log, mlflow=mlflow)  # fmt: skip
    emit(result, as_json, lambda: render(result))
    exit_on_verdict(result)


def exit_on_verdict(result: api.Validation, where: Path | None = None) -> None:
    """After the result is printed: a failed or unverified validation says why on stderr in one line, as compress
    says its verdict (with --json, stdout stays one JSON object), and exits 1 or 3."""
    verdict = result.verdict
    if verdict == "pass":
        return
    parts = []
    for row in result.rows:
        name = Path(row.artifact).name
        if row.status == "error" and verdict == "fail":
            parts.append(f"{name}: {row.error}")
        for c in row.checks:
            if c.status == verdict:  # a failed value is over its limit; an unverified one was not decided here
                value = "" if c.value is None else f" {c.value:.4g} {'>' if verdict == 'fail' else 'vs'} {c.limit}"
                parts.append(f"{name}: {c.budget}{value}")
    see = f" (see {where})" if where else ""
    if verdict == "fail":
        say(f"edgekit: error: budget missed: {'; '.join(parts)}{see}")
        raise typer.Exit(1)
    say(f"edgekit: unverified: only the device decides {'; '.join(parts)}{see}")
    raise typer.Exit(UNVERIFIED)


def read_facts(path: Path | None, pairs: list[str]) -> dict[str, Any] | None:
    """The device's facts for trtexec files: the agent's `facts` JSON, and name=value flags over it."""
    import json

    facts: dict[str, Any] = {}
    if path is not None:
        try:
            facts = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise api.UsageError(f"--device-facts {path} is not readable JSON ({type(e).__name__})",
                             "write it on the device: python3 edgekit_agent.py facts > facts.json") from e  # fmt: skip
        if not isinstance(facts, dict):
            raise api.UsageError(f"--device-facts {path} is not a JSON object", "pass the agent's `facts` output")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise api.UsageError(f"--device-fact '{pair}' is not name=value", "e.g. --device-fact l4t=36.4.3")
        facts[name.strip()] = int(value) if name.strip() == "cpus" and value.isdigit() else value
    return facts or None


def cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(r: api.Validation) -> None:
    out.print(validation_table(r))
    here = [x for x in r.rows if x.measurements == "here" or (x.accuracy_source or "").startswith("proxy")]
    if not r.the_device and here:
        out.print(f"this host is not {r.profile}'s device ({r.not_the_device}): what was measured here is a proxy")
    if not r.gated:
        out.print(f"profile {r.profile} sets no budgets: the numbers are reported, nothing was gated")
    for row in r.rows:
        if row.status == "error":
            out.print(f"❌ {row.artifact}: {row.error}")
        name = Path(row.artifact).name
        if row.subsets:
            cells = "; ".join(subset_cell(k, v, row.metric or "accuracy") for k, v in row.subsets.items())
            out.print(f"  {name}, modalities missing: {cells}")
        for c in row.checks:
            why = f" ({c.why})" if c.why else ""
            if c.status == "fail":
                out.print(f"❎ {name}: {c.budget} {c.value:.3f} > {c.limit}{why}")
            elif c.status == "unverified":
                out.print(f"❔ {name}: {c.budget} unverified, only the device decides{why}")
            if c.note:
                out.print(f"⚠ {name}: {c.budget} {c.note}")
        if row.unchecked:
            out.print(f"⚠ {name}: not checked here, no value: {', '.join(row.unchecked)}")
    out.print(f"verdict: {r.verdict}")


def subset_cell(name: str, s: dict[str, Any], metric: str = "accuracy") -> str:
    drop = f" ({s['drop']:+.4g} {interval(s['drop_ci'], '+.4g')})" if "drop" in s else ""
    return f"{name} only {metric} {s[metric]:.4f}{drop}"


def interval(ci: list[float] | None, spec: str) -> str:
    return "-" if not ci else f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def validation_table(r: api.Validation) -> Table:
    base, gate = r.baseline, r.gate
    metric = gate["metric"]
    title = f"validation against {r.profile} on {r.split}" + (
        f" (baseline {metric} {base[metric]:.4f}, n={base['samples']})" if base else ""
    )
    table = Table(title=title)
    drop = "drop" if gate["unit"] == "points" else f"{metric} worse by"
    for col in ("artifact", "format", "precision", "status", "size MB", metric, "95% CI", drop, "drop 95% CI",
                "p50 ms", "p95 ms", "latency", "mJ"):  # fmt: skip
        numeric = col in ("size MB", metric, drop, "p50 ms", "p95 ms", "mJ")
        table.add_column(col, justify="right" if numeric else "left")
    for row in r.rows:
        source = row.accuracy_source or ""
        proxy = " (proxy)" if source.startswith("proxy") else " (device)" if source.startswith("device:") else ""
        table.add_row(
            Path(row.artifact).name, row.format or "?", row.precision or "?", STATUS[row.status],
            cell(row.size_mb, ".2f"), cell(row.score(metric), ".4f") + proxy,
            interval(row.score("accuracy_ci"), ".4f"), cell(row.score(f"{metric}_drop"), "+.4g"),
            interval(row.score("drop_ci"), "+.4g"),
            cell(row.p50_ms, ".3f"), cell(row.p95_ms, ".3f"), row.latency_source or "-",
            cell((row.energy or {}).get("energy_mj"), ".2f"),
        )  # fmt: skip
    return table
