"""TensorRT runner for a bundle's model.engine, on the device that built it.

Device memory comes from cuda-python (the CUDA runtime bindings NVIDIA's own TensorRT samples use), not
from torch: EdgeKit pins a CPU build of torch, and on a Jetson torch.cuda exists only with NVIDIA's own
wheels, while cuda-python only needs the CUDA driver that JetPack already ships.

TensorRT 8.5 and 10.x address tensors by name and run with execute_async_v3; engines from older TensorRT
(JetPack 4.x) use binding indices and execute_async_v2."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import EdgeKitError, UsageError

ENGINE = "model.engine"
INT32 = np.iinfo(np.int32)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python, e.g. 11.x for JetPack 5's CUDA 11.4

        return cudart
    except ImportError as e:
        raise UsageError(
            "the TensorRT runner needs cuda-python for device memory",
            "pip install cuda-python of the device's CUDA major version (11.x on JetPack 5, 12.x on JetPack 6)",
        ) from e


class _Named:
    """TensorRT >= 8.5: tensors by name, execute_async_v3."""

    def __init__(self, engine: Any, context: Any) -> None:
        import tensorrt as trt  # optional: only on the device, so imported where used

        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def dtype(self, name: str) -> np.dtype:
        import tensorrt as trt

        return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def limits(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(lo), tuple(hi)

    def set_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(name, shape))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def set_address(self, name: str, ptr: int) -> None:
        self.context.set_tensor_address(name, ptr)  # kept by the context for every later execute_async_v3

    def execute(self, stream: int) -> bool:
        return bool(self.context.execute_async_v3(stream))


class _Bindings:
    """TensorRT < 8.5 (JetPack 4.x): binding indices, execute_async_v2."""

    def __init__(self, engine: Any, context: Any) -> None:
        self.engine, self.context = engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.inputs = [n for i, n in enumerate(self.names) if engine.binding_is_input(i)]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.pointers = [0] * len(self.names)

    def dtype(self, name: str) -> np.dtype:
        import tensorrt as trt

        return np.dtype(trt.nptype(self.engine.get_binding_dtype(self.names.index(name))))

    def limits(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lo, _, hi = self.engine.get_profile_shape(0, name)
        return tuple(lo), tuple(hi)

    def set_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(self.names.index(name), shape))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_binding_shape(self.names.index(name)))

    def set_address(self, name: str, ptr: int) -> None:
        self.pointers[self.names.index(name)] = ptr

    def execute(self, stream: int) -> bool:
        return bool(self.context.execute_async_v2(self.pointers, stream))


class TensorRTRunner:
    """Runs model.engine; feeds are checked against the IOSpec, then against the engine's own shape limits.
    Input shapes and device buffers are bound once per set of input shapes: a run with the shapes of the last
    one only copies, executes and copies back.

    `device` picks the DLA core of a DLA engine ("dla:1"); by default the core it was built for."""

    def __init__(self, artifact: Artifact, threads: int | None = None, device: str | None = None) -> None:
        import tensorrt as trt

        del threads  # the engine runs on the GPU or DLA; host threads do not apply
        path = artifact.directory / ENGINE
        if not path.is_file():
            raise UsageError(
                f"{artifact.directory} has no {ENGINE} yet", f"run `edgekit build {artifact.directory}` on the device"
            )
        self.cudart = _cudart()
        self.spec = artifact.io
        built = artifact.meta.get("engine", {})
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        dla = _dla_core(device, built.get("dla_core", artifact.meta.get("dla_core")))
        if dla is not None:
            runtime.DLA_core = dla
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EdgeKitError(
                f"TensorRT {trt.__version__} cannot load {path} (built with TensorRT {built.get('tensorrt', '?')})",
                "engines load only on the TensorRT version and device that built them: rebuild with `edgekit build`",
            )
        self.context = self.engine.create_execution_context()
        api = _Named if hasattr(self.context, "execute_async_v3") else _Bindings
        self.io = api(self.engine, self.context)
        if set(self.spec.input_names) != set(self.io.inputs):
            raise EdgeKitError(f"the engine's inputs {self.io.inputs} differ from the IOSpec's {self.spec.input_names}")
        self.stream = self._call(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.shapes: dict[str, tuple[int, ...]] = {}  # the input shapes the context and buffers are bound for
        self.staged: dict[str, np.ndarray] | None = None  # the feeds on the device, which bound calls check
        self.name = f"tensorrt {trt.__version__}" + (f" dla:{dla}" if dla is not None else "")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._stage(feeds)
        self._enqueue()
        outputs = {name: np.empty(self.io.shape(name), self.io.dtype(name)) for name in self.spec.output_names}
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in outputs.items():
            ptr = self.buffers[name][0]
            self._call(self.cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, self.stream))
        self._call(self.cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Feeds checked and copied to the device once; each call only enqueues the engine and waits for it, as
        `trtexec --noDataTransfers` times it, and leaves the outputs on the device. The call shares the runner's
        context and buffers, so it refuses to run once a later run() or bind() has staged other feeds."""
        self._stage(feeds)
        staged = self.staged

        def call() -> None:
            if self.staged is not staged:
                raise UsageError("the runner has run other feeds since this call was bound", "bind the feeds again")
            self._enqueue()
            self._call(self.cudart.cudaStreamSynchronize(self.stream))

        return call

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Check and cast the feeds, rebind if their shapes changed, and queue their copies to the device."""
        self.spec.validate_feeds(feeds)
        hosts = {name: self._as_engine_type(name, np.asarray(feeds[name])) for name in self.io.inputs}
        shapes = {name: arr.shape for name, arr in hosts.items()}
        self.staged = None  # from here the context and the device inputs change under any bound call
        if shapes != self.shapes:
            self._rebind(shapes)
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, arr in hosts.items():
            ptr = self.buffers[name][0]
            self._call(self.cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        self.staged = hosts

    def _rebind(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Set the changed input shapes on the context and bind every tensor to a device buffer large enough."""
        for name, shape in shapes.items():
            lo, hi = self.io.limits(name)
            if any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                raise UsageError(
                    f"input '{name}' has shape {shape}; this engine takes {lo} to {hi}",
                    "feed a shape inside the engine's profile (a DLA engine takes its opt shape only)",
                )
        bound, self.shapes = self.shapes, {}  # a failure part-way leaves the context half-set: rebind all next time
        for name, shape in shapes.items():
            if shape != bound.get(name) and not self.io.set_shape(name, shape):
                raise EdgeKitError(f"TensorRT rejected shape {shape} for input '{name}'")
        for name in (*self.io.inputs, *self.io.outputs):
            nbytes = int(np.prod(self.io.shape(name))) * self.io.dtype(name).itemsize
            self.io.set_address(name, self._buffer(name, nbytes))
        self.shapes = dict(shapes)

    def _enqueue(self) -> None:
        if not self.io.execute(int(self.stream)):
            raise EdgeKitError("TensorRT failed to enqueue the engine")

    def _as_engine_type(self, name: str, arr: np.ndarray) -> np.ndarray:
        """TensorRT 8.5 binds int64 ONNX inputs as int32; cast, refusing values that int32 cannot hold."""
        want = self.io.dtype(name)
        if arr.dtype == np.int64 and want == np.int32 and arr.size and (arr.min() < INT32.min or arr.max() > INT32.max):
            raise UsageError(f"input '{name}' has values outside int32, which this TensorRT binds it as")
        return np.ascontiguousarray(arr, dtype=want)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, 0))
        nbytes = max(nbytes, 1)  # an empty tensor still needs a valid address
        if nbytes > capacity:  # grow only: dynamic shapes reuse the largest buffer seen
            if ptr:
                self._call(self.cudart.cudaFree(ptr))
            ptr, capacity = int(self._call(self.cudart.cudaMalloc(nbytes))), nbytes
            self.buffers[name] = (ptr, capacity)
        return ptr

    def _call(self, result: tuple[Any, ...]) -> Any:
        err, *rest = result
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise EdgeKitError(f"CUDA call failed: {err}")
        return rest[0] if rest else None

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            self.cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)


def _dla_core(device: str | None, built: int | None) -> int | None:
    if device is None or device in ("cuda", "gpu"):
        return built
    if device.startswith("dla:") and device[4:].isdigit():
        if built is None:
            raise UsageError(
                f"device '{device}' needs a DLA engine", "rebuild with `edgekit build BUNDLE --dla-core N`"
            )
        return int(device[4:])
    raise UsageError(f"unknown TensorRT device '{device}'", "use 'cuda' or 'dla:N'")
