"""One Runner interface over the deployed runtimes. Accuracy evaluation and profiling both go through
it, so every number is that of the artifact in its own runtime.

Runners are loaded from an artifact's manifest through one dispatch table; heavy runtimes are
imported only when their runner is created."""

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


# artifact format -> (module.path:factory, the distribution that provides the runtime, the extra to install)
RUNNERS: dict[str, tuple[str, str, str | None]] = {
    "onnx": ("edgekit.runtimes.ort:OrtRunner", "onnxruntime", None),
    "ort-mobile": ("edgekit.runtimes.ort:OrtRunner", "onnxruntime", None),
    "openvino": ("edgekit.runtimes.openvino:OpenVINORunner", "openvino", "openvino"),
    "executorch": ("edgekit.runtimes.executorch:ExecuTorchRunner", "executorch", "executorch"),
    "tensorrt": ("edgekit.runtimes.tensorrt:TensorRTRunner", "tensorrt", None),
}


def require(module: str, extra: str | None, what: str) -> None:
    """Fail in one line, naming the extra to install, when an optional backend is missing."""
    if importlib.util.find_spec(module) is None:
        fix = f"pip install 'edgekit[{extra}]'" if extra else f"install {module} (it ships with the device's SDK)"
        raise UsageError(f"{what} needs {module}, which is not installed", fix)


def load_runner(artifact: Artifact, threads: int | None = None, device: str | None = None) -> Runner:
    """The runner for an artifact. `threads` pins intra-op threads; `device` picks the execution
    provider or device (runtime specific: "cpu", "cuda", "dla:0", ...)."""
    if artifact.format not in RUNNERS:
        raise UsageError(f"no runner for artifact format '{artifact.format}'", f"formats: {', '.join(RUNNERS)}")
    target, module, extra = RUNNERS[artifact.format]
    require(module, extra, f"running a {artifact.format} artifact")
    mod_name, _, cls = target.partition(":")
    factory: Callable[..., Runner] = getattr(importlib.import_module(mod_name), cls)
    return factory(artifact, threads=threads, device=device)


def onnx_runner(path: Path, io: IOSpec, threads: int | None = None) -> Runner:
    """A runner over a bare ONNX file (intermediate files that have no manifest yet)."""
    return load_runner(Artifact("onnx", "fp32", path.parent, path.name, io, ""), threads)


def qdq_emulator(path: Path, io: IOSpec, threads: int | None = None) -> Runner:
    """A Q/DQ ONNX run in onnxruntime with its INT8 arithmetic emulated in float: the proxy of a runtime that
    cannot run here (TensorRT), independent of this CPU's INT8 kernels."""
    from .ort import OrtRunner

    return OrtRunner(Artifact("onnx", "int8", path.parent, path.name, io, ""), threads, emulate_qdq=True)


def proxy_runner(artifact: Artifact, threads: int | None = None) -> tuple[Runner, str] | None:
    """For an artifact whose runtime cannot run here, a runner of the same graph that can, and its label; None when
    there is none. A TensorRT bundle's ONNX is the graph the engine is built from."""
    if artifact.format != "tensorrt":
        return None
    if artifact.precision == "int8":
        return qdq_emulator(artifact.path, artifact.io, threads), "proxy: the bundle's Q/DQ ONNX in onnxruntime"
    return onnx_runner(artifact.path, artifact.io, threads), "proxy: the bundle's float ONNX in onnxruntime"


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
