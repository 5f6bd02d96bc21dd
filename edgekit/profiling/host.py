"""What a measurement ran on: CPU model, ISA flags, cores, the device's identity facts, OS and library versions.
Every profile and benchmark records it, so a number is never separated from the machine that produced it."""

from __future__ import annotations

import os
import platform
from typing import Any

from ..artifact import versions
from ..hardware.identity import host_facts

LIBRARIES = ("edgekit", "torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "tensorrt", "numpy")


def host_info() -> dict[str, Any]:
    facts = host_facts()
    return {
        "hostname": platform.node(),
        "cpu": facts["cpu_model"],
        "arch": platform.machine(),
        "isa": facts["isa"],
        "cores": os.cpu_count(),
        "usable_cores": facts["cpus"],
        "os": platform.platform(),
        "identity": host_facts(),  # what a profile's `identity` is matched against (hardware/identity.py)
        "versions": versions(*LIBRARIES),
    }
