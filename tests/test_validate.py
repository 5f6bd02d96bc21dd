"""edgekit validate and edgekit report on a real compress run of the reference teacher: accuracy in the
artifact's runtime with its intervals and per modality subset, latency measured on the device, measured on another
host (a proxy) or estimated, budgets, statuses and exit codes, measurements from another artifact, and
report.html rendered in headless Chromium."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit import api
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.hardware import host_profile
from edgekit.hardware.estimator import graph_costs
from edgekit.hardware.identity import host_facts
from edgekit.validate import latency_check

from .conftest import ROOT, device_profile_here, run_cli

pytestmark = pytest.mark.slow
PROFILES = ROOT / "edgekit" / "hardware" / "profiles"
# The x86 profile whose INT8 suits this host's CPU (x86-avx512-vnni or x86-avx2); its latency counts as measured
# only on its own device, so the run targets a copy that names this host as its device, the way a user describes
# their own machine. Without either profile's CPU flags, this host is no x86 device.
HOST, WHY = host_profile("x86")
measured_here = pytest.mark.skipif(HOST is None, reason=WHY)
FACTS = host_facts()
RECIPE = {
    "stages": [
        {"kind": "prune", "branch_ratios": {"text": 0.5}, "head_ratio": 0.5},
        {"kind": "distill", "student": "pruned", "epochs": 1},
        # INT8 ships even where FP32 would be faster: these tests validate INT8 artifacts (test_compress times them)
        {"kind": "quantize", "backend": "onnx", "samples": 64, "accuracy_aware": False, "prefer_faster": False},
    ],
    "budgets": {"max_drop": 3.0, "latency_p95_ms": 1000.0},  # a latency gate that load on a shared host cannot trip
}


def rendered(result: dict) -> str:
    """What `edgekit validate` prints for a result (its JSON), without running it again (lines joined: rich wraps
    them)."""
    from edgekit.cli.common import out
    from edgekit.cli.validate import render

    with out.capture() as text:
        render(api.Validation.model_validate(result))
    return " ".join(text.get().split())


def this_host(directory: Path) -> Path:
    """HOST's profile with this host as its device, and a latency budget no load trips."""
    return device_profile_here(directory, HOST or "x86-avx512-vnni")


@pytest.fixture(scope="module")
def run(tmp_path_factory, reference_teacher):
    tmp = tmp_path_factory.mktemp("validate")
    (tmp / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "targets": [str(this_host(tmp))]}))
    r = run_cli("compress", "--recipe", str(tmp / "r.yaml"), "--out", str(tmp / "run"), "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    return tmp / "run", Path(report["artifacts"][0]["path"]).parent, report


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, reference_teacher):
    """The reference teacher as FP32 ONNX: an artifact any CPU profile's validation accepts."""

    out = tmp_path_factory.mktemp("fp32") / "x86"
    result = api.export(reference_teacher, "x86-avx2", out, api.ExportOptions("onnx", "fp32"))
    return Path(result.artifacts[0].path).parent


# -- the estimator ----------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_costs_count_the_teachers_macs_exactly(reference_teacher, tmp_path):
    from edgekit.loading import load_model
    from edgekit.stages.prune import measure
    from edgekit.targets.onnx import export_onnx

    loaded = load_model(reference_teacher)
    path = export_onnx(loaded.model, loaded.io, tmp_path / "t.onnx")
    costs = graph_costs(path, loaded.io)
    assert sum(c[2] for c in costs) == measure(loaded.model, loaded.io)["total"][1]  # torch-side MAC count
    assert {c[1] for c in costs} >= {"Conv", "MatMul", "Softmax"}


