"""A device fleet: `edgekit profile --fleet` and `edgekit validate --fleet` against two real OpenSSH servers on
127.0.0.1 (different ports, host keys and user keys), one of them stopped in the middle of a run; and the fleet
file's errors."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgekit import api
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model
from edgekit.validate import read_measurements

from .conftest import ROOT, free_port, run_cli
from .sshd import sshd_server

KWARGS = {"arch": "late", "preset": "small", "vocab_size": 41, "max_len": 32}
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
ENV = {"PYTHONPATH": str(ROOT)}  # the device runs this checkout's EdgeKit, set through the fleet file's env


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, avdigits):
    """An ONNX FP32 artifact exported for `x86` (this host), so a loopback device of profile x86 is its device."""
    tmp = tmp_path_factory.mktemp("fleet")
    torch.manual_seed(0)
    model = build_fusion_model(**KWARGS).eval()
    save_model_package(model, io_spec(AVDigitsConfig(), 41), tmp / "pkg", factory="edgekit.models:build_fusion_model",
                       kwargs=KWARGS)  # fmt: skip
    api.export(tmp / "pkg", "x86", tmp / "x86", api.ExportOptions("onnx", "fp32", threads=1))
    return tmp / "x86" / "onnx-fp32"


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two sshd servers: two "devices" with their own ports and keys."""
    with sshd_server(tmp_path_factory.mktemp("sshd-a")) as a, sshd_server(tmp_path_factory.mktemp("sshd-b")) as b:
        assert a.remote != b.remote and Path(a.config).read_text() != Path(b.config).read_text()
        yield a, b


def device(name, server, profile="x86", **extra):
    return {"name": name, "ssh": server.remote, "profile": str(profile), "ssh_config": server.config,
            "edgekit": EDGEKIT, "env": ENV, **extra}  # fmt: skip


def fleet_file(path, *devices):
    path.write_text(yaml.safe_dump({"devices": list(devices)}))
    return path


def overlap(rows):
    """Seconds during which every row's run was going at once (negative: they never all were)."""
    return min(r["ended"] for r in rows) - max(r["started"] for r in rows)


