"""Datasets and the adapters that feed them to models, runtimes and calibrators."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .adapter import FeedDataset, dataset_meta, from_arrays, load_npz_split, with_modalities
from .avdigits import AVDigitsConfig, build_avdigits

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


def load_split(spec: str, split: str) -> FeedDataset:
    """The named split of a dataset spec, as an adapter."""
    from ..loading import import_object

    where = resolve_data(spec)
    if isinstance(where, Path):
        return load_npz_split(where, split)
    ds = import_object(where)(split)
    if not isinstance(ds, FeedDataset) or len(ds) == 0:
        raise UsageError(
            f"'{spec}' returned no samples for split '{split}'", "return a non-empty edgekit.data.FeedDataset"
        )
    return ds


__all__ = [
    "BUILTIN", "AVDigitsConfig", "FeedDataset", "build_avdigits", "dataset_meta", "from_arrays",
    "is_adapter_spec", "load_npz_split", "load_split", "resolve_data", "with_modalities",
]  # fmt: skip
