"""scripts/bench.py end to end on a tiny model: every row is built and run in its runtime, and the
Markdown block and JSON it writes have what a later run compares against. The results are kept per host (CPU
model and ISA class): a run replaces only its own host's block and JSON entry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model
from edgekit.profiling.host import host_info

from .conftest import ROOT

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
SEARCH = {  # one point: the recipe's own, which the search runs first
    "stages": [
        {"kind": "prune", "branch_ratios": {"text": 0.5}, "head_ratio": 0.5},
        {"kind": "distill", "student": "pruned", "epochs": 1},
        {"kind": "quantize", "backend": "onnx", "samples": 32},
    ],
    "budgets": {"max_drop": 100, "latency_p95_ms": 1000, "size_mb": 1000},
    "search": {"prune_ratios": [0.5], "branches": ["text"], "head_ratios": [0.5], "distill_epochs": [1],
               "formats": ["onnx"]},
}  # fmt: skip
ROWS = [
    "torch eager FP32 (teacher)", "torch eager FP32 (teacher), 1 thread", "onnxruntime FP32",
    "OpenVINO FP32 (f32 hint)", "OpenVINO default precision",
    "EdgeKit PTQ ONNX Q/DQ INT8", "EdgeKit PTQ OpenVINO INT8", "EdgeKit PTQ ExecuTorch XNNPACK INT8",
    "onnxruntime quantize_dynamic", "onnxruntime quantize_static (Q/DQ)", "OpenVINO + nncf.quantize",
    "OpenVINO + nncf.quantize_with_accuracy_control", "EdgeKit accuracy-aware PTQ", "EdgeKit distill + prune (FP32)",
    "EdgeKit distill + prune + INT8 (recipe, openvino)", "EdgeKit distill + prune + INT8 (export, onnxruntime)",
    "EdgeKit searched (trial #0, onnxruntime, 1 thread)", "EdgeKit searched (trial #0, onnxruntime, 2 threads)",
]  # fmt: skip


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench

    return bench


def test_host_key_names_the_cpu_and_its_isa_class(bench):
    assert bench.host_key({"cpu": "AMD EPYC", "isa": ["avx2", "fma", "avx512f", "avx512_vnni"]}) == (
        "AMD EPYC, avx512_vnni"
    )
    assert bench.host_key({"cpu": "AMD EPYC", "isa": ["avx", "avx2", "fma"]}) == "AMD EPYC, avx2 only"
    assert bench.host_key({"cpu": "Xeon", "isa": ["avx512_vnni", "amx_int8"]}) == "Xeon, avx512_vnni + amx"
    assert bench.host_key({"cpu": "a -- b >", "isa": []}) == "a - b , no SIMD flags known"  # safe in a comment


def test_a_peer_is_beaten_on_accuracy_only_by_a_paired_interval_above_zero(bench):
    """One test sample in 450 is no measured win (the quantize_static row once said yes on it); forty are."""
    right = "1" * 440 + "0" * 10

    def row(name, drop, wrong_more=0):
        correct = right[: 440 - wrong_more] + "0" * wrong_more + right[440:]
        return {"name": name, "accuracy_drop": drop, "p50_ms_b1": 1.0, "correct": correct}

    peer = row("peer", 0.22, wrong_more=1)
    _, said, met = bench.versus(peer, [row("ours", 0.0)], "accuracy_drop", str)
    assert not met and "paired 95% interval of the difference 0.00 to 0.67 points" in said
    _, said, met = bench.versus(row("peer", 8.9, wrong_more=40), [row("ours", 0.0)], "accuracy_drop", str)
    assert met


def test_update_doc_keeps_one_block_per_host(bench, tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(
        "# B\n\nabove\n\n<!-- bench:begin (generated, do not edit) -->\nold run\n<!-- bench:end -->\n\n"
        "between\n\n<!-- calibration:begin (generated, do not edit) -->\ncal\n<!-- calibration:end -->\n"
    )
    bench.update_doc(doc, "ours 1", key="B, avx2 only", legacy_key="A, avx512_vnni")  # the old block is A's
    bench.update_doc(doc, "C's", key="C, avx512_vnni")
    bench.update_doc(doc, "ours 2", key="B, avx2 only")
    bench.update_doc(doc, "cal 2", "calibration")  # scripts/calibrate_estimator.py: one block, not per host
    assert doc.read_text() == (
        "# B\n\nabove\n\n<!-- bench:begin A, avx512_vnni -->\nold run\n<!-- bench:end A, avx512_vnni -->\n\n"
        "<!-- bench:begin B, avx2 only -->\nours 2\n<!-- bench:end B, avx2 only -->\n\n"
        "<!-- bench:begin C, avx512_vnni -->\nC's\n<!-- bench:end C, avx512_vnni -->\n\n"
        "between\n\n<!-- calibration:begin (generated, do not edit) -->\ncal 2\n<!-- calibration:end -->\n"
    )


def test_results_json_is_per_host_and_reads_a_single_result_as_its_hosts(bench, tmp_path):
    path = tmp_path / "b.json"
    assert bench.load_results(path) == {}
    old = {"host": {"cpu": "AMD EPYC", "isa": ["avx2", "avx512_vnni"]}, "rows": [1]}
    path.write_text(json.dumps(old))
    assert bench.load_results(path) == {"AMD EPYC, avx512_vnni": old}
    path.write_text(json.dumps({"hosts": {"X, avx2 only": {"rows": [2]}}}))
    assert bench.load_results(path) == {"X, avx2 only": {"rows": [2]}}
    bench.save_results(path, "searches", "X, avx2 only", {"trials": 3})  # --search keeps the hosts' results
    bench.save_results(path, "hosts", "Y, avx2 only", {"rows": [3]})  # and the main bench keeps the searches
    assert json.loads(path.read_text()) == {"hosts": {"X, avx2 only": {"rows": [2]}, "Y, avx2 only": {"rows": [3]}},
                                            "searches": {"X, avx2 only": {"trials": 3}}}  # fmt: skip
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="other hosts' results"):
        bench.load_results(path)


def test_the_committed_results_are_per_host():
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    hosts = json.loads((ROOT / "docs" / "benchmarks.json").read_text())["hosts"]
    assert hosts and "bench:begin (generated" not in doc
    for key, result in hosts.items():
        assert f"<!-- bench:begin {key} -->\n### Host: {key}\n" in doc and f"<!-- bench:end {key} -->" in doc
        assert {"host", "rows", "targets", "settings"} <= set(result)


# heavy: `make bench` runs the full script; `make test-all` runs this smoke test of it.
@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.openvino
@pytest.mark.executorch
def test_bench_writes_every_row_and_keeps_the_hand_written_text(tmp_path, avdigits, bench):
    torch.manual_seed(0)
    model = build_fusion_model(**KWARGS).eval()
    save_model_package(model, io_spec(AVDigitsConfig(), 41), tmp_path / "pkg",
                       factory="edgekit.models:build_fusion_model", kwargs=KWARGS)  # fmt: skip
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(FULL))
    (tmp_path / "ptq.yaml").write_text(yaml.safe_dump(PTQ))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(SEARCH))
    doc = tmp_path / "out" / "bench.md"
    doc.parent.mkdir()
    key, other = bench.host_key(host_info()), "Another CPU, avx2 only"
    doc.write_text(f"# Mine\n\nkept above\n\n<!-- bench:begin {key} -->\nold\n<!-- bench:end {key} -->\n\n"
                   f"<!-- bench:begin {other} -->\ntheirs\n<!-- bench:end {other} -->\n\nkept below\n")  # fmt: skip
    (tmp_path / "out" / "bench.json").write_text(json.dumps({"hosts": {other: {"rows": ["theirs"]}}}))
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", str(tmp_path / "pkg"),
           "--recipe", str(tmp_path / "full.yaml"), "--ptq-recipe", str(tmp_path / "ptq.yaml"),
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "bench"), "--calib-samples", "16",
           "--test-samples", "32", "--val-samples", "32", "--rounds", "1", "--block", "0.02",
           "--fidelity-seconds", "1", "--search-recipe", str(tmp_path / "search.yaml"), "--search-minutes", "0.1",
           "--threads", "2"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr[-3000:]

    hosts = json.loads((tmp_path / "out" / "bench.json").read_text())["hosts"]
    assert hosts[other] == {"rows": ["theirs"]} and set(hosts) == {key, other}
    result = hosts[key]
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ROWS
    for r in rows.values():
        assert {"name", "accuracy", "accuracy_drop", "p50_ms_b1", "ratio_vs_eager_b1", "size_mb"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and r["p50_ms_b1"] > 0 and r["p50_ms_b16"] > 0 and r["size_mb"] > 0
    eager = min(rows[n]["p50_ms_b1"] for n in ROWS[:2])  # each ratio is against eager at its faster thread count
    assert max(rows[n]["ratio_vs_eager_b1"] for n in ROWS[:2]) == 1.0 and eager > 0
    found = result["search"]  # the searched row's recipe, next to the results
    assert found["trial"] == 0 and Path(found["recipe"]).parent == tmp_path / "out" / "benchmarks-recipes"
    assert yaml.safe_load(Path(found["recipe"]).read_text())["stages"][0]["kind"] == "prune"
    assert rows["onnxruntime FP32"]["accuracy_drop"] == 0.0  # the same FP32 graph
    assert rows["EdgeKit PTQ OpenVINO INT8"]["size_mb"] < rows["OpenVINO FP32 (f32 hint)"]["size_mb"]
    assert result["host"]["versions"]["openvino"] and result["host"]["isa"]
    assert len(result["stability"]["repeats"]) == 2 and result["targets"]
    assert result["ops_b1"]["by_op_type"]
    fidelity = result["fidelity"]["rows"]
    assert fidelity and all(f["benchmark_app_p50_ms"] > 0 and f["edgekit_p50_ms"] > 0 for f in fidelity)

    text = doc.read_text()
    assert text.startswith("# Mine\n\nkept above") and text.rstrip().endswith("kept below") and "old" not in text
    ours = text[text.index(f"<!-- bench:begin {key} -->") : text.index(f"<!-- bench:end {key} -->")]
    assert f"### Host: {key}" in ours and "| EdgeKit distill + prune (FP32) |" in ours
    assert "#### Targets" in ours and "#### Repeatability" in ours
    assert text.index(f"<!-- bench:end {key} -->") < text.index(f"<!-- bench:begin {other} -->\ntheirs\n")
