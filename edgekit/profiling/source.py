"""Where an artifact's latency comes from, decided in one place for `validate` and `search`: measured on the
profile's device (this host when it is that device, else over ssh), a labelled proxy (its own runtime on this
host, which is not the device), or the roofline estimate where its runtime cannot run here. With it come the
threads and the seconds of timed calls a measurement uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..hardware import HardwareProfile
from ..hardware.identity import host_facts
from ..timing import DURATION_S
from .remote import Remote

Source = Literal["measured", "proxy", "estimated"]


@dataclass(frozen=True)
class LatencySource:
    source: Source
    device: str  # what a measurement is keyed by: the device, the proxy host or the profile's estimate
    threads: int
    duration: float
    not_the_device: str | None  # why this host is not the profile's device; None where it is, or ssh measures

    @property
    def runs(self) -> bool:
        """Whether latency is timed at all (not only estimated)."""
        return self.source != "estimated"


def latency_source(
    profile: HardwareProfile, runs_here: bool, remote: Remote | None = None, threads: int | None = None,
    duration: float = DURATION_S,
) -> LatencySource:  # fmt: skip
    """The policy. `runs_here`: the artifact's runtime runs on this host. `threads`: the user's; by default the
    profile's, and a proxy host runs them only as far as its own CPUs go (more would time contention)."""
    facts = host_facts()
    why = profile.not_the_device(facts)
    mine = threads or profile.threads
    if remote is not None:
        return LatencySource("measured", f"remote:{remote.name}", mine, duration, None)
    if why is None:
        return LatencySource("measured", f"{profile.name}:{facts['cpu_model']}", mine, duration, None)
    if runs_here:
        proxy_threads = threads or min(profile.threads, facts["cpus"])
        return LatencySource("proxy", f"proxy:{facts['cpu_model']}", proxy_threads, duration, why)
    return LatencySource("estimated", f"estimate:{profile.name}", mine, duration, why)
