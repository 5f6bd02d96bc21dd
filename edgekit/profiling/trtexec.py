"""Measurements a user took with trtexec by hand, read as `edgekit profile --json` results: `--exportTimes` (the
latency of each inference) and `--exportProfile` (per-layer times), with the device's facts from the agent's `facts`
command. The formats are parsed in edgekit/agent.py, which reads the same files on the device."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..agent import latency_stats, trtexec_layers, trtexec_times
from ..artifact import Artifact, sha256_file
from ..errors import UsageError

TRTEXEC_HINT = "pass --device-facts from `python3 edgekit_agent.py facts` run on the device (the bundle carries it)"


def read(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"{path} is not the JSON of `edgekit profile --json` or of trtexec's exports "
                         f"({type(e).__name__}: {e})") from e  # fmt: skip


def is_trtexec(path: Path) -> bool:
    """Whether a measurements file is one of trtexec's exports (a JSON list) rather than `edgekit profile --json`."""
    return isinstance(read(path), list)


def from_trtexec(paths: Sequence[Path], art: Artifact, facts: Mapping[str, Any] | None) -> dict[str, Any]:
    """One measurement of `art` from trtexec's times file and, optionally, its profile file. trtexec records
    neither the batch nor the engine: they are batch 1 (run trtexec with --shapes at batch 1) of the artifact given."""
    times: list[float] | None = None
    ops = None
    for path in paths:
        data = read(path)
        try:
            if data and isinstance(data[0], dict) and "count" in data[0]:
                ops = trtexec_layers(data)
            else:
                times = trtexec_times(data)
        except ValueError as e:
            raise UsageError(f"{path} is neither trtexec's --exportTimes nor its --exportProfile JSON: {e}") from e
    if times is None:
        raise UsageError(
            f"{', '.join(map(str, paths))} hold no timing records",
            "pass trtexec's --exportTimes file (its --exportProfile file only adds per-layer times)",
        )
    return {
        "artifact": {"path": str(art.directory), "format": art.format, "precision": art.precision,
                     "sha256": sha256_file(art.path), "size_mb": round(art.size_mb(), 3)},
        "runtime": "tensorrt (trtexec, by hand)",
        "results": [{"batch": 1, "latency_ms": latency_stats(times), "peak_rss_mb": None,
                     "throughput": round(len(times) / sum(times) * 1e3, 2)}],
        "rss_before_load_mb": None,
        "ops": ops,
        "host": {"cpu": (facts or {}).get("cpu_model") or "the device (trtexec)", "identity": dict(facts or {}),
                 "device": dict(facts or {})} if facts else None,
        "file": ", ".join(map(str, paths)),
        "device_side": "trtexec",
    }  # fmt: skip
