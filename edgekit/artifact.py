"""Artifacts: one directory per exported model, described by `manifest.json`.

The manifest is what runners load from and what validation trusts: format, precision, the IOSpec,
the sha256 of every file, the parent model's hash and the library versions that made it."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .fsutil import sha256_file, write_json
from .hardware.cpu import this_cpu
from .io import IOSpec

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "edgekit-artifact/1"


def model_hash(model: Any) -> str:
    """sha256 over a torch module's state dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out), plus Python's."""
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def accuracy_record(value: float, data: str, split: str) -> dict[str, Any]:
    """An artifact's accuracy where it was built, with the CPU it ran on: INT8 kernels differ between CPUs, so
    validation on another host compares against this (hardware/cpu.py)."""
    cpu, isa = this_cpu()
    return {"value": value, "data": data, "split": split, "cpu": cpu, "isa": list(isa)}


@dataclass(frozen=True)
class Artifact:
    """An exported model: `directory/file` is what its runtime loads (a bundle's ONNX for tensorrt)."""

    format: str
    precision: str
    directory: Path
    file: str
    io: IOSpec
    parent: str  # sha256 of the source model's weights (or of the parent artifact's file)
    meta: Mapping[str, Any] = field(default_factory=dict)  # versions, profile, calibration, dynamic dims, notes

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def files(self) -> dict[str, str]:
        """sha256 of every file in the artifact directory except the manifest."""
        return {
            str(p.relative_to(self.directory)): sha256_file(p)
            for p in sorted(self.directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file() and p.name != MANIFEST) / 1e6

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "artifact_format": self.format,
            "precision": self.precision,
            "file": self.file,
            "sha256": sha256_file(self.path),
            "files": self.files(),
            "parent": self.parent,
            "io": self.io.to_dict(),
            "meta": dict(self.meta),
        }

    def write_manifest(self) -> Path:
        path = self.directory / MANIFEST
        write_json(path, self.to_manifest())
        return path

    def with_meta(self, **extra: Any) -> Artifact:
        return dataclasses.replace(self, meta={**self.meta, **extra})


def _inside(name: object) -> bool:
    """Whether a manifest's file name is a relative path that stays inside the artifact directory."""
    return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def load_artifact(directory: Path, verify: bool = True) -> Artifact:
    """Read an artifact directory's manifest; with `verify`, every file's hash must match it."""
    directory = Path(directory)
    if directory.is_file() and directory.name != MANIFEST:
        directory = directory.parent
    path = directory / MANIFEST
    if not path.is_file():
        raise UsageError(
            f"{directory} is not an EdgeKit artifact: no {MANIFEST}", "pass a directory `edgekit export` wrote"
        )
    try:
        m = json.loads(path.read_text())
        art = Artifact(m["artifact_format"], m["precision"], directory, m["file"], IOSpec.from_dict(m["io"]),
                       m["parent"], m.get("meta", {}))  # fmt: skip
        recorded: dict[str, str] = m["files"]
        outside = [name for name in (art.file, *recorded) if not _inside(name)]
    except (ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: JSON syntax, ints past 4300 digits
        raise UsageError(f"{path} is malformed ({type(e).__name__}: {e})", "re-export the artifact") from e
    # The manifest is as untrusted as the files: the file a runtime loads must lie inside the directory and have
    # a recorded hash, or an edited manifest could point it at any file, unverified.
    if outside:
        raise UsageError(f"{path} names a file outside the artifact: {outside[0]!r}", "re-export the artifact")
    if art.file not in recorded:
        raise UsageError(f"{path} records no hash for its model file {art.file}", "re-export the artifact")
    if verify:
        for name, digest in recorded.items():
            f = directory / name
            if not f.is_file():
                raise UsageError(f"artifact file {f} is missing", "re-export the artifact")
            if sha256_file(f) != digest:
                raise UsageError(
                    f"artifact file {f} does not match its manifest hash (corrupt or modified)",
                    "re-export the artifact",
                )
    return art
