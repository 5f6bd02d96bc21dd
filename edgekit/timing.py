"""Latency measurement: warm up, time each call with a monotonic clock, summarize as percentiles.

`interleaved` times several callables in alternating blocks (A B A B ...), so that drift on a shared,
noisy machine (other tenants, frequency changes) lands on every contender alike instead of on
whichever ran last."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UsageError

DURATION_S = 2.0  # seconds of timed calls per measurement, after warm-up: profile's, validate's and search's


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over `runs` timed calls."""

    runs: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float

    @classmethod
    def of(cls, seconds: np.ndarray) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(len(ms), *(round(float(x), 4) for x in (p50, p90, p95, p99, ms.mean(), ms.std())))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def time_calls(
    fn: Callable[[], object], warmup: int = 10, runs: int | None = None, duration: float | None = None
) -> np.ndarray:
    """Seconds per call: `runs` calls, or as many as fit in `duration` seconds (at least 10)."""
    if warmup < 0 or (runs is not None and runs < 1) or (duration is not None and duration <= 0):
        raise UsageError(
            f"warmup={warmup}, runs={runs}, duration={duration}: need warmup >= 0, runs >= 1, duration > 0"
        )
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + (duration or 0.0)
    while True:
        start = time.perf_counter()
        fn()
        end = time.perf_counter()
        samples.append(end - start)
        if (len(samples) >= runs) if runs is not None else (len(samples) >= 10 and end >= deadline):
            return np.array(samples)


def interleaved(
    fns: Mapping[str, Callable[[], object]], rounds: int, block_seconds: float, warmup: int = 3
) -> dict[str, np.ndarray]:
    """Seconds per call for each callable, timed in `rounds` alternating blocks of about
    `block_seconds` each; every block starts with `warmup` untimed calls (caches, thread pools)."""
    times: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # no contender always follows the same one
        for name in order:
            times[name].append(time_calls(fns[name], warmup, duration=block_seconds))
    return {name: np.concatenate(t) for name, t in times.items()}
