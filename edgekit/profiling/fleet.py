"""A device fleet: a YAML file naming devices (an ssh destination and a hardware profile each), and a run that
has every device measure the artifacts built for its profile, the devices at once, each device's artifacts one
after another (two runs on one device would time each other).

Each device's work has a deadline (its `timeout`): every ssh command gets what is left of it. A device that
fails (unreachable, authentication, a crash, the deadline) becomes error rows of one line each; the other
devices' rows are kept whole. An artifact that no device's profile matches is a row of its own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from ..artifact import load_artifact
from ..errors import EdgeKitError, UsageError
from ..hardware import HardwareProfile, resolve_profile
from ..schema_errors import dotted, first_error, load_yaml, one_line
from .local import Settings
from .remote import Remote, profile_remote

GUARD_S = 120.0  # past the longest device timeout: a device not done by then is an error row
Row = dict[str, Any]


class Device(pydantic.BaseModel):
    """One device of a fleet file."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ssh: str  # user@host[:port]
    profile: str  # a shipped profile, an alias or a .yaml path (relative to the fleet file)
    ssh_config: Path | None = None  # relative to the fleet file; default --ssh-config, else the user's own
    edgekit: str | None = None  # the EdgeKit command there, e.g. ~/venv/bin/edgekit; default --remote-edgekit
    python: str | None = None  # the Python that runs EdgeKit's agent where EdgeKit is not there; default python3
    env: dict[str, str] = {}  # variables EdgeKit runs with there, e.g. PYTHONPATH or PATH
    timeout: pydantic.PositiveFloat | None = None  # seconds for all of this device's work; default --remote-timeout

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [k for k in env if not k.isidentifier() or not k.isascii()]
        if bad:
            raise ValueError(f"'{bad[0]}' is not an environment variable name")
        return env


class FleetFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    devices: tuple[Device, ...] = pydantic.Field(min_length=1)


@dataclass(frozen=True)
class FleetDevice:
    name: str
    profile: str  # as the fleet file names it (a .yaml path made absolute): what `validate` resolves again
    hardware: HardwareProfile  # that profile, resolved
    remote: Remote


@dataclass(frozen=True)
class Fleet:
    path: Path
    devices: tuple[FleetDevice, ...]


def load_fleet(path: Path, edgekit: str = "edgekit", config: Path | None = None, timeout: float = 600.0) -> Fleet:
    """A fleet file, checked before any device is contacted; the other arguments for devices that set none."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"fleet file not found: {one_line(str(path))}", "pass a fleet.yaml (docs/profiling.md#fleet)")
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"fleet {path} cannot be read: {str(e).splitlines()[0]}") from e
    try:
        spec = FleetFile.model_validate(data)
    except pydantic.ValidationError as e:
        err = first_error(e, FleetFile)
        raise UsageError(f"fleet {path}: field '{dotted(err.loc) or '(top level)'}' {err.problem}",
                         err.hint or "see docs/profiling.md#fleet for the fields") from e  # fmt: skip
    names = [d.name for d in spec.devices]
    if twice := next((n for n in names if names.count(n) > 1), None):
        raise UsageError(f"fleet {path} names device '{twice}' twice", "give every device its own name")
    devices = []
    for d in spec.devices:
        here = lambda p: p if p.is_absolute() else path.parent / p  # noqa: E731
        profile = d.profile
        if profile.endswith((".yaml", ".yml")):
            profile = str(here(Path(profile).expanduser()))
        ssh_config = here(d.ssh_config.expanduser()) if d.ssh_config else config
        try:
            hardware = resolve_profile(profile)[0]
            remote = Remote.parse(d.ssh, config=ssh_config, edgekit=d.edgekit or edgekit, env=tuple(d.env.items()),
                                  python=d.python or "python3", timeout=d.timeout or timeout)  # fmt: skip
        except UsageError as e:
            raise UsageError(f"fleet {path}, device {d.name}: {e.message}", e.hint) from e
        devices.append(FleetDevice(d.name, profile, hardware, remote))
    return Fleet(path, tuple(devices))


def built_for(path: Path) -> str:
    """The profile an artifact was exported for, from its manifest."""
    profile = load_artifact(path, verify=False).meta.get("profile")
    if not isinstance(profile, str):
        raise UsageError(f"{path} records no profile it was built for", "export it with edgekit export --target")
    return profile


def assign(fleet: Fleet, artifacts: Sequence[Path]) -> tuple[dict[str, list[Path]], list[Row]]:
    """Each device's artifacts (those built for its profile), and a row for every artifact no device takes."""
    work: dict[str, list[Path]] = {d.name: [] for d in fleet.devices}
    left: list[Row] = []
    for path in artifacts:
        row: Row = {"device": None, "ssh": None, "artifact": str(path)}
        try:
            profile = built_for(Path(path))
        except EdgeKitError as e:
            left.append({**row, "profile": None, "status": "error", "error": str(e)})
            continue
        takers = [d for d in fleet.devices if d.hardware.name == profile]
        for d in takers:
            work[d.name].append(Path(path))
        if not takers:
            left.append({**row, "profile": profile, "status": "no-device",
                         "error": f"no device in the fleet has profile {profile}"})  # fmt: skip
    return work, left


