from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edgekit.data import load_split, resolve_data
from edgekit.data.adapter import dataset_meta
from edgekit.io import IOSpec

ROOT = Path(__file__).resolve().parents[1]


# A latency gate decides the same way on a loaded 2-core host and a quiet one only when the limit and the measured
# p95 are this far apart. Closer, a test that reads the exit code asserts a timing.
LOAD_PROOF = 20.0
# The latency budget of a profile a test writes with this host as the device: no load trips it (LOAD_PROOF x any
# p95 the suite's models reach here).
LOAD_PROOF_MS = 5000.0


def timing_gates(stdout: str) -> list[str]:
    """The latency gates, anywhere in a --json result (validate's rows, compress's and search's validations), that a
    measured latency decided within LOAD_PROOF of their limit."""
    try:
        result = json.loads(stdout)
    except ValueError:
        return []
    gates, todo = [], [result]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            todo.extend(node.values())
            if node.get("latency_source") == "measured":
                gates += [f"{node.get('artifact')}: p95 {c['value']:.3g} ms against a limit of {c['limit']} ms"
                          for c in node.get("checks") or [] if c.get("budget") == "latency_p95_ms"
                          and c.get("status") in ("pass", "fail") and c.get("value")
                          and 1 / LOAD_PROOF < c["limit"] / c["value"] < LOAD_PROOF]  # fmt: skip
    return gates


@dataclass
class CliResult:
    """A CLI run. Its exit code may not be read where a measured latency decided a gate it could have decided the
    other way under load: a test asserts budgets of a profile it writes (device_profile_here), never a timing."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def code(self) -> int:
        gates = timing_gates(self.stdout)
        assert not gates, (
            f"this exit code depends on the host's load ({'; '.join(gates)}): validate against a profile the test "
            "writes, with a latency budget no load trips (conftest.device_profile_here)"
        )
        return self.exit_code


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """The real CLI in a subprocess: exit codes, stdout and stderr as a user sees them."""
    env = {**os.environ, "COLUMNS": "120"}
    p = subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def device_profile_here(directory: Path, base: str, name: str = "this-host") -> Path:
    """The shipped profile `base` with this host as its device (its CPU model and usable CPUs), the way a user
    describes their own machine, and a latency budget no load trips: its other budgets stay the shipped ones."""
    from edgekit.hardware.identity import host_facts

    spec = yaml.safe_load((ROOT / "edgekit" / "hardware" / "profiles" / f"{base}.yaml").read_text())
    facts = host_facts()
    identity = {"cpu_model": f"^{re.escape(facts['cpu_model'])}$", "cpus": facts["cpus"]}
    budgets = {**spec.get("budgets", {}), "latency_p95_ms": LOAD_PROOF_MS}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name, "identity": identity, "budgets": budgets}))
    return path


@pytest.fixture(scope="session")
def x86_here(tmp_path_factory) -> Path:
    """The `x86` target (this host, with the profile of its ISA class) as a profile file whose latency budget no load
    trips: what a test passes where it reads the exit code of a run measured here."""
    from edgekit.hardware import host_profile

    name, _ = host_profile("x86")
    return device_profile_here(tmp_path_factory.mktemp("x86-here"), name or "x86-avx512-vnni", "x86")


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts (sshd, mlflow)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def avdigits() -> Path:
    """The default AV-digits build (real digits, real TTS); cached by content hash."""
    return resolve_data("avdigits")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def avdigits_io(avdigits: Path) -> IOSpec:
    return IOSpec.from_dict(dataset_meta(avdigits)["io"])


@pytest.fixture(scope="session")
def test_split(avdigits: Path):
    return load_split("avdigits", "test")


@pytest.fixture(scope="session")
def reference_teacher() -> Path:
    from edgekit import api

    return api.reference_teacher()


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core machine: a second intra-op thread mostly waits for other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
