"""Calibration sets: real paired samples, refused in one line when they cannot be trusted."""

import numpy as np
import pytest

from edgekit.data import from_arrays
from edgekit.data.calibration import calibration_set
from edgekit.errors import UsageError


def _arrays(test_split, n=8):
    feeds, labels = next(test_split.batches(n))
    return {k: v.copy() for k, v in feeds.items()}, labels


def test_samples_are_paired_complete_and_seeded(avdigits_io, test_split):
    """Every sample holds all inputs; with a modality mask, every 4th has modalities missing, each subset in turn,
    so the INT8 scales cover the missing-modality case too."""
    calib = calibration_set(avdigits_io, test_split, n=16, seed=3)
    assert len(calib) == 16 and calib.describe()["seed"] == 3 and calib.describe()["missing_modalities"] == 4
    masks = [feeds["modality_mask"].tolist()[0] for feeds in calib.feeds]
    assert all(set(feeds) == set(avdigits_io.input_names) for feeds in calib.feeds)
    assert masks[3::4] == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]] and masks.count([1, 1, 1]) == 12
    again = calibration_set(avdigits_io, test_split, n=16, seed=3)
    assert all((a["audio"] == b["audio"]).all() for a, b in zip(calib.feeds, again.feeds, strict=True))


def test_nan_or_inf_is_refused_naming_the_input(avdigits_io, test_split):
    arrays, labels = _arrays(test_split)
    arrays["audio"][2, 0, 0, 0] = np.inf
    with pytest.raises(UsageError, match="NaN or Inf in input 'audio'"):
        calibration_set(avdigits_io, from_arrays(arrays, labels, "bad"), n=8)


def test_wrong_dtype_or_missing_input_is_refused(avdigits_io, test_split):
    arrays, labels = _arrays(test_split)
    arrays["text_ids"] = arrays["text_ids"].astype(np.int32)
    with pytest.raises(UsageError, match="text_ids"):
        calibration_set(avdigits_io, from_arrays(arrays, labels, "bad"), n=8)
    arrays, labels = _arrays(test_split)
    del arrays["image"]
    with pytest.raises(UsageError, match="missing input 'image'"):
        calibration_set(avdigits_io, from_arrays(arrays, labels, "bad"), n=8)


def test_empty_or_zero_sample_sets_are_refused(avdigits_io, test_split):
    arrays, labels = _arrays(test_split)
    empty = from_arrays({k: v[:0] for k, v in arrays.items()}, labels[:0], "empty")
    with pytest.raises(UsageError, match="is empty"):
        calibration_set(avdigits_io, empty)
    with pytest.raises(UsageError, match="at least one sample"):
        calibration_set(avdigits_io, test_split, n=0)
