"""The contract every target keeps: export the reference teacher, load the artifact in its own runtime
from its manifest, and match the source model on real AV-digits test samples."""

import importlib.util
import json

import numpy as np
import pytest
import yaml

from edgekit import api
from edgekit.artifact import load_artifact
from edgekit.data import with_modalities
from edgekit.evaluation import torch_predict
from edgekit.formats import FORMATS, load_runner
from edgekit.hardware import _shipped, host_profile
from edgekit.loading import load_model

from .conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # make test exports through test_compress, test_validate

# Every format of the registry whose runtime runs here (and is installed), at every precision it has.
HERE = [(f.name, p) for f in FORMATS.values() if f.runs_here and importlib.util.find_spec(f.runtime[0])
        for p in f.precisions]  # fmt: skip
# Largest accuracy drop (points) a format may show on the test split and still pass the contract.
MAX_DROP = {"fp32": 0.25, "fp16": 0.5, "int8": 1.5}


@pytest.fixture(scope="module")
def everything_here(reference_teacher, tmp_path_factory):
    """One export of the teacher to every format and precision that runs on this host, for this host's CPU (INT8
    weights are sized for it: a CPU without VNNI gets 7-bit weights)."""
    tmp = tmp_path_factory.mktemp("contract")
    profile = yaml.safe_load(_shipped()[host_profile("x86")[0] or "x86-avx512-vnni"].read_text())
    profile.update(name="everything-here", exports=[{"format": f, "precision": p} for f, p in HERE],
                   precisions=["fp32", "fp16", "int8"], peak_tops={**profile["peak_tops"], "fp16": 0.1664})  # fmt: skip
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    return api.export(reference_teacher, str(tmp / "profile.yaml"), tmp / "out").dump()


@pytest.mark.parametrize(("fmt", "precision"), HERE, ids=[f"{f}-{p}" for f, p in HERE])
def test_artifact_matches_its_source_in_its_own_runtime(everything_here, reference_teacher, test_split, fmt, precision):
    row = next(a for a in everything_here["artifacts"] if (a["format"], a["precision"]) == (fmt, precision))
    assert row["accuracy"] is not None and row["accuracy_drop"] <= MAX_DROP[precision], row
    art = load_artifact(row["path"].rsplit("/", 1)[0])  # hashes verified against the manifest
    assert (art.format, art.precision) == (fmt, precision) and art.meta["parity"]["passed"]
    runner = load_runner(art, threads=2)
    teacher = load_model(reference_teacher)
    feeds, _ = next(test_split.batches(64))
    feeds = with_modalities(art.io, feeds, art.io.modalities)
    got = next(iter(runner.run(feeds).values()))
    want = torch_predict(teacher.model)(feeds)
    assert got.shape == want.shape
    agreement = np.mean(got.argmax(-1) == want.argmax(-1))
    assert agreement >= (0.99 if precision == "fp32" else 0.95)
    if precision == "fp32":
        assert np.abs(got - want).max() < 1e-3


def test_export_json_and_jetson_bundle_via_cli(reference_teacher, tmp_path):
    r = run_cli("export", "--model", str(reference_teacher), "--target", "jetson", "--out", str(tmp_path / "j"),
                "--json")  # fmt: skip
    assert r.code in (1, 3), r.stderr  # without the device, the bundle's latency and RAM are never a pass
    assert json.loads(r.stdout)["validation"]["verdict"] == {1: "fail", 3: "unverified"}[r.code]
    assert "resolves to profile 'jetson-orin-nano-8gb'" in r.stderr
    result = json.loads(r.stdout)
    rows = {(a["format"], a["precision"]): a for a in result["artifacts"]}
    assert {("onnx", "fp32"), ("tensorrt", "int8"), ("tensorrt", "fp16")} <= set(rows)
    for a in result["artifacts"]:
        assert {"format", "precision", "path", "sha256", "accuracy", "accuracy_drop"} <= set(a)
    trt = rows[("tensorrt", "int8")]
    assert trt["accuracy"] is None and trt["reference"]["accuracy"] >= result["source"]["accuracy"] - 0.015
    # The profile's gate takes the bundle's proxy accuracy (its Q/DQ graph in onnxruntime), labelled as a proxy.
    row = next(v for v in result["validation"]["rows"] if (v["format"], v["precision"]) == ("tensorrt", "int8"))
    assert row["accuracy_source"].startswith("proxy")
    assert row["accuracy"] == pytest.approx(trt["reference"]["accuracy"], abs=0.005)
    gate = next(c for c in row["checks"] if c["budget"] == "max_accuracy_drop")
    assert gate["ok"] is True and gate["why"] == row["accuracy_source"]
    bundle = tmp_path / "j" / "tensorrt-int8"
    for name in ("model.onnx", "build_engine.py", "build_engine.sh", "manifest.json"):
        assert (bundle / name).is_file(), name
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["meta"]["profile"] == "jetson-orin-nano-8gb" and manifest["sha256"] == trt["sha256"]


def test_a_pruned_student_exports_for_x86(reference_teacher, tmp_path, x86_here):
    """A compressed student (the teacher with half its attention heads and text FFN removed) is a package
    like any other: export measures it in OpenVINO and onnxruntime."""
    from edgekit.stages.prune import PruneConfig, prune, save_pruned

    teacher = load_model(reference_teacher)
    result = prune(teacher.model, teacher.io, PruneConfig(ratios={"text": 0.5}, head_ratio=0.5))
    assert result.parts["total"].params_after < result.parts["total"].params_before
    base = {"factory": teacher.manifest.factory, "kwargs": teacher.manifest.kwargs}
    student = save_pruned(result.model, teacher.io, tmp_path / "student", base, labels=teacher.labels)
    # this host's profile with a latency budget no load trips: the exit code is the accuracy's
    r = run_cli("export", "--model", str(student), "--target", str(x86_here), "--out", str(tmp_path / "x86"), "--json")
    assert r.code == 0, r.stderr
    rows = {(a["format"], a["precision"]): a for a in json.loads(r.stdout)["artifacts"]}
    assert rows[("openvino", "int8")]["accuracy"] >= 0.9 and rows[("onnx", "int8")]["accuracy_drop"] <= 1.5
