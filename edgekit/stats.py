"""How sure an accuracy is: 95% intervals for an accuracy and for a drop measured on the same samples.

On 450 test samples one sample moves the accuracy 0.22 points, so a budget of 0.5 points is two or three
samples. A verdict reports the interval with the point estimate and says when the interval crosses the budget.

- An accuracy gets the Wilson score interval, which stays inside [0, 1] and is sound near 100%.
- A drop compares two models on the *same* samples, so only the samples where they disagree carry information.
  Its interval is a paired bootstrap: resample the samples (both models together), recompute the drop. It is
  seeded, so a rerun reports the same interval.
- Any other metric (MAE, mAP, a package's own) gets the same paired bootstrap on the two models' outputs, the
  metric recomputed on each resample: none of them has a closed form that holds for all."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z95 = 1.959964  # two-sided 95% quantile of the standard normal
RESAMPLES = 2000


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy `correct / n` (as fractions)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)


def paired_drop(reference: np.ndarray, candidate: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of the drop in points, `100 * (mean(reference) - mean(candidate))`, from the
    two models' per-sample correctness on the same samples. A resample of the n samples only needs how many of
    them fall where only the reference is right and where only the candidate is: a multinomial draw."""
    ref, cand = np.asarray(reference, bool), np.asarray(candidate, bool)
    if ref.shape != cand.shape or ref.ndim != 1:
        raise ValueError(f"paired samples differ in shape: {ref.shape} vs {cand.shape}")
    n, lost, gained = len(ref), int(np.sum(ref & ~cand)), int(np.sum(~ref & cand))
    if lost + gained == 0:  # no disagreement: the drop is 0 on every resample
        return 0.0, 0.0
    draws = np.random.default_rng(seed).multinomial(n, [lost / n, gained / n, 1 - (lost + gained) / n], RESAMPLES)
    lo, hi = np.percentile(100 * (draws[:, 0] - draws[:, 1]) / n, [2.5, 97.5])
    return round(float(lo), 2), round(float(hi), 2)


def paired_interval(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    worsening: Callable[[float, float], float],
    seed: int = 0,
    resamples: int = RESAMPLES // 2,
) -> tuple[float, float]:
    """95% paired-bootstrap interval of `worsening(metric(reference), metric(candidate))`, both models' outputs
    resampled together with the labels."""
    if len(reference) != len(candidate) or len(reference) != len(labels):
        raise ValueError(f"paired samples differ in length: {len(reference)}, {len(candidate)}, {len(labels)}")
    if np.array_equal(reference, candidate):
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        draws.append(worsening(metric(reference[i], labels[i]), metric(candidate[i], labels[i])))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return round(float(lo), 6), round(float(hi), 6)


def budget_note(drop: float, interval: tuple[float, float], limit: float, n: int) -> str | None:
    """What a verdict on a drop point estimate should add when its interval crosses the budget."""
    lo, hi = interval
    if lo == hi or not lo <= limit <= hi:
        return None
    side = "within budget" if drop <= limit else "over budget"
    return f"{side}, not significant at n={n}: the 95% interval [{lo:+.4g}, {hi:+.4g}] crosses {limit}"


def samples_for(limit_points: float, disagreement: float) -> int:
    """Test samples for the drop's 95% half-width to be `limit_points`, when the two models disagree on a
    `disagreement` fraction of samples (normal approximation of the paired difference)."""
    return math.ceil(Z95 * Z95 * disagreement / (limit_points / 100) ** 2)
