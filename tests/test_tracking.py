"""`--mlflow`: a real MLflow tracking server (SQLite backend, artifacts it serves) started here, real `edgekit`
commands logging to it, and every run read back through MLflow's own client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from edgekit import tracking
from edgekit.cli import main
from edgekit.recipe import Recipe

from .conftest import ROOT, CliResult, free_port

pytestmark = pytest.mark.slow

# The cheapest compress that still trains: a small student distilled for one epoch on the 450 val samples (not
# the 2,100 train ones), then ONNX INT8 and validation; budgets no run can miss, as these tests check the logging.
RECIPE = {
    "data": {"name": "avdigits", "train": "val"},
    "stages": [
        {"kind": "distill", "student": "small", "epochs": 1},
        {"kind": "quantize", "backend": "onnx", "samples": 64, "accuracy_aware": False},
    ],
    "targets": ["x86"],
    # a one-epoch student of a smaller preset, not a deployable one: the subsets it loses are not what is tested
    "budgets": {"max_drop": 100.0, "latency_p95_ms": 1000.0, "max_subset_drop": 100.0},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port, its runs in SQLite and its artifacts in a directory; stopped at the end."""
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(tmp / "server.log", "w")  # closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, in their own session
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server)


def edgekit(*args: str, experiment: str, cwd: Path | None = None, **env: str) -> CliResult:
    """The real CLI in a subprocess, logging into `experiment`."""
    environ = {k: v for k, v in os.environ.items() if k not in (tracking.ENV_URI, "RANK")}
    environ.update({"COLUMNS": "120", tracking.ENV_EXPERIMENT: experiment, **env})
    p = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                       env=environ, check=False)  # fmt: skip
    return CliResult(p.returncode, p.stdout, p.stderr)


