"""Dataset adapters: a (source, transform) pair, in the spirit of nncf.Dataset.

`source` is any sized, indexable collection; `transform(item)` turns one item into
`(feeds, label)`, where feeds maps IOSpec input names to arrays without the batch dimension.
Evaluation, training and calibration all read data through this one type."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..io import MODALITY_MASK, IOSpec, TensorSpec

Sample = tuple[dict[str, np.ndarray], Any]  # (feeds, label): a class index, float target(s) or a multi-hot row


class FeedDataset:
    def __init__(self, source: Sequence[Any], transform: Callable[[Any], Sample], name: str = "",
                 labelled: bool = True) -> None:  # fmt: skip
        self.source = source
        self.transform = transform
        self.name = name
        self.labelled = labelled  # False: its labels are placeholders (a split without 'label')

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Sample:
        return self.transform(self.source[i])

    def head(self, n: int) -> FeedDataset:
        """The first `n` samples (a smaller run of the same split, e.g. for smoke tests)."""
        return FeedDataset(self.source[:n], self.transform, self.name, self.labelled)

    def relabelled(self, labels: np.ndarray) -> FeedDataset:
        """The same feeds with these labels, one per sample (a float model's outputs, to gate agreement with it)."""
        return FeedDataset(range(len(self)), lambda i: (self[i][0], labels[i]), self.name)

    def batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Stacked feeds and labels, `batch_size` samples at a time (the last batch may be smaller). Labels keep
        their type (float targets stay float, multi-hot rows stay rows); integer labels are int64."""
        order = list(range(len(self))) if indices is None else list(indices)
        for start in range(0, len(order), batch_size):
            samples = [self[i] for i in order[start : start + batch_size]]
            feeds = {k: np.stack([s[0][k] for s in samples]) for k in samples[0][0]}
            labels = np.asarray([s[1] for s in samples])
            yield feeds, labels.astype(np.int64) if labels.dtype.kind in "iub" else labels


def from_arrays(arrays: Mapping[str, np.ndarray], labels: np.ndarray | None, name: str = "") -> FeedDataset:
    """An adapter over in-memory arrays that share their first (sample) dimension; `labels` None: unlabelled (zeros
    stand in, and `labelled` says so)."""
    n = len(labels) if labels is not None else len(next(iter(arrays.values()), []))
    bad = [k for k, v in arrays.items() if len(v) != n]
    if bad:
        raise UsageError(f"dataset {name or ''} arrays {bad} do not have {n} samples like 'label'")
    y = np.zeros(n, np.int64) if labels is None else labels
    return FeedDataset(range(n), lambda i: ({k: v[i] for k, v in arrays.items()}, y[i]), name, labels is not None)


def load_npz_split(directory: Path, split: str) -> FeedDataset:
    """A dataset directory holds train.npz / val.npz / test.npz: arrays named like the model inputs, plus 'label'."""
    path = Path(directory) / f"{split}.npz"
    if not path.is_file():
        have = sorted(p.name for p in Path(directory).glob("*.npz"))
        raise UsageError(
            f"dataset directory {directory} has no {split}.npz"
            + (f" (it has {', '.join(have)})" if have else " (it is empty)"),
            "write train.npz, val.npz and test.npz with one array per model input plus 'label'",
        )
    try:
        with np.load(path, allow_pickle=False) as z:  # an object array would need unpickling: refused
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(
            f"{path} is not an .npz of plain arrays ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})",
            "save each split with np.savez from numeric arrays",
        ) from e
    labels = arrays.pop("label", None)  # unlabelled data gates agreement with the float model (tasks.agreement)
    if (len(labels) if labels is not None else len(next(iter(arrays.values()), []))) == 0:
        raise UsageError(f"{path} holds zero samples", "write at least one sample per split")
    return from_arrays(arrays, labels, f"{Path(directory).name}/{split}")


def dataset_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def with_modalities(io: IOSpec, feeds: Mapping[str, np.ndarray], present: Sequence[str]) -> dict[str, np.ndarray]:
    """Complete a batch of data feeds for a model, keeping only the `present` modalities.

    Models with a `modality_mask` input get the mask (1 present, 0 missing). For other models the inputs of a
    missing modality get a neutral feed: the IOSpec's `absent` value where it declares one, else zeros, except an
    attention mask, which keeps its first position (one token, the [CLS] or pad token that zero ids give): an
    all-zero attention mask makes a transformer's softmax divide by zero, and its outputs NaN."""
    out = {k: np.asarray(v) for k, v in feeds.items() if k in io.input_names}
    batch = len(next(iter(out.values())))
    mods = io.modalities
    if io.has_modality_mask():
        mask = io.input(MODALITY_MASK)
        row = np.array([m in present for m in mods], mask.np_dtype)
        out[MODALITY_MASK] = np.broadcast_to(row, (batch, len(mods))).copy()
        return out
    for t in io.inputs:
        if t.modality not in present and t.name in out:
            out[t.name] = np.full_like(out[t.name], t.absent or 0)
            if t.absent is None and is_attention_mask(t) and out[t.name].ndim > 1:
                out[t.name][:, 0] = 1
    return out


def modality_subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """All modalities first, then each alone, then each pair (when that is not already 'all')."""
    out = [modalities] + [(m,) for m in modalities]
    if len(modalities) > 2:
        out += list(combinations(modalities, 2))
    return out if len(modalities) > 1 else [modalities]


def subset_names(limit: float | dict[str, float] | None, io: IOSpec) -> None:
    """Refuse a per-subset `max_subset_drop` that names a subset the model does not have, before any work."""
    names = ["+".join(s) for s in modality_subsets(io.modalities)[1:]]
    unknown = sorted(set(limit) - set(names)) if isinstance(limit, dict) else []
    if unknown:
        raise UsageError(f"max_subset_drop names subset(s) {', '.join(unknown)} this model has not",
                         f"use one of: {', '.join(names) or 'none (the model has one modality)'}")  # fmt: skip


def is_attention_mask(t: TensorSpec) -> bool:
    """An integer or bool input of 1s and 0s over tokens: a mask by its value range [1, 2) or its name."""
    return t.dtype in ("int64", "int32", "bool") and (t.value_range == (1.0, 2.0) or "mask" in t.name.lower())
