"""INT8 ONNX through onnxruntime's static quantizer, in the QDQ format, with one scheme per consumer of the graph.

Weights are symmetric INT8 per channel (7-bit on x86 without VNNI). Activations depend on who runs the graph:

- TensorRT (explicit quantization) takes symmetric INT8 activations, and only Conv, MatMul and Gemm are quantized;
  TensorRT fuses the Q/DQ pairs into its own kernels.
- onnxruntime on CPUs runs unsigned asymmetric activations through MLAS's U8S8 kernels (VNNI on x86, UDOT on
  ARM), its fast path; signed activations are slower there. On x86 without VNNI those kernels sum pairs of
  products in 16 bits and saturate (hardware/cpu.py), so a profile whose CPU lacks VNNI gets 7-bit weights
  (onnxruntime's reduce_range, the fix its documentation gives): the pair sums then fit.
  The ops that only move, pick or clamp values (Relu, pooling, reshapes, concatenation) are quantized too, so
  tensors stay INT8 between kernels instead of passing through a DQ -> op -> Q round trip. These ops are exact
  in INT8. Adds, Softmax and LayerNormalization stay in float, because quantizing them costs accuracy on the
  text branch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.calibration import CalibrationSet
from ..fsutil import atomic_path
from ..graphs import CONVS
from ..hardware import HardwareProfile
from ..hardware.cpu import int8_saturates

# The layers onnxruntime's QDQ quantizer has a rule for: no Einsum, and the recurrent ops stay float.
QDQ_LAYERS = (*CONVS, "MatMul", "Gemm")
PASS_THROUGH = ("Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose",
                "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Resize")  # fmt: skip


@dataclass(frozen=True)
class Scheme:
    name: str
    symmetric_activations: bool  # signed symmetric INT8 (TensorRT), else unsigned asymmetric (onnxruntime CPU)
    op_types: tuple[str, ...]  # empty: every op onnxruntime can quantize
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI

    def describe(self) -> str:
        acts = "symmetric int8" if self.symmetric_activations else "asymmetric uint8"
        bits = "7-bit (reduce_range)" if self.reduce_range else "symmetric int8"
        return f"QDQ, {acts} activations, {bits} per-channel weights"


TENSORRT = Scheme("tensorrt", True, QDQ_LAYERS)
CPU = Scheme("cpu", False, QDQ_LAYERS + PASS_THROUGH)
CPU_NO_VNNI = Scheme("cpu-no-vnni", False, QDQ_LAYERS + PASS_THROUGH, reduce_range=True)


def cpu_scheme(profile: HardwareProfile) -> Scheme:
    """onnxruntime's scheme on the profile's CPU: 7-bit weights where its INT8 kernels saturate."""
    return CPU_NO_VNNI if int8_saturates(profile.cpu_isa) else CPU


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


def nonfinite_nodes(model_path: Path, calib: CalibrationSet, n: int = 16) -> set[str]:
    """Nodes that produce or consume a float tensor holding -inf, inf or NaN on the first `n` calibration samples:
    an attention mask's -inf fill, reshaped on its way to the scores. Such a range has no INT8 scale (inf, with a
    NaN asymmetric zero point), so these nodes stay in float whatever op types a scheme quantizes. (onnxruntime
    quantizes a Reshape only after a quantized op, so today's mask path, Where -> Reshape, is safe regardless.)"""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    produced = {o: node.name for node in model.graph.node for o in node.output if o}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in produced if t not in known)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    bad: set[str] = set()
    for feeds in calib.feeds[:n]:
        for name, value in zip(names, session.run(names, feeds), strict=True):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                bad.add(name)
    consumers = {node.name for node in model.graph.node if bad & set(node.input)}
    return {produced[t] for t in bad} | consumers


def quantize_qdq(
    src: Path, dst: Path, calib: CalibrationSet, exclude: Sequence[str] = (), scheme: Scheme = CPU
) -> dict[str, object]:
    """Write a QDQ INT8 copy of `src` to `dst` in `scheme`; nodes named in `exclude` stay in float."""
    src, dst = Path(src).resolve(), Path(dst).resolve()  # relative paths would follow the chdir below
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    activations = QuantType.QInt8 if scheme.symmetric_activations else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="edgekit-qdq-") as tmp, _in_dir(Path(tmp)), atomic_path(dst) as out:
        prepped = Path(tmp) / "prepped.onnx"
        # Symbolic shape inference fails on the dynamo exporter's graphs; ONNX shape inference suffices.
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        unbounded = nonfinite_nodes(prepped, calib)
        # onnxruntime computes a scale for every calibrated tensor before it looks at the nodes; for the unbounded
        # ones, which stay in float, that divides inf by inf. The result is never used, so it is not a warning.
        with np.errstate(invalid="ignore"):
            quantize_static(
                str(prepped), str(out), ort_reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=activations, weight_type=QuantType.QInt8, reduce_range=scheme.reduce_range,
                op_types_to_quantize=list(scheme.op_types) or None, nodes_to_exclude=sorted({*exclude, *unbounded}),
                extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True},
            )  # fmt: skip
    return {"backend": "onnxruntime.quantization", "scheme": scheme.name, "format": scheme.describe(),
            "weight_bits": 7 if scheme.reduce_range else 8,
            "op_types": list(scheme.op_types) or "all", "excluded": list(exclude), "unbounded": sorted(unbounded),
            "calibration": calib.describe()}  # fmt: skip
