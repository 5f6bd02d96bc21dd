from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgekit.data import load_split, resolve_data
from edgekit.data.adapter import dataset_meta
from edgekit.io import IOSpec

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """The real CLI in a subprocess: exit codes, stdout and stderr as a user sees them."""
    env = {**os.environ, "COLUMNS": "120"}
    p = subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


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
