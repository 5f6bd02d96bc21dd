import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.io import DimRange, IOSpec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model

from .conftest import run_cli

KWARGS = {"arch": "late", "preset": "small", "vocab_size": 41}


@pytest.fixture(scope="module")
def small_package(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pkg") / "small"
    return save_model_package(build_fusion_model(**KWARGS), io_spec(AVDigitsConfig(), 41), path,
                              factory="edgekit.models:build_fusion_model", kwargs=KWARGS)  # fmt: skip


def test_version_and_help_list_every_verb():
    r = run_cli("--version")
    assert r.code == 0 and r.stdout.strip().startswith("edgekit ")
    r = run_cli("--help")
    assert r.code == 0
    for verb in ("data", "train", "eval"):
        assert f" {verb} " in r.stdout


def test_eval_json_is_one_object_with_subsets(small_package, avdigits):
    r = run_cli("eval", "--model", str(small_package), "--data", "avdigits", "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert {"accuracy", "macro_f1", "subsets"} <= set(result)
    assert list(result["subsets"]) == [
        "image+text+audio",
        "image",
        "text",
        "audio",
        "image+text",
        "image+audio",
        "text+audio",
    ]
    assert all({"accuracy", "macro_f1"} <= set(v) for v in result["subsets"].values())


def test_data_build_json(avdigits):
    r = run_cli("data", "build", "avdigits", "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["path"] == str(avdigits) and sum(s["samples"] for s in result["splits"].values()) >= 1500


def _write_state(path, model):
    torch.save(model.state_dict(), path)
    return str(path)


def bad_cases(tmp_path, pkg):
    """(argv, expected fragment of the one-line error). Each must exit 2 and write nothing."""
    full = tmp_path / "full.pt"
    torch.save(build_fusion_model(**KWARGS), full)
    wrong = _write_state(tmp_path / "wrong.pt", build_fusion_model("late", "small", vocab_size=7))
    io_bad = tmp_path / "io.yaml"
    io_bad.write_text("inputs: [{name: x, dtype: complex64, shape: [2]}]\noutputs: []\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = tmp_path / "partial"
    partial.mkdir()
    with np.load(pkg.parent.parent / "data.npz") as z:
        np.savez(partial / "test.npz", **{k: z[k] for k in z.files if k != "audio"})
    return [
        (["eval", "--model", str(tmp_path / "nope")], "model not found"),
        (["eval", "--model", "no_such_module.sub:build", "--io", str(io_bad)], "unknown dtype 'complex64'"),
        (["eval", "--model", "no_such_module.sub:build", "--io", str(pkg / "io.yaml")], "does not import"),
        (["eval", "--model", str(pkg), "--weights", str(full)], "holds pickled objects or code"),
        (
            ["eval", "--model", str(pkg), "--weights", wrong],
            "branches.text.tokens.weight: file [7, 64] vs model [41, 64]",
        ),
        (["eval", "--model", str(pkg), "--weights", str(tmp_path / "missing.pt")], "weights file not found"),
        (["eval", "--model", str(pkg), "--data", str(empty)], "has no test.npz (it is empty)"),
        (["eval", "--model", str(pkg), "--data", str(partial)], "feed is missing input 'audio'"),
        (
            ["train", "--out", str(tmp_path / "out"), "--arch", "nope", "--data", "avdigits"],
            "'nope' is not one of 'early'",
        ),
    ]


def test_bad_inputs_give_one_line_and_exit_2(small_package, avdigits, tmp_path):
    pkg = tmp_path / "cases" / "pkg"
    shutil.copytree(small_package, pkg)
    (pkg / "io.yaml").write_text("inputs: [{name: x, dtype: float32, shape: [3]}]\noutputs: []\n")
    (tmp_path / "data.npz").write_bytes((avdigits / "test.npz").read_bytes())
    for argv, fragment in bad_cases(tmp_path / "cases", pkg):
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        r = run_cli(*argv)
        assert r.code == 2, (argv, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (argv, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before, argv  # nothing written


def test_json_failures_print_one_json_object(tmp_path):
    r = run_cli("eval", "--model", str(tmp_path / "nope"), "--json")
    out = json.loads(r.stdout)
    assert r.code == 2 and out["exit_code"] == 2 and "not found" in out["error"] and len(r.stderr.splitlines()) == 1
    r = run_cli("profile", str(tmp_path), "--batch", "0", "--json")
    assert r.code == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("eval", "--model", str(tmp_path / "nope"), "--debug")
    assert r.code == 2 and "Traceback" in r.stderr


def test_import_stays_light():
    code = (
        "import sys, edgekit.cli; edgekit.cli.main(['--help']); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'openvino', 'nncf', 'executorch', 'tensorrt'}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_train_writes_a_package_and_refuses_a_used_out_dir(avdigits, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--arch", "early", "--preset", "small", "--epochs", "1", "--out", str(out), "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model"] == str(out) and 0.0 <= result["test"]["accuracy"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["edgekit-model.yaml", "model.safetensors"]
    r = run_cli("train", "--arch", "early", "--preset", "small", "--epochs", "1", "--out", str(out))
    assert r.code == 2 and "is not empty" in r.stderr and "--overwrite" in r.stderr


def test_tables_in_a_log_keep_their_full_width():
    """Piped into a log with no COLUMNS, a table is printed whole, not cut to 80 columns with ellipses."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run([sys.executable, "-m", "edgekit", "profiles", "list"], capture_output=True, text=True,
                       env=env, check=True)  # fmt: skip
    assert "…" not in p.stdout and "Snapdragon 8 Gen 3 phone CPU (X4 + 3x A720), ExecuTorch XNNPACK" in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) > 80


@pytest.mark.heavy  # 49 s: make test-all
def test_a_model_declared_for_small_batches_is_evaluated_and_exported_in_them(tmp_path):
    """A user's spec with `batch: {min: 1, opt: 1, max: 8}`, below EdgeKit's default batches (64 to evaluate, 16 to
    probe a baseline): evaluation, and the export's parity check and accuracy in its runtime, run batches of 8."""
    io = io_spec(AVDigitsConfig(), 41)
    small = IOSpec(io.inputs, io.outputs, {**io.dims, "batch": DimRange(1, 1, 8)})
    assert (small.fit_batch(64), small.fit_batch(2), io.fit_batch(64)) == (8, 2, 64)
    torch.manual_seed(0)
    pkg = save_model_package(build_fusion_model(**KWARGS), small, tmp_path / "pkg",
                             factory="edgekit.models:build_fusion_model", kwargs=KWARGS)  # fmt: skip
    r = run_cli("eval", "--model", str(pkg), "--data", "avdigits", "--json")
    assert r.code == 0 and json.loads(r.stdout)["samples"] == 450, r.stderr
    r = run_cli("export", "--model", str(pkg), "--target", "x86", "--format", "onnx", "--precision", "fp32", "--out",
                str(tmp_path / "out"), "--json")  # fmt: skip
    assert r.code == 0, r.stderr
