"""Distillation on real AV-digits slices: a quickly trained small teacher teaches an even smaller student."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.data import FeedDataset, load_split, with_modalities
from edgekit.errors import UsageError
from edgekit.evaluation import torch_predict
from edgekit.io import IOSpec
from edgekit.models import build_fusion_model
from edgekit.stages.distill import CHECKPOINT, DistillConfig, distill
from edgekit.training import TrainConfig, train_classifier
from edgekit.zoo import zoo_kwargs

# Half the "small" preset's widths and one text layer: a fifth of its parameters, fused width 32 against 64.
TINY = {"image": {"width": 8}, "text": {"width": 32, "depth": 1, "heads": 2}, "audio": {"width": 8}, "hidden": 32}
FAST = DistillConfig(epochs=4, batch_size=32, lr=1e-2, modality_dropout=0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


def _slice(split: str, n: int) -> FeedDataset:
    ds = load_split("avdigits", split)
    return FeedDataset(range(n), lambda i: ds[i], f"{split}[:{n}]")


@pytest.fixture(scope="module")
def data() -> tuple[FeedDataset, FeedDataset]:
    return load_split("avdigits", "train"), _slice("val", 300)


@pytest.fixture(scope="module")
def teacher(avdigits_io: IOSpec, data) -> nn.Module:
    torch.manual_seed(0)
    model = build_fusion_model(**zoo_kwargs("attention", "small", avdigits_io, 10))
    cfg = TrainConfig(epochs=5, batch_size=64, lr=1e-2, modality_dropout=0.0)
    assert train_classifier(model, avdigits_io, *data, cfg).best_val_accuracy > 0.6
    return model


def _student(io: IOSpec, n_classes: int = 10, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return build_fusion_model(**zoo_kwargs("attention", "small", io, n_classes), overrides=TINY)


def _predictions(model: nn.Module, io: IOSpec, data: FeedDataset) -> np.ndarray:
    predict = torch_predict(model)
    return np.concatenate([predict(with_modalities(io, f, io.modalities)).argmax(-1) for f, _ in data.batches(64)])


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_student_learns_with_labels_soft_targets_and_projected_features(avdigits_io, data, teacher, tmp_path):
    student = _student(avdigits_io)
    cfg = replace(FAST, alpha=0.5, feature_weight=1.0)
    losses: list[float] = []
    said: list[str] = []
    result = distill(
        teacher,
        student,
        avdigits_io,
        *data,
        cfg,
        tmp_path,
        lambda e, n, loss, val, metric: losses.append(loss),
        log=said.append,
    )
    assert len(losses) == 4 and losses[-1] < losses[0]
    # its own time, predicted from its first steps before the rest ran (the two are compared in a run, not here)
    assert result.predicted_train_s and result.train_s > 0 and said[0].startswith("distill: ")
    assert "s of training for 4 epoch(s)" in said[0]
    assert result.best_val_accuracy > 0.3  # chance is 0.1
    assert (result.epochs_run, result.resumed_from) == (4, 0)
    assert not student.training
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left behind
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["projection"]["weight"].shape == (64, 32)  # student width 32 -> teacher width 64
    assert not any(k.startswith("projection") for k in student.state_dict())


@pytest.mark.heavy
def test_pure_distillation_makes_the_student_agree_with_the_teacher(avdigits_io, data, teacher):
    student = _student(avdigits_io)
    distill(teacher, student, avdigits_io, *data, replace(FAST, alpha=1.0))
    val = data[1]
    t, s = _predictions(teacher, avdigits_io, val), _predictions(student, avdigits_io, val)
    agreement = float(np.mean(t == s))
    # What two independent predictors with these class frequencies would agree on.
    chance = float(np.sum(np.bincount(t, minlength=10) * np.bincount(s, minlength=10))) / len(t) ** 2
    assert agreement > chance + 0.3, (agreement, chance)
    labels = np.concatenate([y for _, y in val.batches(64)])
    assert np.mean(s == labels) > 0.3  # with no label term in its loss


def test_resumed_run_ends_with_the_same_weights(avdigits_io, teacher, tmp_path):
    train, val = _slice("train", 64), _slice("val", 32)
    cfg = DistillConfig(epochs=2, batch_size=16, feature_weight=0.5, modality_dropout=0.5)

    class Interrupt(Exception):
        pass

    def interrupt_after_first(epoch: int, *_: float) -> None:
        if epoch == 1:
            raise Interrupt

    whole, resumed = _student(avdigits_io), _student(avdigits_io)
    expected = distill(teacher, whole, avdigits_io, train, val, cfg, tmp_path / "whole")
    with pytest.raises(Interrupt):
        distill(teacher, resumed, avdigits_io, train, val, cfg, tmp_path / "resumed", interrupt_after_first)
    fresh = _student(avdigits_io)  # a new process would rebuild the student from scratch
    result = distill(teacher, fresh, avdigits_io, train, val, cfg, tmp_path / "resumed")
    assert result.resumed_from == 1
    assert (result.best_val_accuracy, result.best_epoch, result.epochs_run) == (
        expected.best_val_accuracy,
        expected.best_epoch,
        expected.epochs_run,
    )
    _equal_states(whole.state_dict(), fresh.state_dict())
    a, b = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("whole", "resumed"))
    _equal_states(a["student"], b["student"])  # the last epoch's weights, not only the best epoch's
    _equal_states(a["projection"], b["projection"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        _equal_states(state, b["optimizer"]["state"][i])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"], b["rng"]) and torch.equal(a["gen"], b["gen"])

    finished = _student(avdigits_io)  # called again when done: nothing to train, the best weights come back
    again = distill(teacher, finished, avdigits_io, train, val, cfg, tmp_path / "whole")
    assert (again.resumed_from, again.epochs_run, again.best_epoch) == (2, 2, expected.best_epoch)
    _equal_states(whole.state_dict(), finished.state_dict())
    with pytest.raises(UsageError, match="epochs differ"):
        distill(teacher, fresh, avdigits_io, train, val, replace(cfg, epochs=3), tmp_path / "whole")


def test_a_checkpoint_holding_objects_is_refused_unread(avdigits_io, teacher, tmp_path):
    torch.save({"config": "{}", "student": Path("not/a/tensor")}, tmp_path / CHECKPOINT)
    with pytest.raises(UsageError, match="not a distillation checkpoint"):
        distill(teacher, _student(avdigits_io), avdigits_io, _slice("train", 8), _slice("val", 8), FAST, tmp_path)


def test_class_count_mismatch_names_both(avdigits_io, teacher):
    with pytest.raises(UsageError, match="teacher predicts 10 classes but the student 5"):
        distill(teacher, _student(avdigits_io, n_classes=5), avdigits_io, _slice("train", 8), _slice("val", 8))


class LogitsOnly(nn.Module):
    """A student that is just a module with a forward(): no forward_features()."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(**inputs)


