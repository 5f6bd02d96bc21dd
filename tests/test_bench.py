"""scripts/bench.py end to end on a tiny model: every row is built and run in its runtime, and the
Markdown block and JSON it writes have what a later run compares against."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model

from .conftest import ROOT

# heavy: `make bench` runs the full script; `make test-all` runs this smoke test of it.
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.openvino, pytest.mark.executorch]

KWARGS = {"arch": "attention", "preset": "small", "vocab_size": 41, "max_len": 32}
FULL = {
    "stages": [
        {"kind": "prune", "pruning_ratio": 0.3},
        {"kind": "distill", "student": "pruned", "epochs": 1},
        {"kind": "quantize", "backend": "openvino", "samples": 32},
    ],
    "budgets": {"max_drop": 100},
}
PTQ = {"stages": [{"kind": "quantize", "backend": "openvino", "samples": 32}], "budgets": {"max_drop": 100}}
ROWS = [
    "torch eager FP32 (teacher)", "onnxruntime FP32", "OpenVINO FP32 (f32 hint)", "OpenVINO default precision",
    "EdgeKit PTQ ONNX Q/DQ INT8", "EdgeKit PTQ OpenVINO INT8", "EdgeKit PTQ ExecuTorch XNNPACK INT8",
    "onnxruntime quantize_dynamic", "onnxruntime quantize_static (Q/DQ)", "OpenVINO + nncf.quantize",
    "OpenVINO + nncf.quantize_with_accuracy_control", "EdgeKit accuracy-aware PTQ", "EdgeKit distill + prune (FP32)",
    "EdgeKit distill + prune + INT8 (recipe, openvino)", "EdgeKit distill + prune + INT8 (export, onnxruntime)",
]  # fmt: skip


def test_bench_writes_every_row_and_keeps_the_hand_written_text(tmp_path, avdigits):
    torch.manual_seed(0)
    model = build_fusion_model(**KWARGS).eval()
    save_model_package(model, io_spec(AVDigitsConfig(), 41), tmp_path / "pkg",
                       factory="edgekit.models:build_fusion_model", kwargs=KWARGS)  # fmt: skip
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(FULL))
    (tmp_path / "ptq.yaml").write_text(yaml.safe_dump(PTQ))
    doc = tmp_path / "out" / "bench.md"
    doc.parent.mkdir()
    doc.write_text("# Mine\n\nkept above\n\n<!-- bench:begin (generated, do not edit) -->\nold\n"
                   "<!-- bench:end -->\n\nkept below\n")  # fmt: skip
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", str(tmp_path / "pkg"),
           "--recipe", str(tmp_path / "full.yaml"), "--ptq-recipe", str(tmp_path / "ptq.yaml"),
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "bench"), "--calib-samples", "16",
           "--test-samples", "32", "--val-samples", "32", "--rounds", "1", "--block", "0.02",
           "--fidelity-seconds", "1"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr[-3000:]

    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ROWS
    for r in rows.values():
        assert {"name", "accuracy", "accuracy_drop", "p50_ms_b1", "ratio_vs_eager_b1", "size_mb"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and r["p50_ms_b1"] > 0 and r["p50_ms_b16"] > 0 and r["size_mb"] > 0
    assert rows["torch eager FP32 (teacher)"]["ratio_vs_eager_b1"] == 1.0
    assert rows["onnxruntime FP32"]["accuracy_drop"] == 0.0  # the same FP32 graph
    assert rows["EdgeKit PTQ OpenVINO INT8"]["size_mb"] < rows["OpenVINO FP32 (f32 hint)"]["size_mb"]
    assert result["host"]["versions"]["openvino"] and result["host"]["isa"]
    assert len(result["stability"]["repeats"]) == 2 and result["targets"]
    assert result["ops_b1"]["by_op_type"]
    fidelity = result["fidelity"]["rows"]
    assert fidelity and all(f["benchmark_app_p50_ms"] > 0 and f["edgekit_p50_ms"] > 0 for f in fidelity)

    text = doc.read_text()
    assert text.startswith("# Mine\n\nkept above") and text.rstrip().endswith("kept below") and "old" not in text
    assert "| EdgeKit distill + prune (FP32) |" in text and "### Targets" in text and "### Repeatability" in text
