"""INT8 on an x86 CPU without VNNI, run for real on any x86 host: QEMU's user-mode emulator runs the artifacts as
an AVX2-only AMD Zen 3 (EPYC-Milan), so onnxruntime picks the kernels it picks there (scripts/isa_accuracy.py).

The reference teacher's INT8 ONNX with 8-bit weights (for x86-avx512-vnni) computes other logits there, because
the AVX2 kernels' 16-bit pair sums saturate; with 7-bit weights (for x86-avx2) it computes the same logits, bit for
bit, as on this host."""

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
    assert avx2["max_logit_diff"] == 0.0 and avx2["here"] == avx2["emulated"], avx2
    assert vnni["max_logit_diff"] > 0.1, vnni  # saturated sums: the same file computes other logits there
