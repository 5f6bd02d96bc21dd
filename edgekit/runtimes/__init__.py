"""One Runner interface over the deployed runtimes. Accuracy evaluation and profiling both go through
it, so every number is that of the artifact in its own runtime.

Which runner runs which artifact format is the format's to say (edgekit/formats/); heavy runtimes are imported
only when their runner is created."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from ..artifact import Artifact
from ..errors import UsageError
from ..io import IOSpec


class Runner(Protocol):
    name: str  # the runtime, e.g. "onnxruntime 1.31.1"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def require(module: str, extra: str | None, what: str) -> None:
    """Fail in one line, naming the extra to install, when an optional backend is missing."""
    if importlib.util.find_spec(module) is None:
        fix = f"pip install 'edgekit[{extra}]'" if extra else f"install {module} (it ships with the device's SDK)"
        raise UsageError(f"{what} needs {module}, which is not installed", fix)


def onnx_runner(path: Path, io: IOSpec, threads: int | None = None) -> Runner:
    """A runner over a bare ONNX file (intermediate files that have no manifest yet)."""
    from .ort import OrtRunner

    return OrtRunner(Artifact("onnx", "fp32", path.parent, path.name, io, ""), threads)


def qdq_emulator(path: Path, io: IOSpec, threads: int | None = None) -> Runner:
    """A Q/DQ ONNX run in onnxruntime with its INT8 arithmetic emulated in float: the proxy of a runtime that
    cannot run here (TensorRT), independent of this CPU's INT8 kernels."""
    from .ort import OrtRunner

    return OrtRunner(Artifact("onnx", "int8", path.parent, path.name, io, ""), threads, emulate_qdq=True)


def bound_call(runner: Runner, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """A zero-argument call that runs `feeds` with the inputs handed to the runtime once, up front, the way the
    runtimes' own benchmark tools (benchmark_app, onnxruntime_perf_test) and a deployed application call it: what
    is timed is the runtime's inference, not Python converting feeds and outputs. Runners without `bind` run."""
    bind = getattr(runner, "bind", None)
    return bind(feeds) if bind else (lambda: runner.run(feeds))


def predict_fn(runner: Runner, output: str | None = None) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Adapt a runner to evaluation's feeds -> logits function (the first output unless named)."""

    def predict(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        outs = runner.run(feeds)
        return outs[output] if output else next(iter(outs.values()))

    return predict
