"""What a model predicts and how it is scored: a small registry of tasks, declared in a model package (`task:`),
and the gate that a budget puts on one of their metrics.

Each task checks and types a split's labels (float targets stay float, multi-hot stays multi-hot), and scores a
model's first output against them with scikit-learn's and SciPy's metrics, its primary metric first.
Classification is argmax accuracy and macro-F1, as EdgeKit always scored. A package may add its own metric
(`metric: pkg.mod:fn`), which then comes first.

A `Gate` is one metric with a limit on how much worse it may get, in that metric's direction: `max_drop` counts
points of a fraction (accuracy, mAP), `max_metric_drop: {mae: 0.05}` the metric's own unit. compress and
validate gate every task, and so do export and search."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import UsageError

Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]
Labeler = Callable[[np.ndarray, str], np.ndarray]


# The built-in metrics: name -> (higher is better, a fraction in [0, 1] that `max_drop` counts in points)
METRICS: dict[str, tuple[bool, bool]] = {
    "accuracy": (True, True), "macro_f1": (True, True), "map": (True, True), "micro_f1": (True, True),
    "mae": (False, False), "rmse": (False, False), "pearson_r": (True, False), "ccc": (True, False),
    # agreement with the float model's outputs (no labels, or --against-teacher)
    "top1_agreement": (True, True), "decision_agreement": (True, True), "rel_error": (False, False),
    "cosine": (True, False), "recall_at_1": (True, True), "recall_at_5": (True, True),
}  # fmt: skip


class UserMetric:
    """A package's own metric, `metric: pkg.mod:fn` (or `metrics.py:fn` beside the package): fn(outputs, labels)
    returns (value, "higher" | "lower"), the direction in which the value is better. The direction is learned from
    its first call (every gate scores its reference first) and must not change."""

    def __init__(self, spec: str, fn: Callable[[np.ndarray, np.ndarray], Any]) -> None:
        self.spec, self.fn = spec, fn
        self.name = spec.rpartition(":")[2]
        self.higher: bool | None = None

    def __call__(self, outputs: np.ndarray, labels: np.ndarray) -> float:
        fix = "return (value, 'higher') or (value, 'lower') from it"
        try:
            got = self.fn(outputs, labels)
        except Exception as e:  # the user's code: name it and its error, never a traceback
            raise UsageError(f"metric '{self.spec}' raised {type(e).__name__}: {e}", "fix the metric function") from e
        if not (isinstance(got, tuple) and len(got) == 2 and got[1] in ("higher", "lower")):
            raise UsageError(f"metric '{self.spec}' returned {got!r}, not (value, 'higher' or 'lower')", fix)
        try:
            value = float(got[0])
        except (TypeError, ValueError) as e:
            raise UsageError(f"metric '{self.spec}' returned the value {got[0]!r}, not a number", fix) from e
        if not np.isfinite(value):
            raise UsageError(
                f"metric '{self.spec}' returned {value} on {len(outputs)} samples",
                "make it finite for every subset of the data (guard empty classes and divisions)",
            )
        higher = got[1] == "higher"
        if self.higher is not None and higher != self.higher:
            raise UsageError(f"metric '{self.spec}' changed its direction between calls", "return one direction")
        self.higher = higher
        return value


@dataclass(frozen=True)
class Task:
    name: str
    builtin: tuple[str, ...]  # the task's own metrics, its primary first
    labels: Labeler  # a split's labels, checked and typed (the split's name goes into the error)
    scorer: Scorer  # (the model's first output for every sample, the labels) -> {metric: value}
    summary: str
    user: UserMetric | None = None  # the package's own metric, which then comes first

    @property
    def metrics(self) -> tuple[str, ...]:
        """What eval reports, the primary first."""
        return (self.user.name, *self.builtin) if self.user else self.builtin

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def score(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Every metric, in the task's order: its primary first."""
        scored = self.scorer(outputs, labels)
        own = {m: scored[m] for m in self.builtin}
        return {self.user.name: self.user(outputs, labels), **own} if self.user else own

    def metric(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        """One metric alone, for resampling it (stats.paired_interval)."""
        if self.user and name == self.user.name:
            return self.user
        return lambda outputs, labels: self.scorer(outputs, labels)[name]

    def higher_is_better(self, name: str) -> bool:
        if self.user and name == self.user.name:
            if self.user.higher is None:
                raise RuntimeError(f"metric '{name}' has not been scored yet, so its direction is unknown")
            return self.user.higher
        return METRICS[name][0]

    def with_metric(self, user: UserMetric) -> Task:
        if user.name in self.builtin:
            raise UsageError(f"metric '{user.spec}' is named like the built-in {user.name}", "rename the function")
        return replace(self, user=user)


def bad_labels(split: str, labels: np.ndarray, task: str, needs: str, fix: str) -> UsageError:
    return UsageError(f"{split} labels are {labels.dtype} of shape {list(labels.shape)}: task {task} needs {needs}",
                      fix)  # fmt: skip


def class_labels(labels: np.ndarray, split: str) -> np.ndarray:
    integral = labels.dtype.kind in "iub" or (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0))
    if labels.ndim != 1 or not integral or (labels.size and labels.min() < 0):
        fix = "declare task: regression or multilabel in edgekit-model.yaml, or write integer labels"
        raise bad_labels(split, labels, "classification", "one class index (an integer >= 0) per sample", fix)
    return labels.astype(np.int64)


