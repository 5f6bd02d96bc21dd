"""INT8 ONNX through onnxruntime's static quantizer, in the QDQ format TensorRT and onnxruntime both run.

Symmetric INT8 everywhere (zero point 0), per-channel weights and per-tensor activations: the explicit
quantization TensorRT expects. Only Conv, MatMul and Gemm are quantized; quantizing every op (adds,
softmax, layer norm) cost about 25 points of top-1 agreement on a fusion model (shared/STACK.md)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..fsutil import atomic_path
from .calibration import CalibrationSet

OP_TYPES = ("Conv", "MatMul", "Gemm")


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    """onnxruntime's quantization helpers drop scratch files in the working directory."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def ort_reader(calib: CalibrationSet, n: int | None = None) -> Any:
    """The first `n` calibration samples (all by default) as onnxruntime's CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib.feeds[:n])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    return Reader()


def quantize_qdq(
    src: Path, dst: Path, calib: CalibrationSet, exclude: Sequence[str] = (), op_types: Sequence[str] = OP_TYPES
) -> dict[str, object]:
    """Write a QDQ INT8 copy of `src` to `dst`; nodes named in `exclude` stay in float. Empty `op_types`
    quantizes every op onnxruntime can."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgekit-qdq-") as tmp, _in_dir(Path(tmp)), atomic_path(dst) as out:
        prepped = Path(tmp) / "prepped.onnx"
        # Symbolic shape inference fails on the dynamo exporter's graphs; ONNX shape inference suffices.
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(out), ort_reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types) or None,
            nodes_to_exclude=list(exclude), extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )  # fmt: skip
    return {"backend": "onnxruntime.quantization", "scheme": "QDQ symmetric int8, per-channel weights",
            "op_types": list(op_types) or "all", "excluded": list(exclude),
            "calibration": calib.describe()}  # fmt: skip
