"""edgekit profile: timing statistics, interleaving, host facts, the per-op breakdown from the runtimes' own
profilers, and the CLI on real exported artifacts (including its bad inputs)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekit import api
from edgekit.agent import cpu_facts
from edgekit.artifact import Artifact, load_artifact
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.errors import UsageError
from edgekit.formats import load_runner
from edgekit.io import DimRange, IOSpec, TensorSpec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model
from edgekit.profiling import local
from edgekit.runtimes import bound_call
from edgekit.runtimes.ops import summarize
from edgekit.runtimes.ort import OrtRunner
from edgekit.timing import LatencyStats, interleaved, time_calls

from .conftest import free_port, run_cli
from .sshd import sshd_server

KWARGS = {"arch": "gated", "preset": "small", "vocab_size": 41, "max_len": 32}


def test_latency_stats_are_percentiles_in_ms():
    s = LatencyStats.of(np.arange(1, 101) / 1e3)  # 1..100 ms
    assert s.runs == 100 and s.p50 == pytest.approx(50.5) and s.p99 == pytest.approx(99.01)
    assert s.p50 <= s.p90 <= s.p95 <= s.p99 and s.mean == pytest.approx(50.5)


def test_time_calls_counts_runs_or_fills_the_duration():
    calls = []
    assert len(time_calls(lambda: calls.append(1), warmup=3, runs=7)) == 7 and len(calls) == 10
    assert len(time_calls(lambda: None, warmup=0, duration=0.01)) >= 10
    with pytest.raises(UsageError, match="runs >= 1"):
        time_calls(lambda: None, runs=0)


def test_interleaved_alternates_blocks_and_reverses_the_order():
    order = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 0.002, warmup=0)
    blocks = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert blocks == ["a", "b", "b", "a", "a", "b"] or blocks == ["a", "b", "a", "b"]  # adjacent blocks merge
    assert len(times["a"]) >= 30 and len(times["b"]) >= 30


def test_cpu_facts_reads_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R45\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni\n"
    assert cpu_facts(x86) == ("AMD EPYC 9R45", ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni"])
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0b\n"
    assert cpu_facts(arm)[1] == ["asimd", "asimddp", "i8mm"]


def test_op_summary_sorts_by_time_and_averages_over_runs():
    events = [("conv1", "Conv", 300.0), ("mm", "MatMul", 100.0), ("conv2", "Conv", 100.0)] * 2
    s = summarize(events, runs=2, runtime="x")
    assert [o["op"] for o in s["by_op_type"]] == ["Conv", "MatMul"]
    assert s["by_op_type"][0] == {"op": "Conv", "ms": 0.4, "share": 0.8, "nodes": 2}
    assert s["total_ms"] == 0.5 and s["top_nodes"][0] == {"node": "conv1", "op": "Conv", "ms": 0.3}


# -- real artifacts ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, avdigits):
    tmp = tmp_path_factory.mktemp("profile")
    torch.manual_seed(0)
    io = io_spec(AVDigitsConfig(), 41)
    model = build_fusion_model(**KWARGS).eval()
    save_model_package(model, io, tmp / "pkg", factory="edgekit.models:build_fusion_model", kwargs=KWARGS)
    api.export(tmp / "pkg", "x86", tmp / "x86", api.ExportOptions("openvino", "fp32", threads=1))
    return tmp


def test_profile_json_has_results_per_batch_host_and_ops(exported):
    r = run_cli("profile", str(exported / "x86" / "onnx-fp32"), "--batch", "1,4", "--runs", "20", "--threads", "1",
                "--shape", "seq=16", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["batch"] for x in out["results"]] == [1, 4]
    for x in out["results"]:
        lat = x["latency_ms"]
        assert set(lat) >= {"p50", "p90", "p95", "p99", "mean", "std"} and lat["runs"] == 20
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert x["throughput"] > 0 and x["peak_rss_mb"] > out["rss_before_load_mb"] > 0
    assert out["results"][1]["throughput"] > out["results"][0]["throughput"] / 4  # batching does not collapse
    assert out["artifact"]["format"] == "onnx" and out["settings"]["dims"] == {"seq": 16}
    assert out["load_s"] > 0 and out["first_inference_ms"] > 0
    host = out["host"]
    assert host["cores"] >= 1 and host["versions"]["onnxruntime"] and host["cpu"]
    ops = out["ops"]["by_op_type"]
    assert {"Conv", "MatMul"} & {o["op"] for o in ops}
    assert sum(o["share"] for o in ops) == pytest.approx(1, abs=1e-3)


@pytest.mark.openvino
def test_openvino_breakdown_comes_from_its_performance_counters(exported):
    r = run_cli("profile", str(exported / "x86" / "openvino-fp32"), "--runs", "10", "--threads", "1", "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["runtime"].startswith("openvino") and out["ops"]["runtime"].startswith("openvino")
    assert any("Convolution" in o["op"] for o in out["ops"]["by_op_type"])


@pytest.mark.parametrize("name", ["onnx-fp32", "openvino-fp32"])
def test_the_timed_call_computes_what_run_computes(exported, name):
    """Profiling times a call with the inputs bound once; it must be the same inference as `run`."""
    art = load_artifact(exported / "x86" / name)
    runner = load_runner(art, threads=1)
    first, second = (art.io.example_inputs(2, seed=s) for s in (1, 2))
    call = bound_call(runner, first)
    runner.run(second)  # another call in between must not disturb the bound inputs
    result = call()
    got = result.copy_outputs_to_cpu()[0] if name.startswith("onnx") else np.array(result[0])
    np.testing.assert_allclose(got, next(iter(runner.run(first).values())), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, next(iter(runner.run(second).values())))


@pytest.mark.openvino
def test_openvino_compiles_each_input_shape_static_and_computes_what_the_dynamic_model_does(exported, monkeypatch):
    """A dynamic IR runs as a static copy per input-shape signature (compiled once, reused), with the dynamic
    model's outputs; past STATIC_SHAPES signatures the dynamic model serves."""
    from edgekit.runtimes import openvino as ovr

    art = load_artifact(exported / "x86" / "openvino-fp32")
    runner = load_runner(art, threads=1)
    assert runner.dynamic
    for batch in (1, 3, 1):
        feeds = art.io.example_inputs(batch, seed=batch)
        got = next(iter(runner.run(feeds).values()))
        dynamic = np.array(runner.request.infer(feeds)[runner.compiled.outputs[0]])
        np.testing.assert_allclose(got, dynamic, rtol=1e-4, atol=1e-5)
    assert len(runner.static) == 2 and all(not c.inputs[0].get_partial_shape().is_dynamic for c, _ in
                                           runner.static.values())  # fmt: skip
    monkeypatch.setattr(ovr, "STATIC_SHAPES", 2)
    runner.run(art.io.example_inputs(2, seed=0))
    assert len(runner.static) == 2  # the third signature ran on the dynamic model


