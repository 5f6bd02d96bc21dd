"""Training on a chosen device, in mixed precision, and data-parallel under torchrun (two CPU processes on gloo),
on a slice of the real AV-digits data and a small fusion model trained on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit import api
from edgekit.cli import main
from edgekit.cli.common import without_option
from edgekit.devices import check_amp, resolve_device
from edgekit.errors import UsageError
from edgekit.training import TrainConfig

from .conftest import run_cli

pytestmark = pytest.mark.slow
SIZES = {"train": 384, "val": 200, "test": 200}  # distillation's slice; the teacher learns from all of train
SEEDS = (0, 1, 2)


def recipe(data: Path, model: Path, seed: int, epochs: int = 2) -> dict:
    return {
        "model": str(model),
        "data": {"name": str(data)},
        "stages": [
            {"kind": "prune", "branch_ratios": {"text": 0.5, "fusion": 0.5}, "head_ratio": 0.5},
            {"kind": "distill", "student": "pruned", "epochs": epochs, "batch_size": 64},
        ],
        "targets": ["x86"],
        "budgets": {"max_drop": 100.0},  # these tests compare runs; the verdict is not theirs to check
        "seed": seed,
    }


@pytest.fixture(scope="module")
def setup(avdigits, tmp_path_factory):
    """Real AV-digits, sliced, and a small attention-fusion teacher trained on the whole train split."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data"
    data.mkdir()
    shutil.copy(avdigits / "meta.json", data / "meta.json")
    for split, n in SIZES.items():
        with np.load(avdigits / f"{split}.npz", allow_pickle=False) as z:
            np.savez(data / f"{split}.npz", **{k: z[k][:n] for k in z.files})
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, modality_dropout=0.25)  # short: a teacher, not a good one
    assert api.train("attention", "small", "avdigits", tmp / "teacher", cfg)["best_val_accuracy"] > 0.3
    return tmp, data, tmp / "teacher"


def compress(tmp: Path, name: str, body: dict, *extra: str):
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(body))
    r = run_cli("compress", "--recipe", str(tmp / f"{name}.yaml"), "--out", str(tmp / name), "--json", *extra)
    assert r.code == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def runs(setup):
    """Single-process runs with three seeds (the run-to-run spread) and a two-process run with the first seed."""
    tmp, data, teacher = setup
    single = {s: compress(tmp, f"single-{s}", recipe(data, teacher, s)) for s in SEEDS}
    ddp = compress(tmp, "ddp", recipe(data, teacher, SEEDS[0]), "--nproc", "2")
    return tmp, single, ddp


@pytest.mark.heavy
def test_two_processes_write_one_consistent_run_directory(runs):
    tmp, _, ddp = runs
    run = tmp / "ddp"
    assert json.loads((run / "report.json").read_text()) == ddp
    assert [s["name"] for s in ddp["stages"]] == ["prune", "distill"]
    assert sorted(p.name.split("-")[1] for p in (run / "stages").iterdir()) == ["distill", "prune"]
    assert not list(run.rglob(".*.tmp")) and not list(run.rglob(".*.old"))  # nothing half-written
    assert not any((run / "checkpoints").rglob("*.pt"))  # removed once the stage is saved
    log = (run / "compress.log").read_text()
    assert log.count("stage 2 (distill): running") == 1  # rank 0 alone writes the log
    distill = ddp["stages"][1]
    assert distill["resumed_from"] == 0 and distill["best_epoch"] >= 1


@pytest.mark.heavy
def test_two_processes_match_one_within_the_run_to_run_spread(runs):
    """Same global batch: the two-process student's test accuracy lies within the single-process runs' range
    over three seeds, widened by one sample."""
    _, single, ddp = runs
    accs = [r["stages"][1]["accuracy"] for r in single.values()]
    one = 1 / SIZES["test"]
    assert min(accs) - one <= ddp["stages"][1]["accuracy"] <= max(accs) + one, (accs, ddp["stages"][1]["accuracy"])


