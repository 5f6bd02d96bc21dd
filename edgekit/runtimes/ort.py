"""onnxruntime runner, for .onnx (FP32 and QDQ INT8) and the mobile .ort format."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnxruntime as ort

from ..artifact import Artifact
from ..errors import UsageError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def session_options(threads: int | None, emulate_qdq: bool = False) -> ort.SessionOptions:
    """`emulate_qdq` runs a Q/DQ graph as written, DequantizeLinear -> float op -> QuantizeLinear, instead of
    fusing it into this CPU's INT8 kernels: the result of exact INT8 arithmetic (what TensorRT computes, with
    32-bit sums), the same on every host, where this CPU's kernels may saturate (hardware/cpu.py)."""
    so = ort.SessionOptions()
    if emulate_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


class OrtRunner:
    def __init__(
        self, artifact: Artifact, threads: int | None = None, device: str | None = None, emulate_qdq: bool = False
    ) -> None:
        provider = PROVIDERS.get(device or "cpu")
        if provider is None or provider not in ort.get_available_providers():
            raise UsageError(
                f"onnxruntime has no '{device}' provider here", f"available: {ort.get_available_providers()}"
            )
        try:
            self.session = ort.InferenceSession(
                str(artifact.path), session_options(threads, emulate_qdq), providers=[provider]
            )
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise UsageError(
                f"onnxruntime cannot load {artifact.path}: {str(e).splitlines()[0]}",
                "re-export the artifact, or rerun with the onnxruntime it was exported for",
            ) from e
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime {ort.__version__}{' (Q/DQ emulated in float)' if emulate_qdq else ''}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.outputs, values, strict=True))

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """Inputs bound once (CPU memory, no copy per call); outputs land in memory onnxruntime allocates."""
        binding = self.session.io_binding()
        arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}  # kept alive: the binding points at them
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        for name in self.outputs:
            binding.bind_output(name, "cpu")

        def call(_keep: object = arrays) -> ort.IOBinding:  # outputs: call().copy_outputs_to_cpu()
            self.session.run_with_iobinding(binding)
            return binding

        return call
