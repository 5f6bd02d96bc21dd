"""Which device a host is. A latency counts as measured for a profile only on the profile's own device: having its
CPU flags is not enough (an AVX2 server is not the AVX2 laptop, an Arm server with dot-product is not a
Raspberry Pi 5). A profile's `identity` names what recognises its device; `edgekit profile` records these facts
of the host it ran on, so a measurements file can be checked against a profile anywhere."""

from __future__ import annotations

import re
from typing import Any

import pydantic

from ..agent import identity_facts


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


def host_facts() -> dict[str, Any]:
    """What this host offers to a profile's identity (None where it has no such fact): what the device agent reports
    of a device (edgekit/agent.py), so that a host and a device are recognised alike."""
    return identity_facts()
