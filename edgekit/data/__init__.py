"""Datasets and the adapters that feed them to models, runtimes and calibrators."""

from __future__ import annotations

from .adapter import FeedDataset, dataset_meta, from_arrays, load_npz_split, with_modalities
from .avdigits import AVDigitsConfig, build_avdigits
from .splits import BUILTIN, DataLike, Splits, is_adapter_spec, resolve_data


def load_split(spec: str, split: str) -> FeedDataset:
    """One split of a dataset spec (scripts and notebooks; a run resolves its data once, as `Splits`)."""
    return Splits.of(spec)(split)


__all__ = [
    "BUILTIN", "AVDigitsConfig", "DataLike", "FeedDataset", "Splits", "build_avdigits", "dataset_meta", "from_arrays",
    "is_adapter_spec", "load_npz_split", "load_split", "resolve_data", "with_modalities",
]  # fmt: skip
