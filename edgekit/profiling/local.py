"""`edgekit profile` on this machine: load an artifact (or a model package, run in torch eager) in its own
runtime, time it at each batch size, and record memory, an op breakdown and the host."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agent import Tegrastats
from ..artifact import MANIFEST, load_artifact, model_hash, sha256_file
from ..errors import UsageError
from ..formats import load_runner, op_breakdown
from ..io import IOSpec
from ..runtimes import Runner, bound_call
from ..timing import DURATION_S, LatencyStats, time_calls
from .host import host_info


@dataclass(frozen=True)
class Settings:
    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    runs: int | None = None  # a fixed number of timed calls, or
    duration: float = DURATION_S  # seconds of timed calls per batch size (at least 10 calls)
    threads: int | None = None
    dims: Mapping[str, int] | None = None  # symbolic dims other than batch, e.g. {"seq": 16}
    ops: bool = True
    energy: bool = True  # sample tegrastats during the first batch size's timed calls, where it exists

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise UsageError(f"batch sizes {list(self.batches)} must all be at least 1", "e.g. --batch 1,4,16")


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status in MB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the peak so far)."""
    return proc_status_mb("VmRSS") or peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process image. Linux's VmHWM is reset by exec, unlike getrusage's
    ru_maxrss, which carries over the parent's peak into a child started by a large process."""
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def load_target(path: Path, threads: int | None) -> tuple[Runner, IOSpec, dict[str, Any], Any]:
    """(runner, io, what was loaded, the artifact or None) for an artifact directory or a model package."""
    if (path / MANIFEST).is_file() or path.name == MANIFEST:
        art = load_artifact(path)
        info = {
            "path": str(art.directory),
            "format": art.format,
            "precision": art.precision,
            "sha256": sha256_file(art.path),
            "size_mb": round(art.size_mb(), 3),
        }
        return load_runner(art, threads), art.io, info, art
    if (path / "edgekit-model.yaml").is_file():
        from ..loading import load_model
        from ..runtimes.torch import TorchRunner

        loaded = load_model(path)
        info = {"path": str(path), "format": "torch", "precision": "fp32", "sha256": model_hash(loaded.model)}
        return TorchRunner(loaded.model, loaded.io, threads), loaded.io, info, None
    raise UsageError(f"{path} is neither an artifact (no {MANIFEST}) nor a model package", "pass an export directory")


def check_dims(io: IOSpec, batches: Sequence[int], dims: Mapping[str, int]) -> None:
    for name, value in {**dims, **({"batch": max(batches)} if "batch" in io.dims else {})}.items():
        if name not in io.dims:
            raise UsageError(f"the model has no dimension '{name}'", f"its dimensions: {', '.join(io.dims)}")
        rng = io.dims[name]
        for v in [value] if name != "batch" else batches:
            if not rng.min <= v <= rng.max:
                raise UsageError(f"{name}={v} is outside the model's range {rng.min}..{rng.max}")
    if "batch" not in io.dims and set(batches) != {1}:
        raise UsageError("this artifact has no batch dimension", "profile it with --batch 1")


def profile(path: Path, settings: Settings = Settings()) -> dict[str, Any]:
    dims = dict(settings.dims or {})
    rss_before = rss_mb()
    start = time.perf_counter()
    runner, io, info, art = load_target(Path(path), settings.threads)
    load_s = time.perf_counter() - start
    check_dims(io, settings.batches, dims)
    results, first_ms = [], None
    for batch in settings.batches:
        feeds = io.example_inputs(batch, **dims) if "batch" in io.dims else io.example_inputs(**dims)
        if first_ms is None:
            start = time.perf_counter()
            runner.run(feeds)
            first_ms = (time.perf_counter() - start) * 1e3
        first = not results
        with Tegrastats() if first and settings.energy else nullcontext() as power:  # a Jetson's board power
            seconds = time_calls(
                bound_call(runner, feeds), settings.warmup, settings.runs, None if settings.runs else settings.duration
            )
        stats = LatencyStats.of(seconds)
        results.append(
            {
                "batch": batch,
                "latency_ms": stats.as_dict(),
                "throughput": round(batch * len(seconds) / float(seconds.sum()), 2),  # samples/s
                "peak_rss_mb": round(peak_rss_mb(), 1),
                **({"energy": power.energy(list(seconds * 1e3))} if power else {}),
            }
        )
    ops = None
    if settings.ops and art is not None:
        ops = op_breakdown(art, io.example_inputs(settings.batches[0], **dims), threads=settings.threads)
    return {
        "artifact": info,
        "runtime": runner.name,
        "settings": {
            "batches": list(settings.batches),
            "warmup": settings.warmup,
            "runs": settings.runs,
            "duration_s": None if settings.runs else settings.duration,
            "threads": settings.threads,
            "dims": dims,
        },
        "load_s": round(load_s, 4),
        "first_inference_ms": round(first_ms or 0.0, 4),
        "rss_before_load_mb": round(rss_before, 1),
        "results": results,
        "ops": ops,
        "host": host_info(),
    }
