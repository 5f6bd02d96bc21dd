"""What a verdict may claim: device identity, estimate intervals, accuracy intervals and the subset gate, each on
its own (no CLI). tests/test_validate.py runs them end to end on real artifacts."""

import json
import re

import numpy as np
import pytest
import yaml

from edgekit.agent import l4t_release
from edgekit.data.adapter import subset_names
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.errors import UsageError
from edgekit.hardware import HardwareProfile, profile_names, resolve_profile
from edgekit.hardware.estimator import CALIBRATION, calibration, estimate
from edgekit.hardware.identity import host_facts
from edgekit.stats import budget_note, paired_drop, samples_for, wilson
from edgekit.validate import latency_check, row_status, subset_check

from .conftest import ROOT

# -- device identity --------------------------------------------------------------------------------------

ZEN5 = {"cpu_model": "AMD EPYC 9R45", "cpus": 2, "isa": ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]}
ORIN = {"cpu_model": "ARMv8 Processor rev 1 (v8l)", "cpus": 6, "isa": ["asimd", "asimddp"], "l4t": "36.4.3",
        "device_model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"}  # fmt: skip


def test_cpu_flags_are_not_the_device():
    """An AVX2 server is not the AVX2 laptop, an Arm server with dot-product is not a Raspberry Pi 5: only the
    identity recognises a device."""
    avx2_server = {"cpu_model": "AMD EPYC 7R13 Processor", "cpus": 8, "isa": ["avx2", "fma"]}
    assert "does not match 'i5-10210U'" in resolve_profile("x86-avx2")[0].not_the_device(avx2_server)
    graviton = {"cpu_model": "Neoverse-N1", "cpus": 4, "isa": ["asimd", "asimdhp", "asimddp"], "device_model": None}
    assert "device_model None" in resolve_profile("arm64-cortex-a76")[0].not_the_device(graviton)
    pi5 = {**graviton, "device_model": "Raspberry Pi 5 Model B Rev 1.0"}
    assert resolve_profile("arm64-cortex-a76")[0].not_the_device(pi5) is None
    vnni = resolve_profile("x86-avx512-vnni")[0]
    assert vnni.not_the_device(ZEN5) is None
    assert vnni.not_the_device({**ZEN5, "cpus": 16}) == "16 usable CPUs, not 2"
    assert "lacks avx512_vnni" in vnni.not_the_device({**ZEN5, "isa": ["avx2", "avx512f", "avx512bw", "avx512vl"]})


def test_jetson_identity_is_the_module_and_its_l4t_release():
    nano = resolve_profile("jetson-orin-nano")[0]
    assert nano.not_the_device(ORIN) is None
    assert "l4t '35.6.0'" in nano.not_the_device({**ORIN, "l4t": "35.6.0"})
    assert "device_model" in resolve_profile("jetson-agx-orin")[0].not_the_device(ORIN)
    assert l4t_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64") == "36.4.3"
    assert l4t_release(None) is None


def test_every_shipped_profile_names_its_device_and_this_host_is_described():
    assert all(resolve_profile(n)[0].identity is not None for n in profile_names())
    facts = host_facts()
    assert facts["cpus"] >= 1 and facts["cpu_model"] and set(facts) >= {"isa", "device_model", "l4t", "android_soc"}


def test_a_profile_without_identity_recognises_no_host(tmp_path):
    spec = yaml.safe_load((ROOT / "edgekit/hardware/profiles/x86-avx2.yaml").read_text())
    spec.pop("identity")
    p = HardwareProfile.model_validate(spec)
    laptop = {**ZEN5, "cpu_model": "i5-10210U", "cpus": 8}
    assert p.not_the_device(laptop).startswith("profile x86-avx2 names no device identity")
    with pytest.raises(ValueError, match="is not a regular expression"):
        HardwareProfile.model_validate({**spec, "identity": {"cpu_model": "(unclosed"}})


# -- estimates are intervals ------------------------------------------------------------------------------


