"""The device side without EdgeKit (edgekit/agent.py): the agent's parsers against the formats' documented structure,
and `profile/validate/build --remote` end to end against a real sshd, logged in as a "device" account whose Python
has only onnxruntime and numpy. What needs TensorRT and a Jetson (the engine through the Python bindings or trtexec,
tegrastats's own output) is marked `tensorrt` or parsed from the documented format; nothing here fakes a runtime."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit import agent, api
from edgekit.artifact import load_artifact, sha256_file
from edgekit.data import AVDigitsConfig
from edgekit.data.avdigits import io_spec
from edgekit.hardware import parse_profile, resolve_profile
from edgekit.models import build_fusion_model
from edgekit.targets.onnx import export_onnx
from edgekit.targets.tensorrt import gpu_visible, write_bundle

from .conftest import ROOT, run_cli
from .sshd import DEVICE_USER, device_account, device_python, sshd_server

ORIN_NANO = resolve_profile("jetson-orin-nano-8gb")[0]
# Lines in the layout of each JetPack's tegrastats (the Jetson Linux developer guides' "tegrastats" pages).
TEGRASTATS = {
    "orin-nano-jp6": ("12-07-2026 10:00:00 RAM 2448/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,"
                      "0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[305] cpu@47.5C soc2@46.6C "
                      "VDD_IN 5436mW/5012mW VDD_CPU_GPU_CV 1126mW/981mW VDD_SOC 1437mW/1402mW", ("VDD_IN", 5436.0)),
    "xavier-nx-jp4": ("RAM 1980/7772MB (lfb 1013x4MB) CPU [1%@1190,0%@1190] GR3D_FREQ 0%@114 VDD_IN 4560/4560 "
                      "VDD_CPU_GPU_CV 441/441 VDD_SOC 1322/1322", ("VDD_IN", 4560.0)),
    "nano-jp4": ("RAM 1413/3964MB (lfb 4x4MB) SWAP 0/1982MB CPU [5%@1479,2%@1479] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 "
                 "PLL@30C CPU@32C POM_5V_IN 2035/2035 POM_5V_GPU 40/40 POM_5V_CPU 324/324", ("POM_5V_IN", 2035.0)),
    "agx-orin-jp6": ("RAM 3000/62841MB CPU [0%@729] GR3D_FREQ 0%@[0,0] VDD_GPU_SOC 3989mW/3989mW VDD_CPU_CV "
                     "797mW/797mW VIN_SYS_5V0 3226mW/3226mW", ("sum of rails", 8012.0)),
}  # fmt: skip


def test_agent_is_python_3_8():
    """JetPack 5's system Python is 3.8, and TensorRT's bindings exist only for the system Python."""
    vermin = [str(Path(sys.executable).with_name("vermin")), "--target=3.8-", "--no-tips", "--violations",
              "--eval-annotations"]  # fmt: skip
    r = subprocess.run([*vermin, agent.__file__], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout
    newer = Path(tempfile.mkdtemp()) / "newer.py"
    newer.write_text('x = "edgekit-x".removeprefix("edgekit-")\n')  # the check itself can fail
    assert subprocess.run([*vermin, str(newer)], capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize("board", TEGRASTATS)
def test_tegrastats_board_power_of_each_jetpack_layout(board):
    line, expected = TEGRASTATS[board]
    assert agent.board_power_mw(line) == expected
    assert agent.board_power_mw("RAM 2448/7620MB SWAP 0/3810MB CPU [2%@729]") is None  # memory is not a rail


def test_energy_per_inference_is_mean_board_power_times_latency():
    power = agent.Tegrastats()
    power.lines = ["VDD_IN 9999mW/1mW", "VDD_IN 5000mW/5000mW", "VDD_IN 7000mW/6000mW"]  # the first: before timing
    e = power.energy([2.0, 2.0, 2.0])
    assert e == {"energy_mj": 12.0, "mean_power_mw": 6000.0, "rail": "VDD_IN", "samples": 2, "source": "tegrastats"}


def test_tegrastats_missing_or_unreadable_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with agent.Tegrastats() as power:
        pass
    assert power.energy([1.0]) == {
        "energy_mj": None,
        "why": "tegrastats not found on the device (it ships with JetPack)",
    }
    refusing = tmp_path / "tegrastats"  # a tegrastats this account may not use: it prints an error and exits
    refusing.write_text("#!/bin/sh\necho 'tegrastats: Permission denied (run as root)' >&2\nexit 1\n")
    refusing.chmod(refusing.stat().st_mode | stat.S_IEXEC)
    with agent.Tegrastats() as power:
        time.sleep(0.5)  # the timed calls
    why = power.energy([1.0])["why"]
    assert why == "tegrastats printed nothing readable: tegrastats: Permission denied (run as root)"


# trtexec's exports as TensorRT 8.5.2 and 10.3 write them (samples/common/sampleReporting.cpp: exportJSONTrace,
# Profiler::exportJSONProfile and exportJSONOutput of those releases).
TIMES_10_3 = [{"startEnqMs": 0.1 * i, "endEnqMs": 0.1 * i + 0.02, "startH2dMs": 0.0, "endH2dMs": 0.0,
               "startComputeMs": 0.1 * i, "endComputeMs": 0.1 * i + 0.4, "startD2hMs": 0.0, "endD2hMs": 0.0,
               "h2dMs": 0.0, "computeMs": 0.4 + 0.01 * i, "d2hMs": 0.0, "latencyMs": 0.4 + 0.01 * i}
              for i in range(100)]  # fmt: skip
PROFILE_8_5 = [{"count": 50},
               {"name": "/image/conv1/Conv + /image/Relu", "timeMs": 10.0, "averageMs": 0.2, "medianMs": 0.2,
                "percentage": 50.0},
               {"name": "/fusion/fc/Gemm", "timeMs": 6.0, "averageMs": 0.12, "medianMs": 0.12, "percentage": 30.0},
               {"name": "Reformatting CopyNode for Input Tensor 0 to /fusion/fc/Gemm", "timeMs": 4.0,
                "averageMs": 0.08, "medianMs": 0.08, "percentage": 20.0}]  # fmt: skip
OUTPUT_10_3 = [{"name": "logits", "dimensions": "2x3", "values": [0.5, -1.0, 2.0, 0.0, 1.5, -0.25]}]


def test_trtexec_exports_parse_as_documented():
    ms = agent.trtexec_times(TIMES_10_3)
    assert len(ms) == 100 and agent.latency_stats(ms)["p50"] == pytest.approx(float(np.percentile(ms, 50)), abs=1e-4)
    ops = agent.trtexec_layers(PROFILE_8_5)
    assert [o["op"] for o in ops["by_op_type"]] == ["Conv+Relu", "Gemm", "Reformat"]
    assert ops["total_ms"] == pytest.approx(0.4) and ops["runs"] == 50
    dtype, shape, raw = agent.trtexec_outputs(OUTPUT_10_3)["logits"]
    assert np.frombuffer(raw, dtype).reshape(shape).tolist() == [[0.5, -1.0, 2.0], [0.0, 1.5, -0.25]]
    assert agent.trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help") == "10.3.0"
    assert agent.trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help") == "8.5.2"
    for bad in ([], [{"computeMs": 1}], {"latencyMs": 1}):
        with pytest.raises(ValueError):
            agent.trtexec_times(bad)


def test_npz_without_numpy_round_trips_what_numpy_writes(tmp_path):
    """trtexec reads and writes raw buffers, so the agent reads the host's .npz with the standard library."""
    arrays = {"image": np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32),
              "ids": np.arange(6, dtype=np.int64).reshape(2, 3), "mask": np.array([True, False])}  # fmt: skip
    np.savez(tmp_path / "a.npz", **arrays)
    raw = agent.read_npz(tmp_path / "a.npz")
    agent.write_npz(tmp_path / "b.npz", raw)  # type: ignore[arg-type]
    with np.load(tmp_path / "b.npz") as back:
        assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())


