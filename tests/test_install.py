"""A base install (no extras) into a fresh environment exports ONNX and quantizes it with onnxruntime.

The venv gets torch first (as `make` does), then EdgeKit without extras at the versions of constraints.txt: no
OpenVINO, NNCF, ExecuTorch, Optuna. The export runs from another working directory through the installed
console script."""

import json
import os
import subprocess
import sys

import pytest

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_a_base_install_exports_onnx_int8(tmp_path, avdigits):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(ROOT)], check=True)
    probe = [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print([m for m in "
             "('openvino', 'nncf', 'executorch', 'optuna') if u.find_spec(m)])"]  # fmt: skip
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "[]"
    io = io_spec(AVDigitsConfig(), 41)
    model = build_fusion_model("early", "small", modalities=list(io.modalities), vocab_size=41)
    pkg = save_model_package(model, io, tmp_path / "pkg", factory="edgekit.models:build_fusion_model",
                             kwargs={"arch": "early", "preset": "small", "vocab_size": 41})  # fmt: skip
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    r = subprocess.run(
        ["edgekit", "export", "--model", str(pkg), "--target", "x86", "--format", "onnx", "--precision", "int8",
         "--out", "out", "--no-validate", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {(a["format"], a["precision"]): a for a in json.loads(r.stdout)["artifacts"]}
    assert rows[("onnx", "int8")]["accuracy"] is not None and (tmp_path / "out" / "onnx-int8" / "model.onnx").is_file()
