"""What a model predicts and how it is scored: a small registry of tasks, declared in a model package (`task:`).

Each task checks and types a split's labels (float targets stay float, multi-hot stays multi-hot), and scores a
model's first output against them with scikit-learn's and SciPy's metrics, its primary metric first.
Classification is argmax accuracy and macro-F1, as EdgeKit always scored. The gates (compress, export, validate,
search) take classification only so far, and refuse another task in one line instead of gating an argmax that
means nothing."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]
Labeler = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]  # what eval reports, the primary first
    higher_is_better: bool  # of the primary metric
    labels: Labeler  # a split's labels, checked and typed (the split's name goes into the error)
    score: Scorer  # (the model's first output for every sample, the labels) -> {metric: value}
    summary: str

    @property
    def primary(self) -> str:
        return self.metrics[0]


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


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("classification", ("accuracy", "macro_f1"), True, class_labels, classification_scores,
             "one class per sample: argmax accuracy and macro-F1"),
        Task("multilabel", ("map", "micro_f1"), True, multi_hot_labels, multilabel_scores,
             "any number of labels per sample (multi-hot, one logit each): mAP and micro-F1 at probability 0.5"),
        Task("regression", ("mae", "rmse", "pearson_r", "ccc"), False, target_labels, regression_scores,
             "one or more float targets: MAE, RMSE, Pearson's r and the concordance correlation"),
    )
}  # fmt: skip
CLASSIFICATION = TASKS["classification"]
GATED = ("classification",)  # what compress, export, validate and search gate so far


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UsageError(f"unknown task '{name}'", f"{hint}use one of {', '.join(TASKS)}")
    return TASKS[name]


def require_gated(task: Task, verb: str) -> None:
    """Refuse to gate a task by a metric that means nothing for it (an argmax of regression outputs)."""
    if task.name not in GATED:
        raise UsageError(f"{verb} gates classification models only so far; this model's task is {task.name}",
                         f"`edgekit eval` scores it ({', '.join(task.metrics)}); see docs/bring-your-own-model.md"
                         "#tasks")  # fmt: skip