def target_labels(labels: np.ndarray, split: str) -> np.ndarray:
    if labels.dtype.kind not in "iuf" or labels.ndim not in (1, 2):
        raise bad_labels(split, labels, "regression", "one float target per sample, or a [samples, targets] array",
                         "write the targets as a float 'label' array")  # fmt: skip
    return labels.astype(np.float64)


def multi_hot_labels(labels: np.ndarray, split: str) -> np.ndarray:
    if labels.ndim != 2 or labels.dtype.kind not in "iubf" or not np.isin(labels, (0, 1)).all():
        raise bad_labels(split, labels, "multilabel", "a [samples, labels] array of 0 and 1 (multi-hot)",
                         "write one 0/1 column per label")  # fmt: skip
    return labels.astype(np.int64)


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Macro-F1 over the classes present in the labels (classes absent from them do not count)."""
    f1s = []
    for c in np.unique(labels):
        tp = np.sum((pred == c) & (labels == c))
        denom = np.sum(pred == c) + np.sum(labels == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def classification_scores(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = outputs.argmax(-1)
    return {"accuracy": float(np.mean(pred == labels)), "macro_f1": macro_f1(pred, labels)}


def as_targets(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and labels as [samples, targets] float arrays of one shape."""
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    y = labels.reshape(len(labels), -1)
    if out.shape != y.shape:
        raise UsageError(f"the model outputs {out.shape[1]} value(s) per sample; the labels hold {y.shape[1]} "
                         "target(s)", "make the first output one value per target")  # fmt: skip
    return out, y


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r (scipy), 0 where either side is constant (r is undefined there)."""
    from scipy.stats import pearsonr

    return float(pearsonr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0


def concordance(a: np.ndarray, b: np.ndarray) -> float:
    """Lin's concordance correlation coefficient: agreement in scale and location, not only in trend."""
    cov = np.mean((a - a.mean()) * (b - b.mean()))
    denom = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def regression_scores(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    out, y = as_targets(outputs, labels)
    cols = range(y.shape[1])
    return {"mae": float(mean_absolute_error(y, out)), "rmse": float(root_mean_squared_error(y, out)),
            "pearson_r": float(np.mean([correlation(out[:, j], y[:, j]) for j in cols])),
            "ccc": float(np.mean([concordance(out[:, j], y[:, j]) for j in cols]))}  # fmt: skip


def multilabel_scores(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """mAP over the labels with a positive sample (average precision of the logits' ranking), and micro-F1 of the
    decisions at probability 0.5 (logit 0)."""
    from sklearn.metrics import average_precision_score, f1_score

    out, y = as_targets(outputs, labels)
    present = y.sum(0) > 0
    ap = average_precision_score(y[:, present], out[:, present], average="macro") if present.any() else 0.0
    return {"map": float(ap), "micro_f1": float(f1_score(y, (out > 0).astype(int), average="micro", zero_division=0))}


def pair_ids(labels: np.ndarray, split: str) -> np.ndarray:
    integral = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0))
    fix = "write one integer id per sample, shared by the samples that match, or leave 'label' out to gate by "
    if labels.ndim != 1 or not integral:
        raise bad_labels(split, labels, "embedding", "one pair id (an integer) per sample", fix + "agreement")
    ids = labels.astype(np.int64)
    if len(ids) > 1 and np.unique(ids).size == len(ids):
        raise UsageError(f"no two samples of {split} share a pair id, so recall@k has no queries",
                         fix + "agreement with the float model")  # fmt: skip
    return ids


