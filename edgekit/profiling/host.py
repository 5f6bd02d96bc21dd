"""What a measurement ran on: CPU model, ISA flags, cores, OS and library versions. Every profile and
benchmark records it, so a number is never separated from the machine that produced it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from ..artifact import versions

# Flags that decide which kernels a runtime picks (x86 /proc/cpuinfo and Arm "Features" spellings).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "sve",
)
LIBRARIES = ("edgekit", "torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "tensorrt", "numpy")


def cpu_facts(cpuinfo: str) -> tuple[str, list[str]]:
    """(model name, the ISA flags of ISA_FLAGS present) from /proc/cpuinfo text."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def host_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    model, isa = cpu_facts(cpuinfo.read_text() if cpuinfo.is_file() else "")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": platform.node(),
        "cpu": model,
        "arch": platform.machine(),
        "isa": isa,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "versions": versions(*LIBRARIES),
    }
