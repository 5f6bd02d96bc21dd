"""`edgekit search`: Optuna over per-branch pruning, distillation and INT8 format, on the real stage pipeline.

The end-to-end cases use a narrow space (one branch, one distillation epoch) so that a trial takes about a minute;
the space itself, the recipes it writes and its error paths are checked without running trials."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from edgekit.compress import Plan, Start
from edgekit.errors import UsageError
from edgekit.hardware import resolve_profile
from edgekit.hardware.identity import host_facts
from edgekit.profiling.source import latency_source
from edgekit.recipe import Recipe, dump_recipe, load_recipe
from edgekit.search import Latency, Limits, recipe_point, space, storage_for, trial_recipe, trial_row
from edgekit.tasks import CLASSIFICATION, TASKS, Gate
from edgekit.timing import DURATION_S

from .conftest import ROOT, free_port, run_cli

# Budgets wide enough that feasibility does not hang on how loaded this shared host is.
NARROW = {
    "targets": ["x86"],
    "budgets": {"max_drop": 1.0, "latency_p95_ms": 1000.0, "size_mb": 100.0},
    "search": {"prune_ratios": [0.0, 0.5], "branches": ["audio"], "head_ratios": [0.0], "distill_epochs": [1]},
}


def write_recipe(tmp: Path, **space: object) -> Path:
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump({**NARROW, "search": {**NARROW["search"], **space}}))
    return path


@pytest.fixture(scope="module")
def start() -> Start:
    return Start.load(Plan.of(Recipe()))


def test_space_is_the_models_branches_and_the_profiles_int8_formats(start):
    profile, _ = resolve_profile("x86-avx512-vnni")
    choices = space(Recipe(), start, profile)
    assert [k for k in choices if k.startswith("prune.")] == [
        "prune.image",
        "prune.text",
        "prune.audio",
        "prune.fusion",
    ]
    assert choices["heads"] == [0.0, 0.5]  # the teacher's text Transformer has heads
    assert choices["format"] == ["openvino", "onnx"]
    jetson, _ = resolve_profile("jetson-orin-nano-8gb")
    assert space(Recipe(), start, jetson)["format"] == ["tensorrt"]
    bad = Recipe.model_validate({"search": {"branches": ["vision"]}})
    with pytest.raises(UsageError, match="'vision', which this model does not have"):
        space(bad, start, profile)


def test_a_trial_is_a_recipe_that_compress_accepts(tmp_path, start):
    params = {"prune.image": 0.5, "prune.text": 0.75, "prune.audio": 0.0, "prune.fusion": 0.25, "heads": 0.5,
              "distill_epochs": 20, "format": "openvino"}  # fmt: skip
    recipe = trial_recipe(Recipe(budgets={"max_drop": 0.5}, seed=3), params)
    (tmp_path / "r.yaml").write_text(dump_recipe(recipe))
    again = load_recipe(tmp_path / "r.yaml")
    assert again == recipe and again.search is None and again.seed == 3 and again.budgets.max_drop == 0.5
    prune, distill, quantize = again.stages
    assert prune.branch_ratios == {"image": 0.5, "text": 0.75, "fusion": 0.25} and prune.head_ratio == 0.5
    assert (distill.epochs, quantize.backend, quantize.accuracy_aware) == (20, "openvino", True)
    only_int8 = trial_recipe(Recipe(), {"prune.audio": 0.0, "heads": 0.0, "format": "onnx"})
    assert [s.kind for s in only_int8.stages] == ["quantize"]


def test_the_shipped_x86_recipe_is_a_point_of_the_default_space(start):
    recipe = load_recipe(ROOT / "recipes" / "avdigits-x86.yaml")
    profile, _ = resolve_profile("x86-avx512-vnni")
    point = recipe_point(recipe, space(recipe, start, profile), profile)
    assert point == {"prune.image": 0.5, "prune.text": 0.75, "prune.audio": 0.5, "prune.fusion": 0.5, "heads": 0.5,
                     "format": "openvino", "distill_epochs": 20}  # fmt: skip
    assert trial_recipe(recipe, point).stages == recipe.stages  # the same stages: the same cache keys


def test_latency_is_measured_on_the_device_else_a_proxy_else_estimated(tmp_path):
    here, _ = resolve_profile("x86")  # this host, by its identity
    assert Latency(here, ["openvino"], None, tmp_path / "l.json").source == "measured"
    android, _ = resolve_profile("android-arm64")
    proxy = Latency(android, ["executorch"], None, tmp_path / "l.json")
    assert proxy.source == "proxy" and proxy.why and proxy.threads <= host_facts()["cpus"]
    jetson, _ = resolve_profile("jetson-orin-nano-8gb")
    assert Latency(jetson, ["tensorrt"], None, tmp_path / "l.json").source == "estimated"
    # validate asks the same policy per artifact (profiling/source.py); a user's --threads stands, even on a proxy
    assert latency_source(android, runs_here=True) == proxy.where and proxy.where.duration == DURATION_S
    assert latency_source(android, runs_here=True, threads=3).threads == 3
    assert latency_source(jetson, runs_here=False).source == "estimated"
    assert latency_source(here, runs_here=True).source == "measured"


def test_budgets_come_from_the_recipe_then_the_profile():
    profile, _ = resolve_profile("x86-avx512-vnni")
    b = profile.budgets
    points = Gate("accuracy", True, 1.0)
    assert Limits.of(Recipe(), profile, CLASSIFICATION) == Limits(points, b.latency_p95_ms, b.max_size_mb)
    mine = Recipe.model_validate({"budgets": {"max_drop": 0.3, "latency_p95_ms": 2.0}})
    assert Limits.of(mine, profile, CLASSIFICATION) == Limits(replace(points, limit=0.3), 2.0, b.max_size_mb)
    assert Limits(points, 2.0, None).violated({"val_drop": 0.5, "latency_p95_ms": 3.0, "size_mb": 9.0}) == {
        "val_drop": -0.5, "latency_p95_ms": 1.0}  # fmt: skip
    # any task: the drop is the gate's, in its unit; a regression has no default
    mae = Recipe.model_validate({"budgets": {"max_metric_drop": {"mae": 0.01}}})
    limits = Limits.of(mae, profile, TASKS["regression"])
    assert limits.as_dict() == {"max_drop": 0.01, "metric": "mae", "unit": "mae", "latency_p95_ms": b.latency_p95_ms,
                                "size_mb": b.max_size_mb}  # fmt: skip
    with pytest.raises(UsageError, match="search constrains how much worse mae gets"):
        Limits.of(Recipe(), profile, TASKS["regression"])
    assert Limits.of(Recipe(), profile, TASKS["embedding"]).gate.metric == "recall_at_1"


def test_bad_search_input_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="is not grpc://HOST:PORT"):
        storage_for("grpc://nowhere", tmp_path)
    r = run_cli("search", "--time-budget", "soon", "--dry-run")
    assert r.code == 2 and "is not a duration" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: {prune_ratio: [0.5]}\n")
    r = run_cli("search", "--recipe", str(bad), "--dry-run")
    assert r.code == 2 and "prune_ratios" in r.stderr, r.stderr


def test_dry_run_prints_the_space_and_the_recipes_own_point():
    r = run_cli("search", "--recipe", str(ROOT / "recipes" / "avdigits-x86.yaml"), "--dry-run", "--json")
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["space"]["format"] == ["openvino", "onnx"] and shown["recipe_point"]["prune.text"] == 0.75


def trials_of(out: Path) -> list[dict]:
    return json.loads((out / "search.json").read_text())["trials"]


@pytest.mark.heavy
def test_a_killed_search_resumes_and_its_front_reproduces_with_compress(tmp_path):
    """Trial 0 (the teacher, INT8 only) finishes, the search is killed inside trial 1, and a rerun finishes the
    study without running trial 0 again. Every front point's recipe reproduces its artifact with compress."""
    recipe, out = write_recipe(tmp_path, formats=["onnx"]), tmp_path / "search"
    cmd = [sys.executable, "-m", "edgekit", "search", "--recipe", str(recipe), "--trials", "3", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "search.log"
    deadline = time.monotonic() + 900
    while not (log.is_file() and "trial 0: " in log.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the search ended before trial 0 did"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    r = run_cli("search", "--recipe", str(recipe), "--trials", "3", "--out", str(out), "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    text = log.read_text()
    assert text.count("trial 0: ") == 1  # finished before the kill: not run again
    rows = result["trials"]
    assert len([t for t in rows if t["status"] != "interrupted"]) == 3
    # A trial the kill cut short runs again, unless it was killed before it chose its configuration.
    for stopped in [t for t in rows if t["status"] == "interrupted" and t["params"]]:
        assert "resuming: 1 trial(s)" in r.stderr
        assert next(t for t in rows if t.get("resumes") == stopped["number"])["params"] == stopped["params"]
    assert result["front"] and (out / "search.html").is_file()
    point = next(p for p in result["front"] if p["params"].get("prune.audio") == 0.0)
    run = tmp_path / "reproduced"
    r = run_cli("compress", "--recipe", str(out / point["recipe"]), "--out", str(run), "--json")
    assert r.code in (0, 3), r.stderr  # 3: a budget only the device decides
    artifact = json.loads(r.stdout)["artifacts"][0]
    assert artifact["sha256"] == point["artifact"]["sha256"]
    assert artifact["accuracy"] == pytest.approx(point["test_accuracy"])


@pytest.mark.heavy
def test_two_workers_share_a_study_on_a_storage_server_without_repeating_a_trial(tmp_path):
    """Optuna's gRPC storage proxy over SQLite, and two search processes with their own directories: every
    configuration runs once; a worker that draws one already done takes its result (same_as)."""
    recipe = write_recipe(tmp_path, formats=["onnx", "openvino"], prune_ratios=[0.0])  # two configurations
    port, db = free_port(), tmp_path / "study.db"
    server_code = (
        "import optuna, sys; optuna.storages.run_grpc_proxy_server("
        f"optuna.storages.RDBStorage('sqlite:///{db}'), host='127.0.0.1', port={port})"
    )
    server = subprocess.Popen([sys.executable, "-c", server_code], stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        storage = f"grpc://127.0.0.1:{port}"
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgekit",
                    "search",
                    "--recipe",
                    str(recipe),
                    "--trials",
                    "4",
                    "--storage",
                    storage,
                    "--out",
                    str(tmp_path / f"w{i}"),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        results = [w.communicate(timeout=1500) for w in workers]
        assert all(w.returncode == 0 for w in workers), results[0][1][-2000:] + results[1][1][-2000:]
    finally:
        server.terminate()
        server.wait()
    import optuna

    name = json.loads(results[0][0])["study"]["name"]  # the study as both left it: read from the server's database
    rows = [trial_row(t) for t in optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials]
    ran = [t for t in rows if t["status"] in ("feasible", "infeasible") and "same_as" not in t]
    configs = [json.dumps(t["params"], sort_keys=True) for t in ran]
    assert len(configs) == len(set(configs)) == 2, rows
    both = "".join((tmp_path / f"w{i}" / "search.log").read_text() for i in range(2))
    assert both.count("stage 1 (quantize): running") == 2  # each configuration's work done once, in one worker
