"""INT8 on both x86 CPU classes, whichever class this host is (scripts/isa_accuracy.py):
- the AVX2-only class, for real: QEMU's user-mode emulator runs the artifacts as an AMD Zen 3 (EPYC-Milan), so
  onnxruntime picks the kernels it picks there (on an AVX2-only host, the same ones as natively);
- the VNNI class: natively on a VNNI host. QEMU implements no VNNI instruction, so on an AVX2-only host this class is
  its arithmetic, exact 32-bit sums: the Q/DQ graph run as written, DequantizeLinear -> float op.

The reference teacher's INT8 ONNX with 8-bit weights (for x86-avx512-vnni) computes other logits on the AVX2 class,
because the AVX2 kernels' 16-bit pair sums saturate; with 7-bit weights (for x86-avx2) it computes the VNNI class's
logits on both, and the same logits, bit for bit, on every host of a class."""

import importlib.util
import platform
import shutil
import sys
from pathlib import Path

import pytest

from edgekit import api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU (this host is not x86-64)"),
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (Debian's qemu-user)"),
]
ROOT = Path(__file__).resolve().parents[1]
# Exact INT8 sums against the same sums in float (DequantizeLinear -> float op): float rounding, and an activation
# re-quantized to the neighbouring step where that rounding crosses a step's midpoint.
EXACT = 0.05


def isa_accuracy():
    spec = importlib.util.spec_from_file_location("isa_accuracy", ROOT / "scripts" / "isa_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["isa_accuracy"] = module
    spec.loader.exec_module(module)
    return module


def test_int8_weights_sized_for_the_cpu_survive_a_cpu_without_vnni(reference_teacher, tmp_path):
    arts = []
    for profile in ("x86-avx512-vnni", "x86-avx2"):
        api.export(reference_teacher, profile, tmp_path / profile, api.ExportOptions("onnx", "int8"))
        arts.append(str(tmp_path / profile / "onnx-int8"))
    result = isa_accuracy().compare(arts, cpu="EPYC-Milan", samples=64)
    vnni, avx2 = result["rows"]
    assert (vnni["weight_bits"], avx2["weight_bits"]) == (8, 7)
    # The AVX2 class (emulated): 8-bit weights saturate the pair sums, 7-bit ones give the exact sums.
    assert vnni["emulated_vs_exact"] > 0.1, vnni
    assert avx2["emulated_vs_exact"] < EXACT, avx2
    if result["host_saturates"]:  # this host is of the AVX2 class too: the same kernels, bit for bit
        assert vnni["max_logit_diff"] == 0.0 and avx2["max_logit_diff"] == 0.0, result
    else:  # a VNNI host computes the exact sums for both files, and the 7-bit file the same logits as the AVX2 class
        assert vnni["here_vs_exact"] < EXACT and vnni["max_logit_diff"] > 0.1, vnni
        assert avx2["max_logit_diff"] == 0.0 and avx2["here"] == avx2["emulated"], avx2
