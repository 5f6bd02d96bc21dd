"""What a measurement ran on: CPU model, ISA flags, cores, the device's identity facts, OS and library versions.
Every profile and benchmark records it, so a number is never separated from the machine that produced it."""

from __future__ import annotations

import os
import platform
from typing import Any

from ..artifact import versions
from ..hardware.cpu import this_cpu
from ..hardware.identity import host_facts

LIBRARIES = ("edgekit", "torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "tensorrt", "numpy")


def host_info() -> dict[str, Any]:
    model, isa = this_cpu()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": platform.node(),
        "cpu": model,
        "arch": platform.machine(),
        "isa": list(isa),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "identity": host_facts(),  # what a profile's `identity` is matched against (hardware/identity.py)
        "versions": versions(*LIBRARIES),
    }
