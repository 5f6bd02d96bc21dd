"""Accuracy and macro-F1, overall and per modality subset, for anything that maps feeds to logits.

The predict function is the only thing that changes between torch and the deployed runtimes, so
the numbers are always those of the thing being evaluated."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import FeedDataset, with_modalities
from .data.adapter import modality_subsets
from .fsutil import cache_root, content_hash, write_json
from .io import IOSpec

Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1}


@dataclass(frozen=True)
class EvalReport:
    overall: Scores
    subsets: dict[str, Scores] = field(default_factory=dict)  # "image+audio" -> scores, IOSpec order
    samples: int = 0
    nonfinite: tuple[str, ...] = ()  # subsets whose outputs held NaN or inf: their scores mean nothing
    # per-sample correctness by subset, in data order: what paired intervals (stats.py) compare
    correct: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            **self.overall.as_dict(),
            "samples": self.samples,
            "subsets": {k: v.as_dict() for k, v in self.subsets.items()},
            **({"nonfinite": list(self.nonfinite)} if self.nonfinite else {}),
        }

    def to_cache(self) -> dict[str, Any]:
        return {**self.as_dict(), "correct": {k: "".join("01"[int(c)] for c in v) for k, v in self.correct.items()}}

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> EvalReport:
        return cls(Scores(d["accuracy"], d["macro_f1"]), {k: Scores(**v) for k, v in d["subsets"].items()},
                   d["samples"], tuple(d.get("nonfinite", ())),
                   {k: np.frombuffer(v.encode(), np.uint8) == ord("1") for k, v in d["correct"].items()})  # fmt: skip


def scores(pred: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> Scores:
    n = n_classes or int(max(pred.max(initial=0), labels.max(initial=0)) + 1)
    f1s = []
    for c in range(n):
        tp = np.sum((pred == c) & (labels == c))
        denom = np.sum(pred == c) + np.sum(labels == c)
        if np.sum(labels == c):  # classes absent from the labels do not count
            f1s.append(2 * tp / denom if denom else 0.0)
    return Scores(float(np.mean(pred == labels)), float(np.mean(f1s)) if f1s else 0.0)


def _flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else None
    if items is None:
        raise TypeError(f"the model returned {type(out).__name__}, not a tensor, tuple or dict of tensors")
    return [t for item in items for t in _flat(item)]


def first_output(out: object) -> torch.Tensor:
    """The logits of a model that returns a tensor, a tuple or list (the first), or a dict (the first value)."""
    return _flat(out)[0]


def torch_predict(model: nn.Module) -> Predict:
    """Predictions in float32 on the CPU, from a model on whatever device holds its weights."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device

    def predict(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}
            return first_output(model(**inputs)).float().cpu().numpy()

    return predict


def torch_outputs(model: nn.Module, io: IOSpec) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """Like a runtime's runner: feeds -> {output name: array}, every output in the IOSpec's order, for comparing
    artifacts with their source."""
    model.eval()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        return {name: t.numpy() for name, t in zip(io.output_names, _flat(out), strict=False)}

    return run


def evaluate(
    predict: Predict, io: IOSpec, data: FeedDataset, batch_size: int = 64, per_modality: bool = True
) -> EvalReport:
    mods = io.modalities
    subsets = modality_subsets(mods) if per_modality else [mods]
    preds: dict[tuple[str, ...], list[np.ndarray]] = {s: [] for s in subsets}
    labels = []
    bad: set[tuple[str, ...]] = set()
    for feeds, y in data.batches(io.fit_batch(batch_size)):
        if not labels:
            io.validate_feeds(with_modalities(io, feeds, mods))
        labels.append(y)
        for s in subsets:
            logits = np.asarray(predict(with_modalities(io, feeds, s)))
            if not np.isfinite(logits).all():
                bad.add(s)
            preds[s].append(logits.argmax(-1))
    y_all = np.concatenate(labels)
    n_classes = io.outputs[0].shape[-1] if isinstance(io.outputs[0].shape[-1], int) else None
    flat = {"+".join(s): np.concatenate(p) for s, p in preds.items()}
    table = {k: scores(p, y_all, n_classes) for k, p in flat.items()}
    bad_names = tuple("+".join(s) for s in subsets if s in bad)
    return EvalReport(table["+".join(mods)], table, len(y_all), bad_names, {k: p == y_all for k, p in flat.items()})


def evaluate_elsewhere(
    run_all: Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]], io: IOSpec, data: FeedDataset
) -> EvalReport:
    """`evaluate` with the model run somewhere else in one go (a device over ssh): the feeds evaluation asks for are
    collected first, `run_all` returns their logits in order, and the same code scores them."""
    asked: list[dict[str, np.ndarray]] = []

    def collect(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        asked.append(dict(feeds))
        return np.zeros((len(next(iter(feeds.values()))), 1), np.float32)

    evaluate(collect, io, data)
    answers = iter(run_all(asked))
    return evaluate(lambda feeds: next(answers), io, data)


def cached_evaluate(predict: Predict, io: IOSpec, data: FeedDataset, data_sha: str | None) -> EvalReport:
    """`evaluate` per modality subset, cached on disk: a baseline is the same for every artifact validated against
    it. The key is the data file's sha256 and the model's own outputs on the first samples, which change with its
    weights and with its code; without a data file (a data adapter) nothing is cached."""
    if data_sha is None:
        return evaluate(predict, io, data)
    feeds, _ = next(iter(data.batches(io.fit_batch(16))))
    probe = np.round(np.asarray(predict(with_modalities(io, feeds, io.modalities)), np.float64), 4) + 0.0
    key = content_hash({"data": data_sha, "io": io.to_dict(), "probe": hashlib.sha256(probe.tobytes()).hexdigest()})
    path = cache_root() / "evals" / f"{key}.json"
    try:
        return EvalReport.from_cache(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: evaluate again
        pass
    report = evaluate(predict, io, data)
    write_json(path, report.to_cache())
    return report
