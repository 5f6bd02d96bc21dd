"""Crash safety, resume and determinism of `edgekit compress`, on a small teacher trained here.

A run is killed with SIGKILL in the middle of each stage in turn (pruning, distillation, the quantize stage's
ONNX export, quantization), each time rerun with the same command, and must end with the same files, byte for byte,
as an uninterrupted run. Two uninterrupted runs must agree too: same accuracies, same ONNX file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgekit import api
from edgekit.training import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # make test's reruns: test_compress

RECIPE = {
    "stages": [
        {"kind": "prune", "branch_ratios": {"text": 0.5, "image": 0.5}, "head_ratio": 0.5},
        {"kind": "distill", "student": "pruned", "epochs": 3},
        {"kind": "quantize", "backend": "onnx", "samples": 64, "prefer_faster": False},  # one file, run to run
    ],
    "targets": ["x86"],
    "budgets": {"max_drop": 50.0},  # the small teacher is weak; this test is about files, not accuracy
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, avdigits) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    api.train("attention", "small", "avdigits", tmp / "teacher", TrainConfig(epochs=3))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": str(tmp / "teacher"), **RECIPE}))
    return path


def command(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgekit", "compress", "--recipe", str(recipe), "--out", str(out), "--json"]


def run(recipe: Path, out: Path) -> dict:
    p = subprocess.run(command(recipe, out), capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def kill_when(recipe: Path, out: Path, marker: str, ready=lambda: True, timeout: float = 300) -> None:
    """Start the run, wait until its log shows `marker` (and `ready()` holds), then SIGKILL it."""
    log = out / "compress.log"
    seen = log.read_text().count(marker) if log.is_file() else 0
    proc = subprocess.Popen(command(recipe, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not (log.is_file() and log.read_text().count(marker) > seen and ready()):
        assert proc.poll() is None, f"the run ended before '{marker}'"
        assert time.monotonic() < deadline, f"no '{marker}' in {timeout} s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def complete_stages(out: Path) -> list[str]:
    """Stage directories under their final names, each marked complete by its stage.json."""
    return sorted(p.name[:2] for p in (out / "stages").glob("[!.]*") if (p / "stage.json").is_file())


def checkpoint_written(out: Path) -> bool:
    return any(p.is_file() for p in out.glob("checkpoints/*/[!.]*"))


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory):
    return run(recipe, tmp_path_factory.mktemp("a") / "run")


def test_same_recipe_and_seed_give_the_same_numbers_and_files(recipe, uninterrupted, tmp_path):
    again = run(recipe, tmp_path / "run")
    for key in ("accuracy", "params", "macs"):
        assert [s[key] for s in again["stages"]] == [s[key] for s in uninterrupted["stages"]], key
    assert again["artifacts"][0]["sha256"] == uninterrupted["artifacts"][0]["sha256"]  # the Q/DQ ONNX file
    assert again["provenance"]["outputs"] == uninterrupted["provenance"]["outputs"]


def test_killed_in_every_stage_resumes_to_identical_files(recipe, uninterrupted, tmp_path):
    out = tmp_path / "run"
    kills = [  # (log line, condition, the stages complete once it is killed)
        ("stage 1 (prune): running", lambda: True, []),
        ("stage 2 (distill): running", lambda: checkpoint_written(out), ["01"]),  # after epoch 1, inside epoch 2
        ("exporting ONNX", lambda: True, ["01", "02"]),
        ("quantizing (onnx", lambda: True, ["01", "02"]),
    ]
    for marker, ready, done in kills:
        kill_when(recipe, out, marker, ready)
        assert not (out / "report.json").exists()  # the run is marked complete only at its end
        assert complete_stages(out) == done, marker  # the killed stage left nothing that looks done

    report = run(recipe, out)
    prune, distill, quantize = report["stages"]
    assert prune["cached"] and distill["cached"] and not quantize["cached"]
    assert distill["resumed_from"] == 1  # the killed distillation went on from its epoch-1 checkpoint
    assert [s["accuracy"] for s in report["stages"]] == [s["accuracy"] for s in uninterrupted["stages"]]
    assert report["artifacts"][0]["sha256"] == uninterrupted["artifacts"][0]["sha256"]
    assert report["provenance"]["outputs"] == uninterrupted["provenance"]["outputs"]
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]  # the killed runs' leftovers


def test_the_run_records_its_provenance(uninterrupted):
    prov = uninterrupted["provenance"]
    assert (
        prov["seed"] == 0
        and prov["torch_threads"] >= 1
        and prov["edgekit"]
        and {"torch", "onnx", "onnxruntime"} <= set(prov["versions"])
    )
    assert prov["host"]["cpu"] and prov["host"]["cores"] >= 1
    assert len(prov["inputs"]["model_sha256"]) == 64 and set(prov["inputs"]["data_sha256"]) == {"train", "val", "test"}
    assert any(k.endswith("onnx-int8/model.onnx") for k in prov["outputs"])
    assert prov["git_commit"] is None or len(prov["git_commit"].removesuffix("-dirty")) == 40