def test_calibration_ranges_come_from_points_measured_on_a_device():
    """Only points measured on a profile's own device calibrate, per kind and precision (a precision without
    points takes its kind's), rounded outwards so the interval never narrows."""
    points = json.loads(CALIBRATION.read_text())["points"]
    for kind, precision in (("gpu", "int8"), ("cpu", "fp32"), ("cpu", "int8")):
        ratios = [p["estimate_ms"] / p["measured_ms"] for p in points
                  if p["kind"] == kind and p["precision"] == precision and p["device"]]  # fmt: skip
        cal = calibration(kind, precision)
        assert cal["points"] == len(ratios) >= 3 and cal["precision"] == precision
        assert cal["low"] <= min(ratios) < cal["low"] + 0.01 and cal["high"] - 0.01 < max(ratios) <= cal["high"]
    assert calibration("gpu", "fp16")["precision"] == "any" and calibration("npu", "int8") is None
    cpu = [p for p in points if p["kind"] == "cpu"]
    assert any("MiniLM" in p["network"] for p in cpu)  # the transformer point
    assert {"teacher", "student"} <= {w for p in cpu for w in re.findall(r"\w+", p["network"])}


def test_the_estimate_interval_divides_by_the_calibration_ratios():
    costs = [("conv", "Conv", 10_000_000, 200_000), ("mm", "MatMul", 1_000_000, 50_000)]
    profile = resolve_profile("jetson-orin-nano")[0]
    e = estimate(costs, profile, "int8")
    cal = calibration("gpu", "int8")
    assert e["interval_ms"] == [round(e["estimate_ms"] / cal["high"], 4), round(e["estimate_ms"] / cal["low"], 4)]
    assert e["interval_ms"][0] <= e["estimate_ms"] / cal["high"] + 1e-4 and "floor_ms" not in e


def _row(source, p95, low, high, why_not="cpu_model 'x' does not match 'y'"):
    est = {"estimate_ms": (low + high) / 2, "interval_ms": [low, high],
           "calibration": {"kind": "gpu", "precision": "int8", "low": 0.6, "high": 0.83, "points": 3},
           "profile": "p"}  # fmt: skip
    row = {"latency_source": source, "p95_ms": p95, "measured_on": "Intel Xeon", "estimate": est}
    return {**row, "not_the_device": why_not} if source == "proxy" else row


def test_an_estimate_passes_only_when_its_pessimistic_end_fits():
    assert latency_check(_row("estimated", 1.0, 0.8, 1.2), 1.5)["status"] == "pass"
    middle = latency_check(_row("estimated", 1.0, 0.8, 1.2), 1.0)
    assert middle["status"] == "unverified" and middle["ok"] is None and middle["value"] == 1.2
    assert latency_check(_row("estimated", 1.0, 0.8, 1.2), 0.5)["status"] == "fail"


def test_a_proxy_measurement_never_decides_on_its_own():
    fast_here = latency_check(_row("proxy", 0.1, 0.8, 1.2), 1.0)  # measured far under budget on another host
    assert fast_here["status"] == "unverified" and "not the device" in fast_here["why"]
    agrees = latency_check(_row("proxy", 1.0, 0.8, 1.2), 2.0)
    assert agrees["status"] == "pass" and "measured 1.000 ms on Intel Xeon" in agrees["why"]
    slow_here = latency_check(_row("proxy", 50.0, 0.8, 1.2), 2.0)  # over budget there: the estimate's pass is vetoed
    assert slow_here["status"] == "unverified" and "the proxy contradicts the estimate" in slow_here["why"]
    no_estimate = {**_row("proxy", 0.1, 0, 0), "estimate": None}
    assert latency_check(no_estimate, 1.0)["status"] == "unverified"
    uncalibrated = _row("estimated", 1.0, 0, 0)
    uncalibrated["estimate"] = {**uncalibrated["estimate"], "interval_ms": None, "calibration": None}
    assert latency_check(uncalibrated, 5.0)["status"] == "unverified"
    on_device = latency_check({"latency_source": "measured", "p95_ms": 0.9}, 1.0)
    assert on_device["status"] == "pass" and on_device["ok"] is True