def test_any_module_can_be_a_student_but_feature_loss_needs_forward_features(avdigits_io, teacher):
    train, val = _slice("train", 32), _slice("val", 16)
    student = LogitsOnly(_student(avdigits_io))
    with pytest.raises(UsageError, match=r"student \(LogitsOnly\) has no forward_features"):
        distill(teacher, student, avdigits_io, train, val, DistillConfig(epochs=1, feature_weight=1.0))
    before = [p.detach().clone() for p in student.parameters()]
    result = distill(teacher, student, avdigits_io, train, val, DistillConfig(epochs=1, batch_size=16))
    assert result.epochs_run == 1
    assert any(not torch.equal(p, q) for p, q in zip(before, student.parameters(), strict=True))


def test_modality_dropout_hides_a_modality_from_a_model_without_a_modality_mask(avdigits_io):
    """Without a modality_mask input, a hidden modality's inputs get the feed validation gives a missing one (zeros,
    an attention mask keeping its first token), sample by sample; the dataset's own arrays are left as they were."""
    from edgekit.training import hide_modalities, modality_dropout_mask

    spec = avdigits_io.to_dict()
    io = IOSpec.from_dict({**spec, "inputs": [t for t in spec["inputs"] if t["name"] != "modality_mask"]})
    feeds, _ = next(load_split("avdigits", "train").batches(64))
    before = {k: v.copy() for k, v in feeds.items()}
    keep = modality_dropout_mask(64, 3, 0.5, torch.Generator().manual_seed(0))
    hidden = hide_modalities(io, feeds, keep)
    assert all(np.array_equal(feeds[k], before[k]) for k in feeds)
    for j, modality in enumerate(io.modalities):
        gone = (keep[:, j] == 0).numpy()
        assert 0 < gone.sum() < 64
        for t in (t for t in io.inputs if t.modality == modality):
            missing = with_modalities(io, {k: v[gone] for k, v in feeds.items()}, [])[t.name]
            assert np.array_equal(hidden[t.name][gone], missing) and np.array_equal(hidden[t.name][~gone],
                                                                                    feeds[t.name][~gone])  # fmt: skip
    assert (keep.sum(1) >= 1).all()  # one modality is always kept
