"""A dataset resolved once: the name a record shows, the key a stage cache is found by, and its splits, each
loaded on first use. It comes from a spec (a built-in name, a directory of .npz splits, module:function) or from
splits already in memory, so everything below the verbs takes a `Splits` and never resolves a spec again."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..fsutil import sha256_file
from .adapter import FeedDataset, load_npz_split
from .avdigits import AVDigitsConfig, build_avdigits

Loader = Callable[[str], FeedDataset]

# Built-in dataset names -> their configuration.
BUILTIN: dict[str, AVDigitsConfig] = {
    "avdigits": AVDigitsConfig(),
    "avdigits-video": AVDigitsConfig(video_frames=8),
}


def is_adapter_spec(spec: str) -> bool:
    """Whether `spec` names a data adapter function ('module:function'): code to import and call, not data."""
    return spec not in BUILTIN and ":" in spec and not Path(spec).exists()


def resolve_data(spec: str) -> Path | str:
    """A built-in name gives its (cached) build directory; a directory is returned as is; a
    'module:function' spec is returned unchanged for load_split."""
    if spec in BUILTIN:
        return build_avdigits(BUILTIN[spec])
    path = Path(spec)
    if path.is_dir():
        return path
    if is_adapter_spec(spec):
        return spec
    raise UsageError(
        f"dataset not found: {spec}",
        f"use {' or '.join(BUILTIN)}, a directory of train/val/test .npz files, or module:function",
    )


class Splits:
    def __init__(self, name: str, load: Loader, files: Path | None = None, in_memory: bool = False) -> None:
        self.name = name  # the spec, or "in-memory"
        self.files = files  # the directory of <split>.npz files, when there is one
        self.in_memory = in_memory
        self._load, self._loaded = load, dict[str, FeedDataset]()

    def __call__(self, split: str) -> FeedDataset:
        if split not in self._loaded:
            found = self._load(split)
            if not isinstance(found, FeedDataset) or len(found) == 0:
                raise UsageError(f"'{self.name}' returned no samples for split '{split}'",
                                 "return a non-empty edgekit.data.FeedDataset")  # fmt: skip
            self._loaded[split] = found
        return self._loaded[split]

    def __repr__(self) -> str:
        return f"Splits({self.name!r})"

    def hashes(self, splits: set[str]) -> dict[str, str]:
        """sha256 of each split a run reads: its .npz file, or its samples when in memory; a module:function
        dataset's code has no file to hash."""
        if self.files is not None:
            paths = {s: self.files / f"{s}.npz" for s in sorted(splits)}
            return {s: sha256_file(p) for s, p in paths.items() if p.is_file()}
        return {s: content_sha(self(s)) for s in sorted(splits)} if self.in_memory else {}

    def key(self, splits: set[str]) -> str | dict[str, str]:
        """What a stage cache keys the data by: the spec (as runs have always been keyed), or the samples' hashes
        when the data lives in memory and has no name to stand for it."""
        return self.hashes(splits) if self.in_memory else self.name

    @classmethod
    def of(cls, data: DataLike) -> Splits:
        """A spec is resolved here, once (a built-in dataset is built or found in its cache); in-memory splits
        are taken as given, by split name."""
        if isinstance(data, Splits):
            return data
        if isinstance(data, Mapping):
            bad = [k for k, v in data.items() if not isinstance(v, FeedDataset)]
            if bad or not data:
                raise UsageError(f"in-memory data must map split names to FeedDatasets ({', '.join(map(str, bad))})",
                                 "e.g. {'train': from_arrays(...), 'val': ..., 'test': ...}")  # fmt: skip
            given = dict(data)

            def pick(split: str) -> FeedDataset:
                if split not in given:
                    raise UsageError(f"the in-memory data has no split '{split}' (it has {', '.join(given)})",
                                     f"add a '{split}' FeedDataset")  # fmt: skip
                return given[split]

            return cls("in-memory", pick, in_memory=True)
        where = resolve_data(str(data))
        if isinstance(where, Path):
            return cls(str(data), lambda split: load_npz_split(where, split), files=where)
        from ..loading import import_object

        return cls(str(data), import_object(where))


def content_sha(data: FeedDataset) -> str:
    """sha256 over every sample's feeds (by input name) and label."""
    h = hashlib.sha256()
    for feeds, label in (data[i] for i in range(len(data))):
        for name in sorted(feeds):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feeds[name]).tobytes())
        h.update(np.asarray(label).tobytes())
    return h.hexdigest()


DataLike = str | Path | Mapping[str, FeedDataset] | Splits