def test_row_status_orders_fail_over_unverified_over_pass():
    """A gated budget left open (no value here) is not a pass either."""
    assert row_status([{"status": "pass"}, {"status": "unverified"}, {"status": "open"}]) == "unverified"
    assert row_status([{"status": "fail"}, {"status": "unverified"}]) == "fail"
    assert row_status([{"status": "pass"}, {"status": "open"}]) == "unverified"
    assert row_status([{"status": "pass"}]) == "pass"


# -- accuracy with uncertainty ----------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_values():
    assert wilson(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)  # Wilson (1927) worked example
    lo, hi = wilson(450, 450)
    assert hi == 1.0 and 0.99 < lo < 1.0  # sound at 100%, unlike the normal interval
    assert wilson(0, 0) == (0.0, 1.0)


def test_paired_drop_interval_counts_only_disagreements():
    rng = np.random.default_rng(0)
    ref = rng.random(450) < 0.97
    same = paired_drop(ref, ref.copy())
    assert same == (0.0, 0.0)
    cand = ref.copy()
    cand[np.flatnonzero(ref)[:9]] = False  # 9 samples lost: a 2-point drop
    lo, hi = paired_drop(ref, cand)
    assert 0 < lo < 2.0 < hi < 4.0
    assert paired_drop(ref, cand) == (lo, hi)  # seeded
    with pytest.raises(ValueError, match="differ in shape"):
        paired_drop(ref, cand[:10])


def test_budget_note_says_when_the_interval_crosses_the_budget():
    assert "within budget, not significant at n=450" in budget_note(0.44, (-0.2, 1.3), 1.0, 450)
    assert "over budget" in budget_note(1.1, (0.2, 2.0), 1.0, 450)
    assert budget_note(0.2, (-0.2, 0.6), 1.0, 450) is None
    assert samples_for(1.0, 0.02) == 769 and samples_for(0.5, 0.02) == 3074


# -- the subset gate --------------------------------------------------------------------------------------


def test_subset_gate_takes_one_limit_or_one_per_subset():
    row = {"subsets": {"image": {"drop": 4.0}, "audio": {"drop": 1.0}, "image+audio": {"drop": 0.5}}}
    worst = subset_check(row, 3.0)
    assert worst["status"] == "fail" and worst["value"] == 4.0 and worst["why"] == "image only"
    assert subset_check(row, {"image": 5.0, "audio": 2.0})["status"] == "pass"
    tight = subset_check(row, {"image": 5.0, "audio": 0.5})
    assert tight["status"] == "fail" and tight["why"] == "audio only"
    assert subset_check({"subsets": {"image": {"accuracy": 0.5}}}, 1.0)["status"] == "open"  # no baseline
    io = io_spec(AVDigitsConfig(), 41)
    with pytest.raises(UsageError, match="names subset\\(s\\) speech this model has not"):
        subset_names({"speech": 1.0}, io)
    subset_names({"image+audio": 1.0, "text": 2.0}, io)  # the model's own subsets
    subset_names(3.0, io)


def test_a_baseline_evaluation_is_cached_by_data_and_by_what_the_model_computes(avdigits_io, monkeypatch, tmp_path):
    """Validating many artifacts of one model evaluates it once; new weights (or new code) are a new entry."""
    import torch

    from edgekit.data import load_split
    from edgekit.evaluation import cached_evaluate, evaluate, torch_predict
    from edgekit.models import build_fusion_model

    monkeypatch.setattr("edgekit.evaluation.cache_root", lambda: tmp_path)  # the data stays in the real cache
    split = load_split("avdigits", "val").head(96)
    torch.manual_seed(0)
    model = build_fusion_model(preset="small")
    first = cached_evaluate(torch_predict(model), avdigits_io, split, "sha-of-the-split")
    again = cached_evaluate(torch_predict(model), avdigits_io, split, "sha-of-the-split")
    assert again == first and again.correct.keys() == first.correct.keys()
    assert all((again.correct[k] == first.correct[k]).all() for k in first.correct)
    assert len(list((tmp_path / "evals").iterdir())) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    changed = cached_evaluate(torch_predict(model), avdigits_io, split, "sha-of-the-split")
    assert changed == evaluate(torch_predict(model), avdigits_io, split)
    assert len(list((tmp_path / "evals").iterdir())) == 2