class _RecordingRunner(OrtRunner):
    """A real onnxruntime runner that records its calls, to show which of them the profiler times."""

    events: list[str]

    def run(self, feeds):
        self.events.append("run")
        return super().run(feeds)

    def bind(self, feeds):
        self.events.append("bind")
        call = super().bind(feeds)

        def timed():
            self.events.append("call")
            return call()

        return timed


def test_profile_binds_feeds_outside_the_timed_calls(tmp_path, monkeypatch):
    """Feeds are bound (checked, converted, copied) once per batch size before timing; the timed region holds only
    the bound calls. The TensorRT runner relies on this to keep its host<->device copies out of the latency."""
    relu = helper.make_node("Relu", ["x"], ["y"])
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
    graph = helper.make_graph([relu], "g", value[:1], value[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # one ort reads
    onnx.save(model, str(tmp_path / "model.onnx"))
    io = IOSpec((TensorSpec("x", "float32", ("batch", 4)),), (TensorSpec("y", "float32", ("batch", 4)),),
                {"batch": DimRange(1, 1, 8)})  # fmt: skip
    Artifact("onnx", "fp32", tmp_path, "model.onnx", io, "").write_manifest()
    events: list[str] = []

    def runner(art, threads):
        r = _RecordingRunner(art, threads)
        r.events = events
        return r

    def timing(fn, *args, **kwargs):
        events.append("timing")
        try:
            return time_calls(fn, *args, **kwargs)
        finally:
            events.append("timed")

    monkeypatch.setattr(local, "load_runner", runner)
    monkeypatch.setattr(local, "time_calls", timing)
    out = local.profile(tmp_path, local.Settings(batches=(1, 4), warmup=2, runs=3, ops=False))
    assert [r["latency_ms"]["runs"] for r in out["results"]] == [3, 3]
    per_batch = ["bind", "timing", *["call"] * 5, "timed"]
    assert events == ["run", *per_batch, *per_batch]  # the first inference, then each batch size


def test_profile_runs_a_model_package_in_torch_eager(exported):
    r = run_cli("profile", str(exported / "pkg"), "--runs", "5", "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["artifact"]["format"] == "torch" and out["runtime"].startswith("torch") and out["ops"] is None


def test_profile_table_for_people(exported):
    r = run_cli("profile", str(exported / "x86" / "onnx-fp32"), "--runs", "5", "--no-ops")
    assert r.code == 0, r.stderr
    assert "p50 ms" in r.stdout and "first inference" in r.stdout and "slowest op" not in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "must all be at least 1"),
        (["--batch", "1,x"], "not a comma list of integers"),
        (["--shape", "seq=99"], "seq=99 is outside the model's range 1..32"),
        (["--shape", "frames=3"], "no dimension 'frames'"),
        (["--shape", "seq"], "is not name=size"),
    ],
)
def test_bad_options_fail_in_one_line_with_exit_2(exported, args, message):
    r = run_cli("profile", str(exported / "x86" / "onnx-fp32"), "--runs", "2", *args)
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_corrupt_or_tampered_artifacts_are_refused(exported, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(exported / "x86" / "onnx-fp32", art)
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:1000])  # truncated
    r = run_cli("profile", str(art), "--runs", "2")
    assert r.code == 2 and "does not match its manifest" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("profile", str(tmp_path), "--runs", "2")
    assert r.code == 2 and "neither an artifact" in r.stderr