def test_int64_inputs_become_int32_for_tensorrt_8():
    ids = np.array([[0, 41, 7], [2**31 - 1, 1, 0]], np.int64)
    assert np.array_equal(np.frombuffer(agent.int32_bytes(ids.tobytes()), "<i4").reshape(2, 3), ids)


def test_an_engine_from_another_tensorrt_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"engine")
    with pytest.raises(agent.Fail) as e:
        agent.check_engine(tmp_path, {"engine": {"tensorrt": "8.5.2.2"}}, "10.3.0")
    assert str(e.value) == ("loading the engine: model.engine was built with TensorRT 8.5.2.2; this device has 10.3.0 "
                            "(rebuild it on this device: edgekit build --remote)")  # fmt: skip
    agent.check_engine(tmp_path, {"engine": {"tensorrt": "10.3.0"}}, "10.3.0")
    (tmp_path / "model.engine").unlink()
    with pytest.raises(agent.Fail, match=r"has no model\.engine"):
        agent.check_engine(tmp_path, {}, "10.3.0")


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory) -> Path:
    io = io_spec(AVDigitsConfig(), 41)
    tmp = tmp_path_factory.mktemp("bundle")
    model = build_fusion_model(arch="intermediate", preset="small", modalities=list(io.modalities), vocab_size=41,
                               max_len=32)  # fmt: skip
    onnx_path = export_onnx(model, io, tmp / "model.onnx")
    return write_bundle(onnx_path, io, ORIN_NANO, "fp16", tmp / "tensorrt-fp16", "p", {"profile": ORIN_NANO.name}
                        ).directory  # fmt: skip