def running(marker: str) -> list[int]:
    """Processes whose command line holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            pass  # it ended meanwhile
    return pids


@pytest.mark.heavy
def test_killed_two_process_run_resumes_with_one(setup):
    """A run stopped after its first epoch checkpoint (SIGTERM, as a scheduler or Ctrl-C stops it: torchrun stops
    its workers) resumes from that checkpoint in a single process."""
    tmp, data, teacher = setup
    (tmp / "kill.yaml").write_text(yaml.safe_dump(recipe(data, teacher, 5, epochs=4)))
    args = ["compress", "--recipe", str(tmp / "kill.yaml"), "--out", str(tmp / "kill"), "--nproc", "2"]
    p = subprocess.Popen([sys.executable, "-m", "edgekit", *args], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not list((tmp / "kill" / "checkpoints").rglob("distill-checkpoint.pt")):
        assert p.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)  # the launcher and torchrun; torchrun stops the workers (own sessions)
    p.wait()
    while running(str(tmp / "kill")):
        assert time.monotonic() < deadline, "the workers outlived torchrun"
        time.sleep(0.1)
    assert not (tmp / "kill" / "report.json").exists()
    r = run_cli(*without_option(args, "--nproc"), "--json")
    assert r.code == 0, r.stderr[-2000:]
    distill = json.loads(r.stdout)["stages"][1]
    assert 1 <= distill["resumed_from"] < 4 and distill["epochs_run"] == 4


@pytest.mark.heavy
def test_mixed_precision_distillation_on_the_cpu(runs):
    """bf16 autocast on the CPU: the recipe records it, and the student ends where float32 runs of the same
    recipe do (within 5 points of the lowest of three seeds)."""
    tmp, single, _ = runs
    data, teacher = Path(single[0]["recipe"]["data"]["name"]), Path(single[0]["recipe"]["model"])
    report = compress(tmp, "bf16", recipe(data, teacher, 0), "--amp", "bf16", "--device", "cpu")
    assert yaml.safe_load((tmp / "bf16" / "recipe.yaml").read_text())["stages"][1]["amp"] == "bf16"
    assert report["stages"][1]["accuracy"] >= min(r["stages"][1]["accuracy"] for r in single.values()) - 0.05


def test_the_launcher_runs_the_installed_edgekit_from_a_folder_holding_an_edgekit_folder(tmp_path, monkeypatch):
    """A user's project may hold an `edgekit/` folder (a checkout, their own module): torchrun's workers must still
    import the installed package, not the folder in their working directory."""
    from edgekit import __version__
    from edgekit.devices import launch

    (tmp_path / "edgekit").mkdir()  # a namespace package: `import edgekit` from here finds no __version__
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "out.txt", "w") as f:
        code = launch(2, ["--version"], f.fileno())
    printed = (tmp_path / "out.txt").read_text().split()
    assert code == 0 and printed.count(__version__) == 2, printed


def test_unusable_device_or_precision_is_one_line(capsys, tmp_path):
    cases = [(["--amp", "fp16", "--device", "cpu"], "--amp fp16 is not supported on cpu"),
             (["--device", "tpu"], "is not a torch device"), (["--amp", "int4"], "not a mixed precision")]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no usable CUDA device"))
    for flags, says in cases:
        assert main(["compress", "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_device_resolution_and_precisions():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    check_amp("bf16", torch.device("cpu"))
    with pytest.raises(UsageError, match="fp16 is not supported on cpu"):
        check_amp("fp16", torch.device("cpu"))
    assert without_option(["a", "--nproc", "2", "b", "--nproc=3"], "--nproc") == ["a", "b"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distillation_on_a_gpu_in_fp16(setup):
    tmp, data, teacher = setup
    report = compress(tmp, "gpu", recipe(data, teacher, 0, epochs=2), "--device", "cuda", "--amp", "fp16")
    assert report["stages"][1]["accuracy"] > 0.5
