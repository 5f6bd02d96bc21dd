"""What every target builder receives: the source model, its IOSpec, the parity-checked FP32 ONNX hub
file, the hardware profile and the calibration set (drawn once, on first use, and shared)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..hardware import HardwareProfile
from ..io import IOSpec
from ..quant.calibration import CalibrationSet


@dataclass(frozen=True)
class ExportContext:
    model: nn.Module
    io: IOSpec
    onnx_fp32: Path  # the slimmed, parity-checked hub ONNX
    profile: HardwareProfile
    parent: str  # sha256 of the source model's weights
    calibrate: Callable[[], CalibrationSet]
    work: Path  # scratch directory for intermediate files
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in every manifest (source, profile, ...)

    @functools.cached_property
    def calib(self) -> CalibrationSet:
        return self.calibrate()

    @functools.cached_property
    def qdq(self) -> tuple[Path, dict[str, Any]]:
        """The INT8 QDQ ONNX and how it was made; built once, shared by the onnx, tensorrt and ort-mobile targets."""
        from ..quant.onnx_qdq import quantize_qdq

        path = self.work / "model.int8.onnx"
        return path, quantize_qdq(self.onnx_fp32, path, self.calib)