def test_validate_takes_trtexec_files_and_the_agents_facts(trt_bundle, tmp_path, avdigits):
    """A user who ran trtexec by hand on the Jetson: its times and per-layer profile, and the facts the bundle's
    agent wrote there, make the latency `measured` on that device; without facts it is a proxy that says why."""
    (tmp_path / "times.json").write_text(json.dumps(TIMES_10_3))
    (tmp_path / "layers.json").write_text(json.dumps(PROFILE_8_5))
    facts = {"device_model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "l4t": "36.4.3",
             "cpu_model": "ARMv8 Processor rev 1 (v8l)", "cpus": 6, "isa": ["asimd", "asimddp"]}  # fmt: skip
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    args = ["validate", str(trt_bundle), "--target", "jetson-orin-nano-8gb", "--measurements",
            str(tmp_path / "times.json"), "--measurements", str(tmp_path / "layers.json"), "--json"]  # fmt: skip
    r = run_cli(*args, "--device-facts", str(tmp_path / "facts.json"))
    out = json.loads(r.stdout)
    row = out["rows"][0]
    assert row["latency_source"] == "measured" and row["p50_ms"] == pytest.approx(0.895, abs=1e-3), r.stderr
    assert row["ops"]["by_op_type"][0]["op"] == "Conv+Relu" and row["device_side"] == "trtexec"
    ram = next(c for c in row["checks"] if c["budget"] == "max_peak_ram_mb")
    assert ram["status"] == "unverified" and ram["why"] == "the measurement has no peak RSS"
    r = run_cli(*args, "--device-fact", "device_model=Jetson AGX Orin", "--device-fact", "l4t=36.4.3")
    row = json.loads(r.stdout)["rows"][0]
    assert row["latency_source"] == "proxy" and "does not match 'Jetson Orin Nano'" in row["not_the_device"]
    r = run_cli(*args)
    row = json.loads(r.stdout)["rows"][0]
    assert row["latency_source"] == "proxy" and "--device-facts" in row["not_the_device"]


