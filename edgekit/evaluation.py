"""A task's metrics (accuracy and macro-F1, MAE and r, mAP, a package's own), overall and per modality subset,
for anything that maps feeds to outputs.

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
from .errors import UsageError
from .fsutil import cache_root, content_hash, write_json
from .io import IOSpec
from .tasks import CLASSIFICATION, Task, macro_f1

Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Scores:
    """A task's metrics on one set of samples, its primary metric first (tasks.py)."""

    values: dict[str, float]

    @property
    def accuracy(self) -> float:
        """Classification's accuracy (`edgekit train` and the Wilson interval read it)."""
        return self.values["accuracy"]

    def __getitem__(self, metric: str) -> float:
        return self.values[metric]

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)


@dataclass(frozen=True)
class EvalReport:
    overall: Scores
    subsets: dict[str, Scores] = field(default_factory=dict)  # "image+audio" -> scores, IOSpec order
    samples: int = 0
    nonfinite: tuple[str, ...] = ()  # subsets whose outputs held NaN or inf: their scores mean nothing
    # per-sample correctness by subset, in data order (classification): what paired intervals (stats.py) compare
    correct: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    task: str = "classification"
    warnings: tuple[str, ...] = ()  # scores that likely mean nothing, and why
    # the first outputs by subset and the labels, in data order: what a metric's paired interval resamples (not
    # cached: a cached report gates accuracy alone)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    labels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            **self.overall.as_dict(),
            "task": self.task,
            "samples": self.samples,
            "subsets": {k: v.as_dict() for k, v in self.subsets.items()},
            **({"nonfinite": list(self.nonfinite)} if self.nonfinite else {}),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    def to_cache(self) -> dict[str, Any]:
        return {**self.as_dict(), "correct": {k: "".join("01"[int(c)] for c in v) for k, v in self.correct.items()}}

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> EvalReport:
        subsets = {k: Scores(v) for k, v in d["subsets"].items()}
        overall = Scores({k: v for k, v in d.items() if k in next(iter(d["subsets"].values()), {})})
        return cls(overall, subsets, d["samples"], tuple(d.get("nonfinite", ())),
                   {k: np.frombuffer(v.encode(), np.uint8) == ord("1") for k, v in d["correct"].items()},
                   d.get("task", "classification"), tuple(d.get("warnings", ())))  # fmt: skip


def scores(pred: np.ndarray, labels: np.ndarray) -> Scores:
    """Classification's scores of predicted classes."""
    return Scores({"accuracy": float(np.mean(pred == labels)), "macro_f1": macro_f1(pred, labels)})


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
    predict: Predict,
    io: IOSpec,
    data: FeedDataset,
    batch_size: int = 64,
    per_modality: bool = True,
    task: Task = CLASSIFICATION,
) -> EvalReport:
    """The task's metrics of `predict`'s first output on `data`, overall and per modality subset."""
    if not data.labelled:
        raise UsageError(f"{data.name or 'the data'} has no labels ('label')",
                         "add them, or gate by agreement with the float model: --against-teacher on export and "
                         "validate (docs/bring-your-own-model.md#without-labels)")  # fmt: skip
    mods = io.modalities
    subsets = modality_subsets(mods) if per_modality else [mods]
    outs: dict[tuple[str, ...], list[np.ndarray]] = {s: [] for s in subsets}
    labels = []
    bad: set[tuple[str, ...]] = set()
    for feeds, y in data.batches(io.fit_batch(batch_size)):
        if not labels:
            io.validate_feeds(with_modalities(io, feeds, mods))
        labels.append(y)
        for s in subsets:
            out = np.asarray(predict(with_modalities(io, feeds, s)))
            if not np.isfinite(out).all():
                bad.add(s)
            outs[s].append(out)
    y_all = task.labels(np.concatenate(labels), data.name or "the data's")
    flat = {"+".join(s): np.concatenate(o) for s, o in outs.items()}
    table = {k: Scores(task.score(o, y_all)) for k, o in flat.items()}
    classes = task.name == "classification"
    correct = {k: o.argmax(-1) == y_all for k, o in flat.items()} if classes else {}
    full = "+".join(mods)
    bad_names = tuple("+".join(s) for s in subsets if s in bad)
    warnings = nonsense(task, table[full], outputs=flat[full], width=io.outputs[0].shape[-1])
    return EvalReport(table[full], table, len(y_all), bad_names, correct, task.name, warnings, flat, y_all)


def against(predict: Predict, io: IOSpec, data: FeedDataset, batch_size: int = 64) -> FeedDataset:
    """`data` labelled with `predict`'s first output on each sample, every modality present: the reference that a
    gate of agreement with the float model compares with (tasks.agreement)."""
    outs = [np.asarray(predict(with_modalities(io, feeds, io.modalities)), np.float32)
            for feeds, _ in data.batches(io.fit_batch(batch_size))]  # fmt: skip
    return data.relabelled(np.concatenate(outs))


def nonsense(task: Task, overall: Scores, outputs: np.ndarray, width: object) -> tuple[str, ...]:
    """Why the scores likely mean nothing: one output column under classification (argmax is always 0), or a
    model whose outputs are the same for every sample."""
    found = []
    if task.name == "classification" and width == 1:
        found.append("the model's output has one column under task classification, so argmax is always class 0: "
                     "declare task: regression (or multilabel) in edgekit-model.yaml")  # fmt: skip
    decisions = outputs.argmax(-1) if task.name == "classification" else outputs
    if len(outputs) > 1 and np.all(decisions == decisions[:1]):
        what = "predicts the same class" if task.name == "classification" else "gives the same output"
        found.append(f"the model {what} for every sample ({task.primary} {overall.values[task.primary]:.4f}): "
                     "check its weights, inputs and task")  # fmt: skip
    return tuple(found)


def evaluate_elsewhere(
    run_all: Callable[[list[dict[str, np.ndarray]]], list[np.ndarray]],
    io: IOSpec,
    data: FeedDataset,
    task: Task = CLASSIFICATION,
) -> EvalReport:
    """`evaluate` with the model run somewhere else in one go (a device over ssh): the feeds evaluation asks for are
    collected first, `run_all` returns their logits in order, and the same code scores them."""
    batch, subsets = 64, modality_subsets(io.modalities)  # evaluate's batches and subsets, in its order
    asked = [with_modalities(io, feeds, s) for feeds, _ in data.batches(io.fit_batch(batch)) for s in subsets]
    answers = iter(run_all(asked))
    return evaluate(lambda feeds: next(answers), io, data, batch, task=task)


def cached_evaluate(
    predict: Predict, io: IOSpec, data: FeedDataset, data_sha: str | None, task: Task = CLASSIFICATION
) -> EvalReport:
    """`evaluate` per modality subset, cached on disk: a baseline is the same for every artifact validated against
    it. The key is the data file's sha256 and the model's own outputs on the first samples, which change with its
    weights and with its code. Only what gates accuracy is cached (`data_sha` None: nothing): another metric's
    paired interval needs every output, and a package's metric is its own code."""
    if data_sha is None or task is not CLASSIFICATION:
        return evaluate(predict, io, data, task=task)
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
