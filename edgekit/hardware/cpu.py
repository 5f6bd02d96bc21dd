"""The CPU this process runs on, and what its ISA means for INT8 kernels.

The flags decide which kernels a runtime picks. One matters for accuracy, not only speed: on x86 without VNNI,
onnxruntime's U8S8 kernels and OpenVINO's INT8 kernels multiply with VPMADDUBSW, which adds pairs of u8 x s8
products into a 16-bit lane and saturates there (255 x 127 x 2 > 32767). With VNNI (VPDPBUSD) the sums are
32-bit; Arm's dot-product instructions never saturate."""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable
from pathlib import Path

# Flags that decide which kernels a runtime picks (x86 /proc/cpuinfo and Arm "Features" spellings).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm",
             "sve")  # fmt: skip
# x86 flags of a u8 x s8 dot product into 32-bit sums: either one keeps INT8 kernels from saturating.
VNNI = ("avx512_vnni", "avx_vnni")


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


@functools.cache
def this_cpu() -> tuple[str, tuple[str, ...]]:
    """(model name, ISA flags) of this host."""
    cpuinfo = Path("/proc/cpuinfo")
    model, isa = cpu_facts(cpuinfo.read_text() if cpuinfo.is_file() else "")
    return model, tuple(isa)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def int8_saturates(isa: Iterable[str]) -> bool:
    """Whether INT8 kernels on a CPU with these flags can saturate: x86 (AVX2 or AVX-512) without VNNI."""
    flags = set(isa)
    return bool(flags & {"avx2", "avx512bw"}) and not flags & set(VNNI)


def missing_vnni(isa: Iterable[str]) -> str:
    """How a message names the missing feature: 'avx512_vnni or avx_vnni'."""
    return " or ".join(f for f in VNNI if f not in set(isa))