# -- over ssh, as a device account without EdgeKit -------------------------------------------------------------------


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(sshd logged in as the device account, that account's Python: only onnxruntime and numpy)."""
    user = device_account()
    python = device_python(Path(tempfile.mkdtemp(prefix="edgekit-device-py-")) / "venv")
    with sshd_server(tmp_path_factory.mktemp("sshd-device"), user=user) as server:
        yield server, python
    shutil.rmtree(python.parents[2], ignore_errors=True)


@pytest.fixture(scope="module")
def teacher_onnx(reference_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("device-export")
    api.export(reference_teacher, "x86", out, api.ExportOptions("onnx", "fp32", threads=1))
    return out / "onnx-fp32"


def on_device(device, *args: str, python: str | None = None, timeout: str = "600") -> object:
    server, py = device
    return run_cli(*args, "--remote", server.remote, "--ssh-config", server.config, "--remote-python",
                   python or str(py), "--remote-edgekit", "/nonexistent/edgekit",
                   "--remote-timeout", timeout)  # fmt: skip


def left_on_device() -> list[Path]:
    return [p for p in Path("/tmp").glob("edgekit-remote.*") if p.owner() == DEVICE_USER]


@pytest.mark.ssh
def test_profile_remote_without_edgekit_runs_the_agent(device, teacher_onnx):
    r = on_device(device, "profile", str(teacher_onnx), "--batch", "1,2", "--runs", "20", "--threads", "1", "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["remote"]["device_side"] == "agent" and out["device_side"] == "agent"
    assert [x["batch"] for x in out["results"]] == [1, 2] and out["results"][0]["latency_ms"]["runs"] == 20
    assert out["results"][0]["energy"] == {
        "energy_mj": None,
        "why": "tegrastats not found on the device (it ships with JetPack)",
    }
    assert out["ops"]["runtime"].startswith("onnxruntime") and out["ops"]["by_op_type"]
    assert out["host"]["device"]["runtimes"]["onnxruntime"] and out["host"]["device"]["runtimes"]["openvino"] is None
    assert out["artifact"]["sha256"] == sha256_file(load_artifact(teacher_onnx).path)
    assert not left_on_device()


@pytest.mark.ssh
def test_validate_remote_measures_latency_energy_and_accuracy_on_the_device(device, teacher_onnx, x86_here,
                                                                            reference_teacher, tmp_path):  # fmt: skip
    """The device's accuracy is its runtime's outputs scored here, and equals the same runtime's run here; the
    energy budget stays unverified without tegrastats, and says so."""
    spec = yaml.safe_load(Path(x86_here).read_text())
    spec["budgets"]["max_energy_mj"] = 5.0
    target = tmp_path / "x86-energy.yaml"
    target.write_text(yaml.safe_dump(spec))
    base = ["validate", str(teacher_onnx), "--target", str(target), "--baseline", str(reference_teacher), "--json"]
    r = on_device(device, *base)
    assert r.code == 3, r.stderr  # unverified: energy only
    there = json.loads(r.stdout)["rows"][0]
    assert there["accuracy_source"].startswith("device: onnxruntime") and there["latency_source"] == "measured"
    assert there["device_side"] == "agent" and there["p95_ms"] > 0
    energy = next(c for c in there["checks"] if c["budget"] == "max_energy_mj")
    assert energy["status"] == "unverified" and "tegrastats not found" in energy["why"]
    assert {c["status"] for c in there["checks"] if c["budget"] != "max_energy_mj"} == {"pass"}
    here = json.loads(run_cli(*base).stdout)["rows"][0]
    assert here["accuracy_source"] == "its runtime"  # onnxruntime here
    assert there["accuracy"] == here["accuracy"] and there["samples"] == here["samples"] >= 450
    assert {k: v["accuracy"] for k, v in there["subsets"].items()} == {
        k: v["accuracy"] for k, v in here["subsets"].items()
    }
    assert not left_on_device()


@pytest.mark.ssh
def test_a_device_that_is_not_the_profiles_is_refused_before_measuring(device, teacher_onnx, tmp_path):
    spec = yaml.safe_load((ROOT / "edgekit/hardware/profiles/x86-avx2.yaml").read_text())
    spec["identity"] = {"device_model": "Jetson Orin Nano"}
    (tmp_path / "orin.yaml").write_text(yaml.safe_dump(spec))
    r = on_device(device, "validate", str(teacher_onnx), "--target", str(tmp_path / "orin.yaml"), "--json")
    row = json.loads(r.stdout)["rows"][0]
    assert r.code == 1 and row["status"] == "error"
    assert (
        row["error"].startswith(f"{DEVICE_USER}@127.0.0.1:")
        and "is not x86-avx2's device: device_model None" in row["error"]
    )
    assert "--target" in row["error"] and not left_on_device()


@pytest.mark.ssh
def test_device_without_the_runtime_python_or_tensorrt_says_so_in_one_line(device, teacher_onnx, trt_bundle, tmp_path):
    r = on_device(device, "profile", str(teacher_onnx), python="/usr/bin/python3")  # no onnxruntime there
    assert r.code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "profiling on" in r.stderr and "onnxruntime is not installed on this device (pip install" in r.stderr
    r = on_device(device, "profile", str(teacher_onnx), python="/nonexistent/python3")
    assert r.code == 1 and r.stderr.count("\n") == 1 and "nor Python ('/nonexistent/python3') is on" in r.stderr
    bundle = tmp_path / "bundle"
    shutil.copytree(trt_bundle, bundle)
    r = on_device(device, "build", str(bundle))
    assert r.code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "building the engine: no TensorRT Python bindings and no trtexec on this device" in r.stderr
    assert not (bundle / "model.engine").exists() and not left_on_device()
    load_artifact(bundle)  # the bundle is as it was
    # validate --remote builds a missing engine there first: the same one line, in the row
    spec = yaml.safe_load((ROOT / "edgekit/hardware/profiles/jetson-orin-nano-8gb.yaml").read_text())
    spec["identity"] = {"cpu_model": f"^{re.escape(agent.identity_facts()['cpu_model'])}$"}  # this host as the Orin
    (tmp_path / "orin-here.yaml").write_text(yaml.safe_dump(spec))
    r = on_device(device, "validate", str(bundle), "--target", str(tmp_path / "orin-here.yaml"), "--json")
    row = json.loads(r.stdout)["rows"][0]
    assert r.code == 1 and "building the engine on" in row["error"] and "no TensorRT Python bindings" in row["error"]
    assert not (bundle / "model.engine").exists() and not left_on_device()


@pytest.mark.ssh
def test_a_transfer_cut_mid_run_leaves_nothing_half_written(device, teacher_onnx, x86_here):
    """Each ssh command has 1 s: the run is cut mid-way (a dropped link looks the same to the host). One line names
    the step; the artifact here is untouched and the device's temporary directory is removed."""
    r = on_device(device, "profile", str(teacher_onnx), "--duration", "3", timeout="1")
    assert r.code == 1 and r.stderr.count("\n") == 1 and "timed out after 1 s" in r.stderr, r.stderr
    r = on_device(device, "validate", str(teacher_onnx), "--target", str(x86_here), "--json", timeout="1")
    row = json.loads(r.stdout)["rows"][0]
    assert r.code == 1 and row["status"] == "error" and "timed out after 1 s" in row["error"], r.stderr
    load_artifact(teacher_onnx)  # every file still matches its hash
    assert not left_on_device()


def test_a_profile_can_carry_an_energy_budget(tmp_path):
    spec = yaml.safe_load((ROOT / "edgekit/hardware/profiles/jetson-orin-nano-8gb.yaml").read_text())
    spec["budgets"]["max_energy_mj"] = 20
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    assert parse_profile(tmp_path / "p.yaml").budgets.max_energy_mj == 20


@pytest.mark.skipif(gpu_visible(), reason="a GPU is visible here")
def test_without_a_gpu_the_engine_runtime_fails_in_one_line():
    """The agent's CUDA through ctypes, for real: without libcudart it says what to install; with libcudart but no
    GPU (this host may have the library) the driver's own error, one line."""
    with pytest.raises(agent.Fail) as e:
        agent.Cuda()
    if ctypes.util.find_library("cudart") is None:
        assert str(e.value).startswith("loading CUDA: libcudart.so not found (install JetPack's CUDA runtime")
    else:
        assert str(e.value).startswith("loading CUDA: cudaStreamCreate failed: ") and "\n" not in str(e.value)


@pytest.mark.tensorrt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not gpu_visible(), reason="needs TensorRT, a GPU")
def test_the_agent_times_and_runs_an_engine_as_onnxruntime_computes_it(trt_bundle, tmp_path):
    """On a Jetson (or a GPU host with TensorRT): the agent's TensorRT path, bindings and libcudart through ctypes,
    builds the engine, times it with per-layer times, and its outputs match onnxruntime's."""
    from edgekit.runtimes.ort import OrtRunner

    bundle = tmp_path / "bundle"
    shutil.copytree(trt_bundle, bundle)
    agent_py = [sys.executable, str(bundle / agent.AGENT)]
    assert subprocess.run([*agent_py, "build", str(bundle)], check=False).returncode == 0
    art = load_artifact(bundle)
    io = art.io
    (tmp_path / "feeds").mkdir()
    np.savez(tmp_path / "feeds" / "b1.npz", **io.example_inputs(1))
    r = subprocess.run([*agent_py, "profile", str(bundle), "--feeds", str(tmp_path / "feeds"), "--duration", "1"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    out = json.loads(r.stdout)
    assert out["runtime"].startswith("tensorrt") and out["results"][0]["latency_ms"]["p50"] > 0, r.stderr
    assert out["ops"]["by_op_type"] and out["host"]["device"]["tensorrt"]
    (tmp_path / "chunks").mkdir()
    feeds = io.example_inputs(4, seed=3)
    np.savez(tmp_path / "chunks" / "000000.npz", **feeds)
    args = ["infer", str(bundle), "--chunks", str(tmp_path / "chunks"), "--out", str(tmp_path / "out")]
    assert subprocess.run([*agent_py, *args], check=False).returncode == 0
    with np.load(tmp_path / "out" / "000000.npz") as got:
        want = OrtRunner(art).run(feeds)["logits"]
        assert np.abs(got["logits"] - want).max() < 5e-2  # fp16