# -- over ssh, against a real OpenSSH server on 127.0.0.1 ----------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def remote_cli(sshd, *args, edgekit=str(Path(sys.executable).with_name("edgekit")), python="python3"):
    return run_cli(*args, "--remote", sshd.remote, "--ssh-config", sshd.config, "--remote-edgekit", edgekit,
                   "--remote-python", python)  # fmt: skip


@pytest.mark.ssh
def test_remote_profile_runs_on_the_device_and_cleans_up(sshd, exported):
    art = exported / "x86" / "onnx-fp32"
    r = remote_cli(sshd, "profile", str(art), "--batch", "1,2", "--runs", "5", "--threads", "1", "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["batch"] for x in out["results"]] == [1, 2] and out["results"][0]["latency_ms"]["runs"] == 5
    assert out["artifact"]["path"] == str(art) and out["remote"]["device"] == sshd.remote
    assert out["remote"]["device_side"] == "edgekit"  # installed there: EdgeKit itself ran
    assert out["host"]["versions"]["onnxruntime"] and out["ops"]["by_op_type"]
    there = Path(out["remote"]["path"])
    assert there.name == "onnx-fp32" and not there.parent.exists()  # the device's temporary copy is gone


@pytest.mark.ssh
def test_remote_without_edgekit_or_python_says_so(sshd, exported):
    r = remote_cli(sshd, "profile", str(exported / "x86" / "onnx-fp32"), edgekit="/nonexistent/bin/edgekit",
                   python="/nonexistent/bin/python3")  # fmt: skip
    assert r.code == 1 and "nor Python ('/nonexistent/bin/python3') is on" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.ssh
def test_unreachable_device_and_bad_remote_spec(sshd, exported):
    art = str(exported / "x86" / "onnx-fp32")
    r = run_cli("profile", art, "--remote", f"nobody@127.0.0.1:{free_port()}", "--ssh-config", sshd.config)
    assert r.code == 1 and "cannot reach nobody@127.0.0.1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("profile", art, "--remote", "me@host:99999")
    assert r.code == 2 and "user@host[:port]" in r.stderr


@pytest.mark.ssh
def test_remote_timeout_is_one_clear_line(sshd, exported):
    r = remote_cli(sshd, "profile", str(exported / "x86" / "onnx-fp32"), "--duration", "30", "--remote-timeout", "3")
    assert r.code == 1 and "timed out after 3 s" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.ssh
def test_remote_build_reports_the_devices_own_error(sshd, tmp_path):
    """No TensorRT here: the device's `edgekit build` fails and its one-line reason comes back."""
    bundle = tmp_path / "tensorrt-int8"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    r = remote_cli(sshd, "build", str(bundle))
    assert r.code == 1 and "edgekit build on" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
