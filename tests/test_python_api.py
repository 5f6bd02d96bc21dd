"""docs/python-api.md's example, run as written: a fusion model EdgeKit has not seen, in memory with arrays in
memory, through export, validate and compress with no file of configuration; and the records it returns."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from edgekit import api

from .conftest import ROOT


def example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "python-api.md has one example, run here"
    return blocks[0]


def test_the_python_api_example_runs_as_written(tmp_path):
    (tmp_path / "example.py").write_text(example())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=1200, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    exported = api.load_record(tmp_path / "out/x86/export.json", api.ExportRecord, "export record")
    assert exported.model == "in-memory" and exported.source.score("accuracy") > 0.3  # learned: chance is 0.1
    assert [(a.format, a.precision) for a in exported.artifacts] == [("onnx", "fp32"), ("onnx", "int8")]
    assert all(a.parity["passed"] and a.score("accuracy") > 0.3 for a in exported.artifacts)
    assert exported.int8 == "searched"  # under the x86 profile's accuracy budget, never plain PTQ
    assert "validate: " in r.stdout and "error" not in r.stdout.split("validate: ")[1].splitlines()[0]
    report = api.load_record(tmp_path / "out/run/report.json", api.CompressReport, "compress report")
    assert report.model == "in-memory" and report.recipe["data"]["name"] == "in-memory"
    assert [s.name for s in report.stages] == ["prune", "distill", "quantize"]
    pruned, _, quantized = report.stages
    assert pruned.macs < report.baseline["macs"] and quantized.artifact is not None
    assert set(report.provenance["inputs"]["data_sha256"]) == {"train", "val", "test"}  # the arrays, hashed
    # the stages' packages rebuild from the class the example defined (its default factory)
    assert "LateFusion" in (tmp_path / str(report.stages[1].path) / "edgekit-model.yaml").read_text()


def test_an_in_memory_model_compress_cannot_rebuild_is_refused_before_any_work(tmp_path):
    from torch import nn

    class NeedsArgs(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc = nn.Linear(width, 2)

    io = {"dims": {"batch": {"min": 1, "opt": 1, "max": 8}},
          "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "modality": "image"}],
          "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]}  # fmt: skip
    given = api.model(NeedsArgs(4), io)
    with pytest.raises(api.UsageError, match="does not rebuild it") as e:
        api.compress(None, tmp_path / "run", model=given, data={"train": api.from_arrays({}, None)})
    assert "factory=" in (e.value.hint or "") and not (tmp_path / "run").exists()
