"""Crash-safe writes: everything goes to a temporary name in the same directory, then is renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UsageError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like any new directory
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_out_dir(path: Path, overwrite: bool) -> None:
    """Refuse to replace a directory that already holds something, unless told to."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {path} is a file", "choose a directory path for --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"output directory {path} is not empty", "choose a new --out or pass --overwrite")


def check_writable(path: Path) -> None:
    """Fail before any work if `path` (or its nearest existing parent) cannot be written: try it."""
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgekit-probe-", dir=probe)
    except OSError as e:
        raise UsageError(
            f"output directory {path} is not writable ({e.strerror}: {probe})", "choose a writable --out"
        ) from e
    os.close(fd)
    os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def content_hash(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold the lock of a shared cache entry while building it: a second process that wants the same entry waits,
    then finds it built (check again inside the lock) instead of building it beside the first."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        yield


def cache_root() -> Path:
    """Where built datasets and the reference teacher are cached (EDGEKIT_CACHE overrides)."""
    env = os.environ.get("EDGEKIT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit"
    return base.expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