@pytest.mark.ssh
def test_two_devices_profile_at_once_and_merge(two, artifact, tmp_path):
    a, b = two
    fleet = fleet_file(tmp_path / "fleet.yaml", device("a", a), device("b", b))
    r = run_cli("profile", str(artifact), "--fleet", str(fleet), "--runs", "5", "--no-ops", "--threads", "1",
                "--json", "--out", str(tmp_path / "out"))  # fmt: skip
    assert r.code == 0, r.stderr
    run = json.loads(r.stdout)
    rows = {row["device"]: row for row in run["rows"]}
    assert sorted(rows) == ["a", "b"] and run["status"] == "ok"
    for name, server in (("a", a), ("b", b)):
        row = rows[name]
        assert row["status"] == "ok" and row["ssh"] == server.remote and row["profile"] == "x86", row
        assert row["artifact"] == str(artifact) and 0 < row["p50_ms"] <= row["p95_ms"]
        assert (
            row["result"]["remote"]["device"] == server.remote
            and row["result"]["results"][0]["latency_ms"]["runs"] == 5
        )
    assert overlap(run["rows"]) > 0.5, "the two devices ran one after the other"
    measured = tmp_path / "a.json"  # a device's result reads as `validate --measurements` does, as a file or in hand
    measured.write_text(json.dumps(rows["a"]["result"]))
    sha = rows["a"]["sha256"]
    assert read_measurements([measured])[sha]["file"] == str(measured)
    assert read_measurements([measured, {**rows["b"]["result"], "file": "b"}])[sha]["remote"]["device"] == b.remote
    saved = json.loads((tmp_path / "out" / "fleet.json").read_text())
    assert saved["rows"] == run["rows"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count(">onnx-fp32<") == 2 and a.remote in page and b.remote in page
    (tmp_path / "out" / "report.html").unlink()
    r = run_cli("report", str(tmp_path / "out"))  # rendered again from fleet.json alone
    assert r.code == 0 and (tmp_path / "out" / "report.html").read_text() == page, r.stderr


def dying_edgekit(path: Path, listener: int) -> Path:
    """The device's `edgekit`: it stops the device's sshd (no new connections) and cuts the connection it runs on,
    as a device that dies or drops off the network mid-run."""
    path.write_text(f"""#!/bin/sh
pid=$$
while [ "$pid" -gt 1 ]; do  # the sshd process serving this connection is the listener's child
  parent=$(cut -d' ' -f4 /proc/$pid/stat)
  [ "$parent" = {listener} ] && session=$pid
  pid=$parent
done
kill -TERM {listener}
kill -KILL $session
sleep 30
""")
    path.chmod(0o755)
    return path


@pytest.mark.ssh
def test_a_device_stopped_mid_run_is_an_error_row_and_the_rest_is_kept(two, artifact, tmp_path):
    a, _ = two
    with sshd_server(tmp_path / "sshd") as b:
        os.mkdir(tmp_path / "bin")
        wrapper = dying_edgekit(tmp_path / "bin" / "edgekit", b.server.pid)
        fleet = fleet_file(tmp_path / "fleet.yaml", device("a", a), device("b", b, edgekit=str(wrapper), timeout=60))
        r = run_cli("profile", str(artifact), "--fleet", str(fleet), "--runs", "5", "--no-ops", "--threads", "1",
                    "--json", "--out", str(tmp_path / "out"))  # fmt: skip
        assert b.server.poll() is not None, "device b's sshd was meant to be stopped"
    assert r.code == 1, r.stderr
    run = json.loads(r.stdout)
    rows = {row["device"]: row for row in run["rows"]}
    assert sorted(rows) == ["a", "b"] and run["status"] == "error"
    assert rows["a"]["status"] == "ok" and rows["a"]["p50_ms"] > 0 and rows["a"]["result"]["results"]
    bad = rows["b"]
    assert bad["status"] == "error" and "p50_ms" not in bad and bad["artifact"] == str(artifact)
    assert b.remote in bad["error"] and "\n" not in bad["error"], bad
    assert bad["ended"] - bad["started"] < 50, "the lost connection was noticed at once, not at the timeout"
    assert json.loads((tmp_path / "out" / "fleet.json").read_text())["rows"] == run["rows"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'class="error">error<' in page and b.remote in page


@pytest.mark.ssh
def test_validate_each_device_against_its_profile(two, artifact, tmp_path, x86_here):
    a, b = two
    fleet = fleet_file(tmp_path / "fleet.yaml", device("a", a, x86_here), device("b", b, x86_here))
    r = run_cli("validate", str(artifact), "--fleet", str(fleet), "--json", "--out", str(tmp_path / "out"))
    run = json.loads(r.stdout)
    assert r.code == {"pass": 0, "fail": 1, "unverified": 3}[run["verdict"]], r.stderr
    rows = {row["device"]: row for row in run["rows"]}
    assert sorted(rows) == ["a", "b"]
    for name, server in (("a", a), ("b", b)):
        row = rows[name]
        assert row["status"] in ("pass", "fail", "unverified"), row
        assert row["latency_source"] == "measured" and row["measurements"] == f"{name} ({server.remote})"
        assert row["accuracy"] is not None and {c["budget"] for c in row["checks"]} >= {"latency_p95_ms"}
    assert rows["a"]["p95_ms"] != rows["b"]["p95_ms"]  # each its own device's measurement
    for d in run["devices"]:
        assert d["validation"]["profile"] == "x86" and d["validation"]["verdict"] in ("pass", "fail", "unverified")
    assert "accuracy" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "fleet file not found"),
        ("devices: [", "cannot be read"),
        ("devices: []", "field 'devices'"),
        ("devices:\n- {name: a, ssh: me@h, profile: x86, colour: red}", "field 'devices.0.colour'"),
        ("devices:\n- {name: a, ssh: me@h, profile: nonesuch}", "device a: unknown"),
        ("devices:\n- {name: a, ssh: 'me@h:99999', profile: x86}", "device a: 'me@h:99999' is not a remote"),
        ("devices:\n- {name: a, ssh: me@h, profile: x86}\n- {name: a, ssh: me@g, profile: x86}", "device 'a' twice"),
        ("devices:\n- {name: a, ssh: me@h, profile: x86, env: {'A B': x}}", "not an environment variable name"),
    ],
)
def test_bad_fleet_files_are_one_line_usage_errors(artifact, tmp_path, text, message):
    fleet = tmp_path / "fleet.yaml"
    if text is not None:
        fleet.write_text(text)
    r = run_cli("profile", str(artifact), "--fleet", str(fleet))
    assert r.code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_fleet_flags_and_an_artifact_no_device_takes(artifact, tmp_path):
    fleet = fleet_file(
        tmp_path / "fleet.yaml", {"name": "orin", "ssh": f"me@127.0.0.1:{free_port()}", "profile": "jetson"}
    )
    r = run_cli("profile", str(artifact), "--fleet", str(fleet), "--remote", "me@h")
    assert r.code == 2 and "--fleet and --remote cannot be combined" in r.stderr, r.stderr
    r = run_cli("profile", str(artifact), str(artifact), "--runs", "1")
    assert r.code == 2 and "profile takes one" in r.stderr, r.stderr
    r = run_cli("validate", str(artifact), "--fleet", str(fleet), "--profile", "x86")
    assert r.code == 2 and "--fleet takes no --profile" in r.stderr, r.stderr
    r = run_cli("profile", str(artifact), "--fleet", str(fleet), "--json")  # built for x86; the fleet has a jetson
    assert r.code == 1, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert (
        row["status"] == "no-device"
        and row["device"] is None
        and "no device in the fleet has profile x86" in row["error"]
    )