def runs(client, experiment: str) -> tuple[list, list]:
    """(the commands' runs, their nested runs) in an experiment, oldest first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], []
    every = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    top = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    return top, [r for r in every if "mlflow.parentRunId" in r.data.tags]


def artifact_names(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


@pytest.fixture(scope="module")
def compressed(server, client, tmp_path_factory, reference_teacher):
    """One tracked compress run, shared by the tests that read it back."""
    tmp = tmp_path_factory.mktemp("tracked")
    (tmp / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    r = edgekit("compress", "--recipe", str(tmp / "r.yaml"), "--out", str(tmp / "run"), "--json", "--mlflow", server,
                experiment="compress")  # fmt: skip
    assert r.code == 0, r.stderr
    top, nested = runs(client, "compress")
    assert len(top) == 1, [t.info.run_name for t in top]
    return tmp / "run", json.loads(r.stdout), top[0], nested


@pytest.mark.heavy
def test_compress_run_has_recipe_params_metrics_provenance_and_artifacts(compressed, client):
    run_dir, report, run, _ = compressed
    assert run.info.status == "FINISHED" and run.data.tags["edgekit.command"] == "compress"
    params = run.data.params
    assert params["stages.0.kind"] == "distill" and params["stages.0.student"] == "small"
    assert params["stages.1.backend"] == "onnx" and params["data.train"] == "val" and params["targets.0"] == "x86"
    assert float(params["budgets.max_drop"]) == 100.0 and params["seed"] == str(report["recipe"]["seed"])
    m = run.data.metrics
    assert m["baseline.accuracy"] == pytest.approx(report["baseline"]["accuracy"])
    assert m["accuracy"] == pytest.approx(report["stages"][-1]["accuracy"])
    assert m["accuracy_drop"] == pytest.approx(report["verdict"]["accuracy_drop"])
    row = report["validation"][0]["rows"][0]
    assert m["latency_p50_ms"] == pytest.approx(row["p50_ms"]) and m["latency_p95_ms"] == pytest.approx(row["p95_ms"])
    assert m["size_mb"] == pytest.approx(row["size_mb"]) and m["macs"] == report["stages"][-1]["macs"]
    tags, prov = run.data.tags, report["provenance"]
    assert tags["edgekit.version"] == prov["edgekit"] and tags["edgekit.seed"] == str(prov["seed"])
    assert tags["edgekit.model_sha256"] == prov["inputs"]["model_sha256"] and tags["edgekit.host_cpu"]
    assert tags["edgekit.data_sha256.val"] == prov["inputs"]["data_sha256"]["val"]
    assert tags["edgekit.profile"] == "x86" and tags["edgekit.data"] == "avdigits"
    assert tags["edgekit.verdict"] == "pass" and "edgekit.error" not in tags
    assert tags.get("edgekit.git_commit") == (str(prov["git_commit"]) if prov["git_commit"] else None)
    assert {"report.json", "report.html", "recipe.yaml", "compress.log"} <= artifact_names(client, run.info.run_id)
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "report.json")).read_text())
    assert logged == json.loads((run_dir / "report.json").read_text())
    recipe = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "recipe.yaml")).read_text())
    assert recipe == yaml.safe_load((run_dir / "recipe.yaml").read_text())


@pytest.mark.heavy
def test_each_stage_is_a_nested_run_and_distill_logs_every_epoch(compressed, client):
    _, report, run, nested = compressed
    stages = sorted(nested, key=lambda r: r.info.run_name)
    assert [s.info.run_name for s in stages] == ["01-distill", "02-quantize"]
    assert all(s.data.tags["mlflow.parentRunId"] == run.info.run_id and s.info.status == "FINISHED" for s in stages)
    for s, row in zip(stages, report["stages"], strict=True):
        m = s.data.metrics
        assert m["accuracy"] == pytest.approx(row["accuracy"]) and m["accuracy_drop"] == pytest.approx(
            row["accuracy_drop"]
        )
        assert m["params"] == row["params"] and m["macs"] == row["macs"] and s.data.params["kind"] == row["name"]
    distill, quantize = stages
    loss = client.get_metric_history(distill.info.run_id, "loss")
    val = client.get_metric_history(distill.info.run_id, "val_accuracy")
    assert [p.step for p in loss] == [1] and [p.step for p in val] == [1]
    assert loss[0].value > 0 and 0 <= val[0].value <= 1
    row = report["validation"][0]["rows"][0]  # the INT8 artifact's latency and size, in the stage that made it
    assert quantize.data.metrics["latency_p95_ms"] == pytest.approx(row["p95_ms"])
    assert quantize.data.metrics["size_mb"] == pytest.approx(row["size_mb"])
    assert distill.info.start_time <= quantize.info.start_time <= run.info.end_time


@pytest.mark.heavy
def test_a_validation_that_fails_is_a_failed_run_with_its_error(compressed, server, client):
    _, report, _, _ = compressed
    artifact = str(Path(report["artifacts"][0]["path"]).parent)
    r = edgekit("validate", artifact, "--profile", "x86", "--max-size-mb", "0.001", "--estimate", "--mlflow", server,
                experiment="validate")  # fmt: skip
    assert r.code == 1, r.stderr
    (run,), nested = runs(client, "validate")
    assert run.info.status == "FAILED" and run.data.tags["edgekit.verdict"] == "fail"
    assert run.data.tags["edgekit.error"].startswith(f"validation failed: {Path(artifact).name}: fail")
    assert run.data.params["max_size_mb"] == "0.001" and run.data.params["profile"]
    (art,) = nested
    assert art.data.metrics["size_mb"] == pytest.approx(report["validation"][0]["rows"][0]["size_mb"])
    assert art.data.tags["edgekit.status"] == "fail"
    assert "validation.json" in artifact_names(client, run.info.run_id)


def test_env_var_and_a_command_that_fails_inside_the_run(server, client, tmp_path):
    """EDGEKIT_MLFLOW_URI instead of the flag; the run is FAILED and its tag holds the CLI's own one-line error."""
    r = edgekit("compress", "--model", str(tmp_path / "no-such-package"), "--stages", "quantize", "--out",
                str(tmp_path / "run"), experiment="env", EDGEKIT_MLFLOW_URI=server)  # fmt: skip
    assert r.code == 2
    (line,) = r.stderr.strip().splitlines()
    (run,), nested = runs(client, "env")
    assert run.info.status == "FAILED" and not nested
    assert line == f"edgekit: error: {run.data.tags['edgekit.error']}" and "model not found" in line
    assert run.data.params["stages.0.kind"] == "quantize" and "recipe.yaml" in artifact_names(client, run.info.run_id)


def test_a_stage_logs_its_epochs_under_the_metric_it_follows(server, client, tmp_path, monkeypatch):
    """A regression's distillation follows MAE on val: its epochs are `val_mae`, not `val_accuracy`."""
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "epochs")
    seen = []
    recipe = Recipe.model_validate({"stages": [{"kind": "distill"}]})
    with tracking.start("compress", server, str(tmp_path)) as run:
        update = tracking.Compress(run, recipe, tmp_path).epochs(lambda *a: seen.append(a))
        update(1, 2, 0.5, 0.21, "mae")
        update(2, 2, 0.4, 0.17, "mae")
    assert seen == [(1, 2, 0.5, 0.21, "mae"), (2, 2, 0.4, 0.17, "mae")]  # the progress bar still gets each epoch
    _, (stage,) = runs(client, "epochs")
    assert [(m.step, m.value) for m in client.get_metric_history(stage.info.run_id, "val_mae")] == [
        (1, 0.21),
        (2, 0.17),
    ]
    assert client.get_metric_history(stage.info.run_id, "val_accuracy") == []