def summary(result: dict[str, Any]) -> Row:
    """What a fleet row shows of an `edgekit profile` result: its batch-1 (else first) percentiles."""
    r = next((x for x in result["results"] if x["batch"] == 1), result["results"][0])
    a = result["artifact"]
    return {"format": a["format"], "precision": a["precision"], "sha256": a["sha256"], "runtime": result["runtime"],
            "batch": r["batch"], "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"]}  # fmt: skip


def who(device: FleetDevice) -> Row:
    return {"device": device.name, "ssh": device.remote.name, "profile": device.hardware.name}


def device_row(device: FleetDevice, path: Path, **fields: Any) -> Row:
    return {**who(device), "artifact": str(path), **fields}


def run_device(device: FleetDevice, artifacts: Sequence[Path], settings: Settings) -> list[Row]:
    """Profile `artifacts` on one device, one after another, within the device's deadline; a row each."""
    budget = device.remote.timeout
    deadline = time.monotonic() + budget
    rows = []
    for path in artifacts:
        row = device_row(device, path, started=time.time())
        try:
            left = deadline - time.monotonic()
            if left < 1:
                raise EdgeKitError(f"{device.name} used up its {budget:.0f} s before {path.name}",
                                   "raise the device's timeout in the fleet file")  # fmt: skip
            result = profile_remote(path, dataclasses.replace(device.remote, timeout=left), settings)
            row.update(status="ok", **summary(result), result=result)
        except EdgeKitError as e:
            row.update(status="error", error=str(e))
        except Exception as e:  # a failure in one device's thread must not lose the other rows
            row.update(status="error", error=f"{type(e).__name__}: {e}")
        if "error" in row:
            row["error"] = " ".join(row["error"].split())  # one line, whatever the device printed
        row["ended"] = time.time()
        rows.append(row)
    return rows


def profile_fleet(
    fleet: Fleet,
    artifacts: Sequence[Path],
    settings: Settings | Callable[[FleetDevice], Settings],
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every device measures the artifacts built for its profile, all devices at once; one row per (device,
    artifact), plus a row per artifact no device takes. `settings` may depend on the device."""
    if not artifacts:
        raise UsageError("no artifacts to profile", "pass one or more artifact directories")
    work, rows = assign(fleet, artifacts)
    busy = [d for d in fleet.devices if work[d.name]]
    started = time.time()
    pool = ThreadPoolExecutor(max_workers=max(1, len(busy)), thread_name_prefix="edgekit-fleet")
    futures = {}
    for d in busy:
        log(f"{d.name} ({d.remote.name}, {d.hardware.name}): {len(work[d.name])} artifact(s)")
        futures[d.name] = pool.submit(run_device, d, work[d.name], settings(d) if callable(settings) else settings)
    guard = max((d.remote.timeout for d in busy), default=0) + GUARD_S
    done, _ = wait(futures.values(), timeout=guard)
    pool.shutdown(wait=False, cancel_futures=True)  # every ssh command has its own timeout: a late one ends too
    for d in busy:
        late = f"{d.name} did not finish within {guard:.0f} s"
        rows += (futures[d.name].result() if futures[d.name] in done  # run_device turns every failure into rows
                 else [device_row(d, p, status="error", error=late) for p in work[d.name]])  # fmt: skip
    return {
        "fleet": str(fleet.path),
        "devices": [{**who(d), "artifacts": [str(p) for p in work[d.name]]} for d in fleet.devices],
        "started": started,
        "seconds": round(time.time() - started, 2),
        "rows": rows,
        "status": "ok" if all(r["status"] == "ok" for r in rows) else "error",
    }
