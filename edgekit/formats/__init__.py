"""The registry of deployable formats: one `Format` per module in this package, and everything read from it.

Adding a format (LiteRT, Core ML) is one new module that declares a `FORMAT`, listed in `FORMATS` below, plus
its tests: the CLI's choices, the capability check, the runner, the op profiler, the INT8 backend and the
capability table in docs/hardware-profiles.md all come from here."""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from ..artifact import Artifact
from ..errors import UsageError
from ..hardware import HardwareProfile
from ..runtimes import Runner, require
from . import executorch, onnx, openvino, ort_mobile, tensorrt
from .base import ExportContext, Format, Search, ShapeMode

FORMATS: dict[str, Format] = {f.name: f for f in (onnx.FORMAT, openvino.FORMAT, tensorrt.FORMAT,
                                                   executorch.FORMAT, ort_mobile.FORMAT)}  # fmt: skip
FormatName = enum.StrEnum("FormatName", {f: f for f in FORMATS})  # the CLI's --format choices
# A recipe's quantize stage: the format whose INT8 model it builds (a Literal, so a typo gets "did you mean").
Int8Format = Literal[("auto", *(f for f, x in FORMATS.items() if x.int8))]  # type: ignore[valid-type]


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UsageError(f"unknown format '{name}'", f"use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def check_request(fmt: str, precision: str, profile: HardwareProfile, shapes: ShapeMode = "dynamic") -> Format:
    """Raise a UsageError (exit 2) naming the problem and the fix if the request cannot be served."""
    f = get_format(fmt)
    if precision not in f.precisions:
        raise UsageError(f"format '{fmt}' has no {precision} precision", f"use one of {', '.join(f.precisions)}")
    if precision not in profile.precisions:
        raise UsageError(
            f"profile '{profile.name}' does not support {precision}", f"it supports {', '.join(profile.precisions)}"
        )
    if shapes not in f.shapes:
        raise UsageError(f"format '{fmt}' needs static shapes", "pass --shapes static")
    for module, extra in f.needs + (f.int8_needs if precision == "int8" else ()):
        require(module, extra, f"exporting {fmt}/{precision}")
    return f


def load_runner(artifact: Artifact, threads: int | None = None, device: str | None = None) -> Runner:
    """The runner for an artifact. `threads` pins intra-op threads; `device` picks the execution
    provider or device (runtime specific: "cpu", "cuda", "dla:0", ...)."""
    if artifact.format not in FORMATS:
        raise UsageError(f"no runner for artifact format '{artifact.format}'", f"formats: {', '.join(FORMATS)}")
    f = FORMATS[artifact.format]
    require(*f.runtime, f"running a {artifact.format} artifact")
    mod_name, _, cls = f.runner.partition(":")
    factory: Callable[..., Runner] = getattr(importlib.import_module(mod_name), cls)
    return factory(artifact, threads=threads, device=device)


def accuracy_runner(artifact: Artifact, threads: int | None = None) -> tuple[Runner, str] | None:
    """What measures an artifact's accuracy here, and its label: its own runtime, or, for a format whose runtime
    runs only on its device (TensorRT), the labelled proxy of the same graph; None when neither can."""
    f = get_format(artifact.format)
    if f.runs_here:
        return load_runner(artifact, threads), "its runtime"
    return f.proxy(artifact, threads) if f.proxy else None


def op_breakdown(
    art: Artifact, feeds: Mapping[str, np.ndarray], runs: int = 20, threads: int | None = None
) -> dict[str, Any] | None:
    """The per-operator breakdown for one input, or None where the runtime offers none here."""
    profiler = get_format(art.format).op_profiler
    return profiler(art, feeds, runs, threads) if profiler else None


def capability_markdown() -> str:
    """The capability table of docs/hardware-profiles.md."""
    rows = ["| format | file | precisions | runs here in | extras | what it is |", "|---|---|---|---|---|---|"]
    for f in FORMATS.values():
        extras = sorted({x for _, x in f.needs + f.int8_needs})
        here = ", ".join(f.runs_here) or "the device only"
        rows.append(f"| `{f.name}` | `{f.suffix}` | {', '.join(f.precisions)} | {here} | {', '.join(extras) or '-'} "
                    f"| {f.summary} |")  # fmt: skip
    return "\n".join(rows)


__all__ = ["FORMATS", "ExportContext", "Format", "FormatName", "Int8Format", "Search", "ShapeMode",
           "accuracy_runner", "capability_markdown", "check_request", "get_format", "load_runner",
           "op_breakdown"]  # fmt: skip
