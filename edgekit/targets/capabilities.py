"""What each export format can do, as one typed table checked before any work starts.

A request (format, precision, shape mode) is checked against this table and the hardware profile;
anything it cannot satisfy is a one-line usage error (exit 2) before a file is written."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError
from ..hardware import HardwareProfile

ShapeMode = Literal["dynamic", "static"]


@dataclass(frozen=True)
class FormatCaps:
    suffix: str  # the file the runtime loads
    precisions: tuple[str, ...]
    shapes: tuple[ShapeMode, ...]  # which shape modes the format supports
    runs_here: tuple[str, ...]  # runtimes that can execute it on a CPU-only x86 host
    needs: tuple[tuple[str, str], ...]  # (module, extra) that exporting needs
    int8_needs: tuple[tuple[str, str], ...] = ()  # extra modules for INT8
    # Its runtime's x86 INT8 kernels sum pairs of products in 16 bits on a CPU without VNNI (hardware/cpu.py), so
    # full-range 8-bit weights can saturate there.
    saturates_without_vnni: bool = False


FORMATS: dict[str, FormatCaps] = {
    "onnx": FormatCaps(".onnx", ("fp32", "int8"), ("dynamic", "static"), ("onnxruntime",), (), (), True),
    "openvino": FormatCaps(
        ".xml", ("fp32", "fp16", "int8"), ("dynamic", "static"), ("openvino",),
        (("openvino", "openvino"),), (("nncf", "nncf"),), True,
    ),
    # TensorRT engines are built on the device; here we write the bundle (ONNX + build scripts).
    "tensorrt": FormatCaps(".onnx", ("fp32", "fp16", "int8"), ("dynamic", "static"), (), (("onnxslim", "tensorrt"),)),
    "executorch": FormatCaps(
        ".pte", ("fp32", "int8"), ("dynamic", "static"), ("executorch",), (("executorch", "executorch"),)
    ),
    "ort-mobile": FormatCaps(".ort", ("fp32", "int8"), ("dynamic", "static"), ("onnxruntime",), (), (), True),
}  # fmt: skip


def check_request(fmt: str, precision: str, profile: HardwareProfile, shapes: ShapeMode = "dynamic") -> FormatCaps:
    """Raise a UsageError (exit 2) naming the problem and the fix if the request cannot be served."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    caps = FORMATS[fmt]
    if precision not in caps.precisions:
        raise UsageError(f"format '{fmt}' has no {precision} precision", f"use one of {', '.join(caps.precisions)}")
    if precision not in profile.precisions:
        raise UsageError(
            f"profile '{profile.name}' does not support {precision}", f"it supports {', '.join(profile.precisions)}"
        )
    if shapes not in caps.shapes:
        raise UsageError(f"format '{fmt}' needs static shapes", "pass --shapes static")
    for module, extra in caps.needs + (caps.int8_needs if precision == "int8" else ()):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"exporting {fmt}/{precision} needs {module}", f"pip install 'edgekit[{extra}]'")
    return caps
