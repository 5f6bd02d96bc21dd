"""Calibration sets: real, paired multimodal samples drawn from a data adapter, never random tensors.

Every sample keeps all of its modalities together (the image, text and audio of one example), since
the fusion layers' activation ranges depend on their joint statistics. For a model with a `modality_mask`, a
quarter of the samples have modalities missing (each subset in turn), so the INT8 scales also cover what the
model computes then. Samples are checked against the IOSpec before any backend sees them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..io import IOSpec
from .adapter import FeedDataset, modality_subsets, with_modalities

DEFAULT_SAMPLES = 300
MISSING_EVERY = 4  # with a modality mask, every 4th sample has modalities missing


@dataclass(frozen=True)
class CalibrationSet:
    """`feeds` holds one dict per sample (batch dimension 1), complete for the model's inputs."""

    feeds: tuple[dict[str, np.ndarray], ...]
    source: str
    seed: int
    missing: int = 0  # samples with modalities missing (models with a modality mask)

    def __len__(self) -> int:
        return len(self.feeds)

    def describe(self) -> dict[str, object]:
        return {"samples": len(self.feeds), "source": self.source, "seed": self.seed,
                "missing_modalities": self.missing}  # fmt: skip


def calibration_set(io: IOSpec, data: FeedDataset, n: int = DEFAULT_SAMPLES, seed: int = 0) -> CalibrationSet:
    """`n` samples drawn without replacement (all of them if the split is smaller), validated."""
    if n < 1:
        raise UsageError(f"calibration needs at least one sample, got {n}", "set calibration samples >= 1")
    if len(data) == 0:
        raise UsageError(f"calibration set '{data.name}' is empty", "point calibration at a split with samples")
    order = np.random.default_rng(seed).permutation(len(data))[: min(n, len(data))]
    partial = modality_subsets(io.modalities)[1:] if io.has_modality_mask() else []
    feeds, labels, missing = [], set(), 0
    for j, i in enumerate(order):
        sample, label = data[int(i)]
        if data.labelled and np.ndim(label) == 0:  # classes (a multi-hot row, or no labels at all, says nothing)
            labels.add(label)
        present = io.modalities
        if partial and j % MISSING_EVERY == MISSING_EVERY - 1:
            present, missing = partial[(j // MISSING_EVERY) % len(partial)], missing + 1
        batched = with_modalities(io, {k: np.asarray(v)[None] for k, v in sample.items()}, present)
        try:
            io.validate_feeds(batched)
        except UsageError as e:
            raise UsageError(f"calibration sample {int(i)} of '{data.name}' does not match the IO spec: {e}") from e
        for name, arr in batched.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise UsageError(
                    f"calibration sample {int(i)} of '{data.name}' has NaN or Inf in input '{name}'",
                    "clean or drop non-finite samples before calibrating",
                )
        feeds.append(batched)
    if len(labels) == 1 and len(feeds) > 1:  # one class's activation ranges would clip the others'
        raise UsageError(
            f"calibration set '{data.name}' holds only class {labels.pop()} ({len(feeds)} samples)",
            "calibrate on samples that cover every class the model predicts",
        )
    return CalibrationSet(tuple(feeds), data.name, seed, missing)
