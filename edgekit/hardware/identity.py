"""Which device a host is. A latency counts as measured for a profile only on the profile's own device: having its
CPU flags is not enough (an AVX2 server is not the AVX2 laptop, an Arm server with dot-product is not a
Raspberry Pi 5). A profile's `identity` names what recognises its device; `edgekit profile` records these facts
of the host it ran on, so a measurements file can be checked against a profile anywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydantic

from .cpu import this_cpu, usable_cpus


class Identity(pydantic.BaseModel):
    """Patterns (Python regular expressions, searched case-insensitively) a host's facts must all match; a
    field left out is not checked."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    cpu_model: str | None = None  # the CPU model name in /proc/cpuinfo
    cpus: pydantic.PositiveInt | None = None  # logical CPUs this process may use
    device_model: str | None = None  # /proc/device-tree/model: Jetson modules, Raspberry Pi
    l4t: str | None = None  # the L4T release of /etc/nv_tegra_release, as "36.4.3"
    android_soc: str | None = None  # `getprop ro.soc.model`, e.g. SM8650

    @pydantic.field_validator("cpu_model", "device_model", "l4t", "android_soc")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"is not a regular expression ({e})") from e
        return v

    def mismatch(self, facts: dict[str, Any]) -> str | None:
        """Why a host with these facts is not this device, or None when it is."""
        for name in ("cpu_model", "device_model", "l4t", "android_soc"):
            pattern, seen = getattr(self, name), facts.get(name)
            if pattern is not None and not (seen and re.search(pattern, str(seen), re.IGNORECASE)):
                return f"{name} {seen!r} does not match {pattern!r}"
        if self.cpus is not None and facts.get("cpus") != self.cpus:
            return f"{facts.get('cpus')} usable CPUs, not {self.cpus}"
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _l4t(release: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3'."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", release or "")
    return f"{m[1]}.{m[2]}" if m else None


def _getprop(name: str) -> str | None:
    if shutil.which("getprop") is None:
        return None
    try:
        p = subprocess.run(["getprop", name], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() or None


def host_facts() -> dict[str, Any]:
    """What this host offers to a profile's identity (None where it has no such fact)."""
    model, isa = this_cpu()
    return {
        "cpu_model": model,
        "cpus": usable_cpus(),
        "isa": list(isa),
        "device_model": _read("/proc/device-tree/model"),
        "l4t": _l4t(_read("/etc/nv_tegra_release")),
        "android_soc": _getprop("ro.soc.model"),
    }
