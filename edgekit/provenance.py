"""What a run directory records so that a result can be traced and reproduced: EdgeKit's version and git commit,
library versions, the host, the seed, and sha256 of every input and output."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .artifact import sha256_file
from .profiling.host import host_info

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_commit() -> str | None:
    """The commit EdgeKit runs from, when it runs from its own git checkout. An installed copy has none, even
    inside another project's repository (a venv in a user's repo): this very file must be tracked there."""
    tracked = _git("ls-files", "--error-unmatch", Path(__file__).name)
    head = _git("rev-parse", "HEAD") if tracked and tracked.returncode == 0 else None
    if head is None or head.returncode != 0:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return head.stdout.strip() + ("-dirty" if status is not None and status.stdout.strip() else "")


def tree_hashes(root: Path, skip: frozenset[str] = frozenset({"stage.json"})) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (`skip`: files that hold timings, not results)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip]
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


def provenance(seed: int, model_sha: str, data: dict[str, str]) -> dict[str, Any]:
    host = host_info()
    # Training is bit-reproducible only at the same thread count (float sums change order), so it is recorded.
    return {"edgekit": __version__, "git_commit": git_commit(), "seed": seed, "torch_threads": torch.get_num_threads(),
            "versions": host.pop("versions"), "host": host,
            "inputs": {"model_sha256": model_sha, "data_sha256": data}}  # fmt: skip