def test_only_rank_0_logs(server, client, tmp_path):
    args = ("compress", "--model", str(tmp_path / "no-such-package"), "--stages", "quantize", "--out",
            str(tmp_path / "run"), "--mlflow", server)  # fmt: skip
    assert edgekit(*args, experiment="ranks", RANK="1").code == 2
    assert runs(client, "ranks") == ([], [])  # torchrun's other ranks: nothing, not even the experiment
    assert edgekit(*args, experiment="ranks", RANK="0").code == 2
    assert len(runs(client, "ranks")[0]) == 1


def test_without_mlflow_the_flag_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    """In-process, with mlflow hidden: exit 2 before any work, one line, the extra named."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    code = main(["compress", "--stages", "quantize", "--out", str(tmp_path / "run"), "--mlflow", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["edgekit: error: --mlflow needs the mlflow extra (pip install 'edgekit[mlflow]')"]
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv(tracking.ENV_URI, "http://127.0.0.1:9")
    assert main(["validate", str(tmp_path), "--profile", "x86"]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgekit: error: EDGEKIT_MLFLOW_URI needs the mlflow extra (pip install 'edgekit[mlflow]')"
    )


def test_an_unreachable_server_fails_before_the_work(tmp_path):
    r = edgekit("compress", "--stages", "quantize", "--out", str(tmp_path / "run"), "--mlflow",
                f"http://127.0.0.1:{free_port()}", experiment="none")  # fmt: skip
    (line,) = r.stderr.strip().splitlines()
    assert r.code == 1 and line.startswith("edgekit: error: cannot start an MLflow run at http://127.0.0.1:")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, avdigits):
    """AV-digits cut to 200/150/150 samples: a dataset directory `edgekit train` trains on in seconds."""
    import numpy as np

    out = tmp_path_factory.mktemp("small-data")
    (out / "meta.json").write_text((avdigits / "meta.json").read_text())
    for split, n in (("train", 200), ("val", 150), ("test", 150)):
        with np.load(avdigits / f"{split}.npz") as arrays:
            np.savez(out / f"{split}.npz", **{k: arrays[k][:n] for k in arrays.files})
    return out


@pytest.mark.heavy
def test_train_logs_settings_every_epoch_and_test_subsets(server, client, small_data, tmp_path):
    r = edgekit("train", "--arch", "late", "--preset", "small", "--epochs", "2", "--data", str(small_data), "--out",
                str(tmp_path / "pkg"), "--json", "--mlflow", server, experiment="train")  # fmt: skip
    assert r.code == 0, r.stderr
    assert "MLflow" not in r.stderr  # no refused or lost logging
    result = json.loads(r.stdout)
    (run,), nested = runs(client, "train")
    assert run.info.status == "FINISHED" and not nested and run.info.run_name == str(tmp_path / "pkg")
    p = run.data.params
    assert (p["arch"], p["preset"], p["epochs"], p["data"]) == ("late", "small", "2", str(small_data))
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2] and all(m.value > 0 for m in loss)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    m = run.data.metrics
    assert m["params"] == result["params"] and m["best_val_accuracy"] == pytest.approx(result["best_val_accuracy"])
    both = result["test"]["subsets"]["image+text+audio"]["accuracy"]
    assert m["test.image_text_audio.accuracy"] == pytest.approx(both)  # `+` is no character MLflow takes in a name
    assert run.data.tags["edgekit.version"] and run.data.tags["edgekit.arch"] == "late"
    assert {"edgekit-model.yaml", "train.json"} <= artifact_names(client, run.info.run_id)


def test_flatten_and_the_no_op_run():
    assert tracking.flatten({"a": {"b": [1, {"c": None, "d": "x"}]}, "e": True}) == {"a.b.0": "1", "a.b.1.d": "x",
                                                                                    "e": "True"}  # fmt: skip
    assert tracking.key("test.image+text.accuracy") == "test.image_text.accuracy"
    run = tracking.Run()
    progress = lambda *a: None  # noqa: E731
    assert not run.enabled and run.epochs(progress) is progress and run.child("x") is run
