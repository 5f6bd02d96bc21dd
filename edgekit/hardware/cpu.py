"""The CPU this process runs on, and what its ISA means for INT8 kernels.

The flags decide which kernels a runtime picks. One matters for accuracy, not only speed: on x86 without VNNI,
onnxruntime's U8S8 kernels and OpenVINO's INT8 kernels multiply with VPMADDUBSW, which adds pairs of u8 x s8
products into a 16-bit lane and saturates there (255 x 127 x 2 > 32767). With VNNI (VPDPBUSD) the sums are
32-bit; Arm's dot-product instructions never saturate."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from ..agent import cpu_facts

# x86 flags of a u8 x s8 dot product into 32-bit sums: either one keeps INT8 kernels from saturating.
VNNI = ("avx512_vnni", "avx_vnni")


@functools.cache
def this_cpu() -> tuple[str, tuple[str, ...]]:
    """(model name, ISA flags) of this host."""
    cpuinfo = Path("/proc/cpuinfo")
    model, isa = cpu_facts(cpuinfo.read_text() if cpuinfo.is_file() else "")
    return model, tuple(isa)


def int8_saturates(isa: Iterable[str]) -> bool:
    """Whether INT8 kernels on a CPU with these flags can saturate: x86 (AVX2 or AVX-512) without VNNI."""
    flags = set(isa)
    return bool(flags & {"avx2", "avx512bw"}) and not flags & set(VNNI)


def missing_vnni(isa: Iterable[str]) -> str:
    """How a message names the missing feature: 'avx512_vnni or avx_vnni'."""
    return " or ".join(f for f in VNNI if f not in set(isa))