RECALL_AT = (1, 5)


def recall_hits(outputs: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """For each query (a sample whose id another sample shares), whether a sample of its id is among its k nearest
    others by cosine distance (scikit-learn's neighbours, the whole split as the gallery). recall@k is their mean;
    a paired interval resamples these queries with the gallery kept whole (a resampled gallery would hold copies
    of the query itself)."""
    from sklearn.neighbors import NearestNeighbors

    x = outputs.reshape(len(outputs), -1).astype(np.float64)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    queries = counts[inverse] > 1
    k = min(k, len(x) - 1)
    if k < 1 or not queries.any():
        return np.zeros(0, bool)
    near = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors(return_distance=False)  # not itself
    return (ids[near] == ids[:, None]).any(1)[queries]


# metrics that are a mean over queries ranked against the whole split: what their paired intervals resample
PER_QUERY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    f"recall_at_{k}": functools.partial(recall_hits, k=k) for k in RECALL_AT
}


def embedding_scores(outputs: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    return {name: float(hits.mean()) if (hits := fn(outputs, ids)).size else 0.0 for name, fn in PER_QUERY.items()}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("classification", ("accuracy", "macro_f1"), class_labels, classification_scores,
             "one class per sample: argmax accuracy and macro-F1"),
        Task("multilabel", ("map", "micro_f1"), multi_hot_labels, multilabel_scores,
             "any number of labels per sample (multi-hot, one logit each): mAP and micro-F1 at probability 0.5"),
        Task("regression", ("mae", "rmse", "pearson_r", "ccc"), target_labels, regression_scores,
             "one or more float targets: MAE, RMSE, Pearson's r and the concordance correlation"),
        Task("embedding", ("recall_at_1", "recall_at_5"), pair_ids, embedding_scores,
             "a vector per sample: recall@1 and recall@5 by cosine where samples share pair ids; without ids, "
             "cosine agreement with the float model's vectors"),
    )
}  # fmt: skip


