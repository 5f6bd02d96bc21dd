"""INT8 OpenVINO IR through NNCF post-training quantization of the (ONNX-converted) OpenVINO model.

Converting from ONNX rather than from the torch module avoids OpenVINO's failure on the
TransformerEncoder fast path (shared/STACK.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .calibration import CalibrationSet


def quantize_openvino(src_onnx: Path, calib: CalibrationSet, exclude: Sequence[str] = ()) -> tuple[Any, dict]:
    """An INT8 `openvino.Model` of `src_onnx`; nodes named in `exclude` (OpenVINO names) stay in float."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(src_onnx))
    scope = nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None
    quantized = nncf.quantize(
        model, nncf.Dataset(list(calib.feeds)), subset_size=len(calib), ignored_scope=scope,
        preset=nncf.QuantizationPreset.PERFORMANCE,
    )  # fmt: skip
    return quantized, {"backend": f"nncf {nncf.__version__}", "scheme": "symmetric int8 (performance preset)",
                       "excluded": list(exclude), "calibration": calib.describe()}  # fmt: skip