def test_costs_count_transposed_convolutions_and_einsums_as_torch_does(tmp_path):
    """The layers the other op lists once disagreed on: a ConvTranspose and an attention-style Einsum are costed
    with the MACs torch's own FlopCounterMode gives the same ops (FLOPs / 2)."""
    import onnx
    import torch
    from onnx import TensorProto, helper
    from torch.utils.flop_counter import FlopCounterMode

    from edgekit.io import IOSpec, TensorSpec

    x, q, k = torch.zeros(1, 8, 5, 5), torch.zeros(1, 2, 4, 6), torch.zeros(1, 2, 3, 6)
    w = torch.zeros(8, 3, 3, 3)  # [C_in, C_out / groups, kH, kW]
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.conv_transpose2d(x, w, stride=2)
        torch.einsum("bhqd,bhkd->bhqk", q, k)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], "up", strides=[2, 2]),
         helper.make_node("Einsum", ["q", "k"], ["s"], "scores", equation="bhqd,bhkd->bhqk")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(t.shape)) for n, t in (("x", x), ("q", q), ("k", k))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "s")],
        [onnx.numpy_helper.from_array(w.numpy(), "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(tmp_path / "m.onnx"))
    io = IOSpec(
        tuple(TensorSpec(n, "float32", tuple(t.shape), "image") for n, t in (("x", x), ("q", q), ("k", k))),
        (TensorSpec("y", "float32", (1, 3, 11, 11), "other"), TensorSpec("s", "float32", (1, 2, 4, 3), "other")),
    )
    costs = {op: macs for _, op, macs, _ in graph_costs(tmp_path / "m.onnx", io)}
    assert sum(costs.values()) == counter.get_total_flops() // 2
    assert costs["Einsum"] == 1 * 2 * 4 * 3 * 6


def test_calibration_table_in_the_docs_is_the_shipped_calibration():
    """docs/benchmarks.md's calibration table lists every point of edgekit/hardware/calibration.json, the file
    the estimate intervals come from (scripts/calibrate_estimator.py writes both)."""
    from edgekit.hardware.estimator import CALIBRATION

    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    for p in json.loads(CALIBRATION.read_text())["points"]:
        ratio = p["estimate_ms"] / p["measured_ms"]
        assert (f"| {p['kind']} | {p['profile']} | {p['network']} | {p['precision']} | {p['estimate_ms']:.3f} "
                f"| {p['measured_ms']:.3f} | {p['statistic']} | {ratio:.2f}x |") in doc  # fmt: skip


# -- validate ---------------------------------------------------------------------------------------------


@measured_here
def test_compress_validates_its_artifact_measured_on_its_device(run):
    _, _, report = run
    v = report["validation"][0]
    assert v["profile"] == "this-host" and v["the_device"] and v["gated"]
    row = v["rows"][0]
    assert row["status"] == "pass" and row["latency_source"] == "measured" and 0 < row["p50_ms"] <= row["p95_ms"]
    assert row["peak_ram_mb"] > 0 and row["ops"]["by_op_type"] and not row["unchecked"] and "estimate" not in row
    assert row["accuracy_drop"] == report["artifacts"][0]["accuracy_drop"]
    # one reference: the teacher as given, on val for the search and on test for the verdict
    ref = report["reference"]
    assert ref["verdict"] == {"split": "test", "accuracy": report["baseline"]["accuracy"]}
    assert ref["search"]["split"] == "val" and 0.5 < ref["search"]["accuracy"] <= 1


@measured_here
def test_validate_json_rows_carry_intervals_subsets_and_exit_codes(run, reference_teacher):
    _, art, _ = run
    profile = str(this_host(art.parent))
    args = ["validate", str(art), "--profile", profile, "--baseline", str(reference_teacher)]
    r = run_cli(*args, "--max-subset-drop", "100", "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    row = out["rows"][0]
    assert {"artifact", "status", "accuracy", "accuracy_drop", "p50_ms", "p95_ms", "latency_source"} <= set(row)
    assert out["verdict"] == "pass" and row["latency_source"] == "measured" and out["split"] == "avdigits/test"
    n = row["samples"]
    assert n == out["baseline"]["samples"] == 450
    lo, hi = row["accuracy_ci"]
    assert lo < row["accuracy"] < hi and hi - lo > 100 / n / 100  # wider than one sample
    dlo, dhi = row["drop_ci"]
    assert dlo <= row["accuracy_drop"] <= dhi
    # every modality subset, in the artifact's runtime, against the baseline on the same subset
    assert set(row["subsets"]) == {"image", "text", "audio", "image+text", "image+audio", "text+audio"}
    for name, sub in row["subsets"].items():
        assert sub["drop"] == pytest.approx(100 * (out["baseline"]["subsets"][name] - sub["accuracy"]), abs=0.01)
        assert sub["drop_ci"][0] <= sub["drop"] <= sub["drop_ci"][1]
    gate = next(c for c in row["checks"] if c["budget"] == "max_subset_drop")
    assert gate["status"] == "pass" and gate["value"] == max(s["drop"] for s in row["subsets"].values())
    r = run_cli(*args, "--max-size-mb", "0.1")
    assert r.code == 1 and "max_size_mb" in r.stdout and "fail" in r.stdout and "95% CI" in r.stdout
    assert "edgekit: error: budget missed: " in r.stderr and "max_size_mb" in r.stderr  # one line, as compress says
    assert "modalities missing: image only" in r.stdout


@pytest.mark.parametrize("target", ["x86-avx2", pytest.param("arm64-cortex-a76", marks=pytest.mark.heavy)])
def test_latency_measured_on_another_host_is_a_proxy(fp32, reference_teacher, target):
    """This host is neither the AVX2 laptop nor a Raspberry Pi 5: latency measured here is shown as a proxy and
    never decides; the estimate's interval does."""
    r = run_cli("validate", str(fp32), "--profile", target, "--baseline", str(reference_teacher), "--threads", "1",
                "--json")  # fmt: skip
    out = json.loads(r.stdout)
    row = out["rows"][0]
    assert not out["the_device"] and re.search("does not match|lacks", out["not_the_device"])
    assert row["latency_source"] == "proxy" and row["p95_ms"] > 0 and "not_the_device" in row
    gate = next(c for c in row["checks"] if c["budget"] == "latency_p95_ms")
    low, high = row["estimate"]["interval_ms"]
    expected = "pass" if high <= gate["limit"] else "fail" if low > gate["limit"] else "unverified"
    if expected != "unverified" and (row["p95_ms"] <= gate["limit"]) != (expected == "pass"):
        expected = "unverified"  # the proxy contradicts the estimate
    assert gate["status"] == expected and gate["value"] == high and "not the device" in gate["why"]
    ram = next(c for c in row["checks"] if c["budget"] == "max_peak_ram_mb")
    assert ram["status"] == "unverified"  # RAM measured on another host decides nothing either
    assert row["status"] != "pass" and r.code in (1, 3)


def test_jetson_latency_is_an_estimate_interval_and_unverified_in_between(run, reference_teacher, tmp_path):
    _, art, _ = run
    jetson = tmp_path / "jetson.yaml"  # the Orin Nano profile, deploying the Q/DQ ONNX this run made
    spec = yaml.safe_load((PROFILES / "jetson-orin-nano-8gb.yaml").read_text())
    jetson.write_text(yaml.safe_dump({**spec, "exports": [{"format": "onnx", "precision": "int8"}]}))
    args = ["validate", str(art), "--profile", str(jetson), "--baseline", str(reference_teacher), "--estimate",
            "--max-drop", "100", "--max-subset-drop", "100", "--threads", "1"]  # fmt: skip
    r = run_cli(*args, "--json")
    row = json.loads(r.stdout)["rows"][0]
    ram = next(c for c in row["checks"] if c["budget"] == "max_peak_ram_mb")
    assert ram["status"] == "unverified" and ram["why"] == "no measurement on the device" and r.code == 3
    # Without a RAM budget, the latency budget alone decides, by the estimate's interval.
    budgets = {k: v for k, v in spec["budgets"].items() if k != "max_peak_ram_mb"}
    jetson.write_text(
        yaml.safe_dump({**spec, "budgets": budgets, "exports": [{"format": "onnx", "precision": "int8"}]})
    )
    assert row["latency_source"] == "estimated" and row["estimate"]["source"] == "estimated"
    low, high = row["estimate"]["interval_ms"]
    cal = row["estimate"]["calibration"]
    assert cal["kind"] == "gpu" and row["p50_ms"] == row["estimate"]["estimate_ms"]
    assert low == pytest.approx(row["p50_ms"] / cal["high"], rel=1e-3) and high > low
    assert row["peak_ram_mb"] is None and row["unchecked"] == []
    assert latency_check(row, low / 2)["status"] == "fail"  # even the optimistic end is over
    r = run_cli(*args, "--latency-p95-ms", f"{high * 2:.6f}", "--json")
    assert r.code == 0 and json.loads(r.stdout)["verdict"] == "pass"  # the pessimistic end fits
    r = run_cli(*args, "--latency-p95-ms", f"{(low + high) / 2:.6f}", "--json")
    result = json.loads(r.stdout)
    assert r.code == 3 and result["verdict"] == "unverified"
    assert "edgekit: unverified: only the device decides " in r.stderr and "latency_p95_ms" in r.stderr
    assert "unverified, only the device decides" in rendered(result) and "estimated" in rendered(result)


def test_measurements_from_the_device_supersede_the_estimate(run, reference_teacher, tmp_path):
    _, art, _ = run
    m = run_cli("profile", str(art), "--runs", "5", "--json")
    (tmp_path / "m.json").write_text(m.stdout)
    r = run_cli("validate", str(art), "--profile", str(this_host(tmp_path)), "--baseline", str(reference_teacher),
                "--estimate", "--measurements", str(tmp_path / "m.json"), "--json")  # fmt: skip
    row = json.loads(r.stdout)["rows"][0]
    assert row["latency_source"] == ("measured" if HOST else "proxy")
    assert row["measurements"] == str(tmp_path / "m.json")
    # The file records the identity of the host it ran on: against a profile of another device, it is a proxy.
    r = run_cli("validate", str(art), "--profile", "x86-avx512-vnni", "--measurements", str(tmp_path / "m.json"),
                "--json")  # fmt: skip
    if json.loads(m.stdout)["host"]["identity"]["cpu_model"].startswith("AMD EPYC") and FACTS["cpus"] == 2:
        pytest.skip("this host is the x86-avx512-vnni profile's device")
    assert json.loads(r.stdout)["rows"][0]["latency_source"] == "proxy"
    other = json.loads(m.stdout)
    other["artifact"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    r = run_cli("validate", str(art), "--profile", "x86", "--measurements", str(tmp_path / "other.json"))
    assert r.code == 2 and "are of another artifact" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_profile_without_budgets_gates_nothing(run, reference_teacher, tmp_path):
    _, art, _ = run
    spec = yaml.safe_load((PROFILES / "x86-avx512-vnni.yaml").read_text())
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**spec, "name": "no-budgets", "budgets": {}}))
    r = run_cli("validate", str(art), "--profile", str(tmp_path / "p.yaml"), "--baseline", str(reference_teacher),
                "--estimate", "--threads", "1")  # fmt: skip
    assert r.code == 0 and "nothing was gated" in r.stdout


def test_wrong_format_and_broken_artifacts_are_errors(run, tmp_path):
    _, art, _ = run
    r = run_cli("validate", str(art), "--profile", "android-arm64", "--json")
    row = json.loads(r.stdout)["rows"][0]
    assert r.code == 1 and row["status"] == "error" and "deploys executorch, ort-mobile, not onnx" in row["error"]
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    (broken / "model.onnx").write_bytes(b"not onnx")
    r = run_cli("validate", str(broken), "--profile", "x86", "--json")
    assert r.code == 1 and "does not match its manifest hash" in json.loads(r.stdout)["rows"][0]["error"]


# -- INT8 across CPUs -------------------------------------------------------------------------------------


def test_int8_weights_are_sized_for_the_profiles_cpu(run):
    """Full 8-bit weights saturate onnxruntime's x86 kernels without VNNI: validating such an artifact against
    the AVX2 profile is refused, naming the missing feature and the fix."""
    _, art, _ = run
    manifest = json.loads((art / "manifest.json").read_text())
    bits = manifest["meta"]["quantization"]["weight_bits"]
    assert bits == (7 if HOST == "x86-avx2" else 8)
    assert manifest["meta"]["accuracy"]["split"] == "test" and manifest["meta"]["accuracy"]["isa"]
    r = run_cli("validate", str(art), "--profile", "x86-avx2", "--estimate", "--json")
    row = json.loads(r.stdout)["rows"][0]
    if bits == 8:
        assert r.code == 1 and row["status"] == "error"
        assert "saturate on x86-avx2's CPU (no avx512_vnni or avx_vnni)" in row["error"]
        assert "edgekit export --target x86-avx2" in row["error"]
    else:
        assert "error" not in row


def test_accuracy_below_the_build_hosts_fails_and_says_why(run, reference_teacher, tmp_path):
    """The manifest records the accuracy where the artifact was built; a loss on this CPU beyond the accuracy
    budget fails. Here the record claims a build host 3 points more accurate (the manifest is data: its files'
    hashes still match)."""
    _, art, _ = run
    moved = tmp_path / "art"
    shutil.copytree(art, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    record = manifest["meta"]["accuracy"]
    record.update(value=record["value"] + 0.03, cpu="a faster CPU")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    args = ["validate", str(moved), "--profile", "x86-avx512-vnni", "--estimate", "--baseline", str(reference_teacher)]
    r = run_cli(*args, "--json")
    result = json.loads(r.stdout)
    row = result["rows"][0]
    assert r.code == 1 and row["accuracy_shift"] == pytest.approx(3.0, abs=0.01) and row["built_on"] == "a faster CPU"
    check = next(c for c in row["checks"] if c["budget"] == "max_accuracy_shift")
    assert check["ok"] is False and "below its accuracy on the build host (a faster CPU)" in check["why"]
    assert "max_accuracy_shift 3.000 > 1.0 (3.00 points below its accuracy on the build host" in rendered(result)


def test_a_cpu_without_vnni_is_named_as_the_cause():
    from edgekit.artifact import Artifact
    from edgekit.validate import cpu_shift

    io = io_spec(AVDigitsConfig(), 41)
    record = {"value": 0.97, "data": "avdigits", "split": "test", "cpu": "Zen 4", "isa": ["avx2", "avx512_vnni"]}
    art = Artifact(
        "onnx", "int8", Path("."), "model.onnx", io, "", {"accuracy": record, "quantization": {"weight_bits": 8}}
    )
    shift = cpu_shift(art, 0.93, "avdigits", "test", ("avx2", "fma"))
    assert shift["accuracy_shift"] == 4.0 and "lacks avx512_vnni or avx_vnni" in shift["cpu_note"]
    assert "x86-avx2" in shift["cpu_note"]
    seven = Artifact(
        "onnx", "int8", Path("."), "model.onnx", io, "", {"accuracy": record, "quantization": {"weight_bits": 7}}
    )
    assert "cpu_note" not in cpu_shift(seven, 0.93, "avdigits", "test", ("avx2", "fma"))
    assert "cpu_note" not in cpu_shift(art, 0.93, "avdigits", "test", ("avx2", "avx512_vnni"))
    assert cpu_shift(art, 0.93, "avdigits", "val", ("avx2",)) == {}  # recorded on another split


# -- report.html ------------------------------------------------------------------------------------------


@measured_here
def test_report_html_is_self_contained_and_renders_in_chromium(run, reference_teacher, tmp_path):
    run_dir, art, report = run
    r = run_cli(
        "validate",
        str(art),
        "--profile",
        str(this_host(art.parent)),
        "--baseline",
        str(reference_teacher),
        "--report",
        str(run_dir),
        *("--max-drop", "3", "--latency-p95-ms", "1000"),  # the run's own budgets: this test checks the page
    )
    assert r.code == 0, r.stdout + r.stderr
    r = run_cli("report", str(run_dir))
    assert r.code == 0, r.stderr
    page = run_dir / "report.html"
    text = page.read_text()
    assert "<svg" in text and "this-host" in text and "95% CI" in text and "drop 95% CI" in text
    assert "Every drop is against the teacher as given: the INT8 search on val" in text
    assert "image only" in text  # the per-subset drops
    # What this run recorded, not headings that are always written: its lineage, its validation, its sensitivity.
    artifact = report["artifacts"][0]
    assert artifact["sha256"][:16] in text and f"accuracy {report['baseline']['accuracy']:.4f}" in text
    assert f"{artifact['accuracy']:.4f}" in text and report["stages"][-1]["name"] in text
    assert "No quantize stage ran accuracy-aware in this run." in text  # its recipe turned the search off
    # No request of any kind: only in-document references (#id) and XML namespace names.
    assert not re.findall(r"""(?:src|href)=["'](?!#)|url\((?!#)|@import""", text)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make setup` installs it (scripts/system-deps.sh)")
        pytest.skip("chromium is not installed (Debian: chromium)")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    dom = dom.stdout
    assert "<table" in dom and "<svg" in dom and "Accuracy vs latency" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # rendered content, not a blank page


def test_report_needs_a_run_directory(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.code == 2 and "has no report.json" in r.stderr


@pytest.mark.openvino
def test_export_records_costs_for_every_format(tmp_path, avdigits):
    from edgekit.loading import save_model_package
    from edgekit.models import build_fusion_model

    kwargs = {"arch": "late", "preset": "small", "vocab_size": 41, "max_len": 32}
    save_model_package(build_fusion_model(**kwargs).eval(), io_spec(AVDigitsConfig(), 41), tmp_path / "pkg",
                       factory="edgekit.models:build_fusion_model", kwargs=kwargs)  # fmt: skip
    result = api.export(tmp_path / "pkg", "x86", tmp_path / "x86", api.ExportOptions("openvino", "fp32"))
    for a in result.artifacts:
        costs = json.loads((Path(a.path).parent / "manifest.json").read_text())["meta"]["costs"]
        assert costs and all(len(c) == 4 for c in costs)
