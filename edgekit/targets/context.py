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
    qdq_files: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)  # by scheme, built on use

    @functools.cached_property
    def calib(self) -> CalibrationSet:
        return self.calibrate()

    def qdq(self, fmt: str) -> tuple[Path, dict[str, Any]]:
        """The INT8 QDQ ONNX for an artifact format, and how it was made: built once per quantization scheme and
        shared (the onnx and ort-mobile targets take the scheme of the profile's CPU, tensorrt its own)."""
        from ..quant.onnx_qdq import quantize_qdq, scheme_for

        scheme = scheme_for(fmt, self.profile)
        if scheme.name not in self.qdq_files:
            path = self.work / f"model.int8-{scheme.name}.onnx"
            self.qdq_files[scheme.name] = (path, quantize_qdq(self.onnx_fp32, path, self.calib, scheme=scheme))
        return self.qdq_files[scheme.name]
