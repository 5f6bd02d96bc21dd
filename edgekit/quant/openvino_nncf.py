"""INT8 OpenVINO IR through NNCF post-training quantization of the (ONNX-converted) OpenVINO model.

Converting from ONNX rather than from the torch module avoids OpenVINO's failure on the
TransformerEncoder fast path (shared/STACK.md). The mixed preset (asymmetric activations) is used:
on the AV-digits teacher the symmetric performance preset lost 6.0 points, mixed 0.7 (300 samples).

For an x86 CPU without VNNI, NNCF's overflow fix quantizes every Conv and MatMul weight to half the 8-bit range,
so OpenVINO's 16-bit pair sums cannot saturate (hardware/cpu.py); NNCF's default covers only the first layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.calibration import CalibrationSet
from ..noise import quiet_loggers
from ..runtimes.openvino import convert_onnx


def quantize_openvino(
    src_onnx: Path | Any, calib: CalibrationSet, patterns: Sequence[str] = (), overflow_fix: bool = False
) -> tuple[Any, dict]:
    """An INT8 `openvino.Model` of `src_onnx` (a path, or the model converted from it); ops whose OpenVINO names
    match `patterns` stay in float."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    quiet_loggers()  # NNCF's import set its logger to INFO: a line per node
    model = convert_onnx(Path(src_onnx)) if isinstance(src_onnx, str | Path) else src_onnx
    scope = nncf.IgnoredScope(patterns=list(patterns), validate=False) if patterns else None
    quantized = nncf.quantize(
        model, nncf.Dataset(list(calib.feeds)), subset_size=len(calib), ignored_scope=scope,
        preset=nncf.QuantizationPreset.MIXED,
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if overflow_fix else OverflowFix.FIRST_LAYER),
    )  # fmt: skip
    weights = "7-bit weights (overflow fix, no VNNI)" if overflow_fix else "symmetric weights"
    scheme = f"int8, {weights}, asymmetric activations (mixed preset)"
    return quantized, {"backend": f"nncf {nncf.__version__}", "scheme": scheme, "excluded": list(patterns),
                       "weight_bits": 7 if overflow_fix else 8,
                       "calibration": calib.describe()}  # fmt: skip