def reference_outputs(labels: np.ndarray, split: str) -> np.ndarray:
    if labels.dtype.kind != "f" or labels.ndim not in (1, 2):
        raise bad_labels(split, labels, "agreement", "the float model's outputs", "relabel the split with them")
    return labels.astype(np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of the rows (1 where both are zero)."""
    num, den = (a * b).sum(1), np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)))


def agreement_scores(task: str) -> Scorer:
    def score(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        out, ref = as_targets(outputs, reference)
        if task == "classification":
            return {"top1_agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1))), "cosine": cosine(out, ref)}
        if task == "multilabel":
            return {"decision_agreement": float(np.mean((out > 0) == (ref > 0))), "cosine": cosine(out, ref)}
        scale = float(np.mean(np.abs(ref))) or 1.0
        return {"rel_error": float(np.mean(np.abs(out - ref))) / scale, "cosine": cosine(out, ref)}

    return score


def agreement(task: Task) -> Task:
    """`task` gated against the float model instead of labels (unlabelled data, or --against-teacher): each
    sample's label is the float model's output on it, with every modality present. Classification scores top-1
    agreement, multilabel the agreement of the decisions at probability 0.5, an embedding the mean cosine
    similarity of its vectors, regression (and anything else) the mean absolute difference relative to the mean
    absolute output; cosine similarity (relative error, for an embedding) besides."""
    primary = {"classification": "top1_agreement", "multilabel": "decision_agreement",
               "embedding": "cosine"}.get(task.name, "rel_error")  # fmt: skip
    second = "rel_error" if primary == "cosine" else "cosine"
    return Task(
        f"{task.name} against the float model",
        (primary, second),
        reference_outputs,
        agreement_scores(task.name),
        f"agreement with the float model ({primary}, {second})",
    )


CLASSIFICATION = TASKS["classification"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UsageError(f"unknown task '{name}'", f"{hint}use one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class Gate:
    """A budget on one metric: how much worse than the reference it may get, in its own direction. `scale` 100
    counts a fraction's change in points (`max_drop`), 1 in the metric's own unit (`max_metric_drop`)."""

    metric: str
    higher_is_better: bool
    limit: float | None  # None: reported, not gated
    scale: float = 100.0

    @property
    def unit(self) -> str:
        return "points" if self.scale == 100 else self.metric

    @property
    def budget(self) -> str:
        """The budget's name, as a recipe writes it."""
        return "max_drop" if self.scale == 100 else f"max_metric_drop.{self.metric}"

    def worsening(self, reference: float, candidate: float) -> float:
        """How much worse `candidate` is than `reference`, in the gate's unit (negative: better)."""
        diff = reference - candidate if self.higher_is_better else candidate - reference
        return round(self.scale * diff, 2 if self.scale == 100 else 6) + 0.0  # + 0.0: never -0.0

    def fits(self, worsening: float) -> bool:
        return self.limit is None or worsening <= self.limit

    def describe(self) -> str:
        if self.scale == 100:
            return f"a drop within {self.limit} points" + ("" if self.metric == "accuracy" else f" of {self.metric}")
        return f"{self.metric} worse by at most {self.limit}"


def gate_for(task: Task, max_drop: float | None = None, max_metric_drop: dict[str, float] | None = None,
             default_points: float | None = None) -> Gate:  # fmt: skip
    """The gate a budget puts on `task`: `max_metric_drop` names one metric (a package's own too) and its limit in
    that metric's unit; else `max_drop` (else `default_points`) is points of the task's fraction metric, accuracy
    or mAP. A regression without `max_metric_drop` is scored but not gated."""
    if max_metric_drop:
        if len(max_metric_drop) != 1:
            raise UsageError(f"max_metric_drop names {len(max_metric_drop)} metrics; it gates one",
                             f"keep one of {', '.join(max_metric_drop)}")  # fmt: skip
        ((name, limit),) = max_metric_drop.items()
        if name not in task.metrics:
            close = difflib.get_close_matches(name, task.metrics, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(f"max_metric_drop names metric '{name}', which task {task.name} does not score",
                             f"{hint}use one of {', '.join(task.metrics)}")  # fmt: skip
        return Gate(name, task.higher_is_better(name), float(limit), 1.0)
    points = max_drop if max_drop is not None else default_points
    fraction = next((m for m in task.metrics if METRICS.get(m, (True, False))[1]), None)  # accuracy, mAP
    if fraction is None:
        primary = task.primary
        if max_drop is not None:
            raise UsageError(
                f"max_drop counts points of a fraction such as accuracy; task {task.name}'s {primary} is not one",
                f"write max_metric_drop: {{{primary}: LIMIT}} in {primary}'s own unit",
            )
        return Gate(primary, task.higher_is_better(primary), None, 1.0)
    return Gate(fraction, True, points)
