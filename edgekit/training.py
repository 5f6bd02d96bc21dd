"""Supervised training of a fusion classifier, with modality dropout so every subset is meaningful."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import FeedDataset, with_modalities
from .devices import Amp, Placement, placement
from .evaluation import evaluate, first_output, torch_predict
from .io import MODALITY_MASK, IOSpec

# (epoch, epochs, train loss, the val score early stopping follows, that score's metric: "accuracy", "mae", ...)
ProgressFn = Callable[[int, int, float, float, str], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    modality_dropout: float = 0.5  # chance each modality is hidden from a training sample (>= 1 kept)
    patience: int = 8  # epochs without a better val accuracy before stopping
    seed: int = 0
    amp: Amp | None = None  # mixed precision of the forward pass: bf16 or fp16 where the device has it


@dataclass(frozen=True)
class TrainResult:
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int


def modality_dropout_mask(batch: int, n_mod: int, p: float, gen: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(batch, n_mod, generator=gen) >= p).float()
    none_kept = keep.sum(1) == 0
    forced = torch.randint(0, n_mod, (batch,), generator=gen)
    keep[none_kept, forced[none_kept]] = 1.0
    return keep


def hide_modalities(io: IOSpec, inputs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """Modality dropout on any model, by `keep` (batch x modalities, 1 kept). A model with a modality_mask input
    gets `keep` as that mask. In a model without one, each hidden modality's inputs are replaced, sample by
    sample, by the feed a missing modality gets at validation (with_modalities: its `absent` value, or zeros, an
    attention mask keeping its first position), so that no branch learns to be the only one that matters."""
    if io.has_modality_mask():
        return {**inputs, MODALITY_MASK: keep}
    out = dict(inputs)
    for j, modality in enumerate(io.modalities):
        hidden = (keep[:, j] == 0).numpy()
        if not hidden.any():
            continue
        rest = [m for m in io.modalities if m != modality]
        neutral = with_modalities(io, {k: np.asarray(v)[hidden] for k, v in out.items()}, rest)
        for t in io.inputs:
            if t.modality == modality and t.name in out:
                out[t.name] = np.array(out[t.name])  # a copy: the dataset's arrays stay as they are
                out[t.name][hidden] = neutral[t.name]
    return out


class Stepper:
    """One optimizer step from a loss: backward (scaled under fp16), gradients clipped, the schedule advanced."""

    def __init__(self, params: list[nn.Parameter], opt: torch.optim.Optimizer, sched: Any, place: Placement) -> None:
        self.params, self.opt, self.sched, self.scaler = params, opt, sched, place.scaler()

    def __call__(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)  # clip the true gradients
        nn.utils.clip_grad_norm_(self.params, 2.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()


def train_classifier(
    model: nn.Module,
    io: IOSpec,
    train: FeedDataset,
    val: FeedDataset,
    cfg: TrainConfig = TrainConfig(),
    progress: ProgressFn | None = None,
    device: str | None = "cpu",
) -> TrainResult:
    """Train in place on `device` (None: the best available) and leave the model holding the weights of its best
    validation epoch, on the device it came from."""
    place = placement(device, cfg.amp)
    home = next(model.parameters()).device
    model.to(place.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step = Stepper(list(model.parameters()), opt, sched, place)
    use_mask = io.has_modality_mask() and cfg.modality_dropout > 0
    n_mod = len(io.modalities)

    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for feeds, y in train.batches(cfg.batch_size, order_rng.permutation(len(train))):
            inputs = {k: v for k, v in feeds.items() if k in io.input_names}
            if use_mask:
                inputs[MODALITY_MASK] = modality_dropout_mask(len(y), n_mod, cfg.modality_dropout, gen)
            with place.autocast():
                loss = loss_fn(first_output(model(**place.tensors(inputs))).float(), place.tensor(y))
            step(loss)
            total, count = total + loss.item() * len(y), count + len(y)
        val_acc = evaluate(torch_predict(model), io, val, per_modality=False).overall.accuracy
        if progress:
            progress(epoch, cfg.epochs, total / count, val_acc, "accuracy")
        if val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.to(home).eval()
    return TrainResult(best_val_accuracy=best[0], best_epoch=best[1], epochs_run=epoch)
