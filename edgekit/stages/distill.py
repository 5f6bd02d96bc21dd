"""Knowledge distillation: a frozen teacher trains a student (a zoo preset, or any nn.Module such as a pruned
teacher recovering its accuracy) from the labels, its softened logits and, optionally, its fused features.

Every epoch ends with an atomic checkpoint, so an interrupted run called again with the same checkpoint
directory and config resumes after its last completed epoch and ends with the same weights as an
uninterrupted one.

It runs on any torch device, with optional mixed precision, and data-parallel under torchrun: every process draws
the same global batch (one shuffle, one set of modality masks), DistributedSampler's rule gives each its share,
DistributedDataParallel averages the gradients, and rank 0 alone evaluates and writes. A global batch is the
same whatever the number of processes, so a checkpoint resumes with any number of them."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..data import FeedDataset, with_modalities
from ..devices import Amp, Placement, all_sum, broadcast, is_main, placement, rank, world_size
from ..errors import UsageError
from ..evaluation import evaluate, first_output, torch_predict
from ..fsutil import atomic_path
from ..io import IOSpec
from ..tasks import CLASSIFICATION, Task
from ..training import ProgressFn, Stepper, hide_modalities, modality_dropout_mask

CHECKPOINT = "distill-checkpoint.pt"
PROBE_STEPS = 5  # training steps timed before the stage predicts its own training time


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 4.0  # softens both logit sets so the teacher's ranking of the wrong classes shows
    alpha: float = 0.7  # weight of the distillation term; 1 - alpha weighs cross-entropy on the labels
    feature_weight: float = 0.0  # weight of the MSE between fused representations; 0 turns it off
    label_smoothing: float = 0.05
    modality_dropout: float = 0.5  # as in TrainConfig, and the teacher sees the same masked inputs
    patience: int = 8  # epochs without a better val accuracy before stopping
    seed: int = 0
    amp: Amp | None = None  # mixed precision of the forward passes: bf16 or fp16 where the device has it

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError(f"epochs={self.epochs} and batch_size={self.batch_size} must both be at least 1")
        if self.temperature <= 0:
            raise UsageError(f"temperature={self.temperature} must be positive", "the usual range is 1 to 8")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"alpha={self.alpha} is outside [0, 1]")
        if self.feature_weight < 0:
            raise UsageError(f"feature_weight={self.feature_weight} is negative", "use 0 to turn the feature loss off")


@dataclass(frozen=True)
class DistillResult:
    best_val_accuracy: float  # of the metric early stopping followed: accuracy, or the task's gated metric
    best_epoch: int
    epochs_run: int  # the last completed epoch, counting those run before a resume
    resumed_from: int  # the epoch the checkpoint held when this call started; 0 for a fresh run
    predicted_train_s: float | None = None  # the training steps' time, predicted from the first PROBE_STEPS
    train_s: float = 0.0  # what the training steps took (validation passes excluded)


def _has_features(model: nn.Module) -> bool:
    return hasattr(model, "forward_features") and isinstance(getattr(model, "classifier", None), nn.Module)


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor], features: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and the fused representation when the feature loss needs it (else the logits stand in)."""
    if not features:
        logits = first_output(model(**inputs))
        return logits, logits
    fused = model.forward_features(**inputs)
    return model.classifier(fused), fused


class _Trainee(nn.Module):
    """The student and the projection as one module: DistributedDataParallel averages the gradients of what one
    module's forward used."""

    def __init__(self, student: nn.Module, proj: nn.Module, features: bool) -> None:
        super().__init__()
        self.student, self.proj, self.features = student, proj, features

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = _outputs(self.student, inputs, self.features)
        return logits, self.proj(feats)


def _share(n: int) -> list[int]:
    """This process's rows of a global batch of `n` (all of them in a single process)."""
    return list(DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=False))


def _probe(teacher: nn.Module, student: nn.Module, io: IOSpec, data: FeedDataset, features: bool,
           place: Placement) -> tuple[int, int]:  # fmt: skip
    """One forward of both models on real samples, before any training: the class counts must agree.
    Returns the (student, teacher) widths of what `_outputs` gives as features."""
    feeds, _ = next(data.batches(io.fit_batch(2)))
    inputs = place.tensors(with_modalities(io, feeds, io.modalities))
    student.eval()  # a train-mode probe would move BatchNorm statistics
    with torch.no_grad():
        t_logits, t_feats = _outputs(teacher, inputs, features)
        s_logits, s_feats = _outputs(student, inputs, features)
    if t_logits.shape[-1] != s_logits.shape[-1]:
        raise UsageError(
            f"the teacher predicts {t_logits.shape[-1]} classes but the student {s_logits.shape[-1]}",
            f"build the student with n_classes={t_logits.shape[-1]}",
        )
    return s_feats.shape[-1], t_feats.shape[-1]


def _kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig,
             task: str = "classification") -> torch.Tensor:  # fmt: skip
    """Per task. Classification: (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T); T^2 keeps the
    soft-target gradients on the scale of the hard ones whatever T is (Hinton et al., 2015). Multilabel: BCE with
    logits against the labels and the teacher's probabilities. Regression: MSE to the targets and to the teacher's
    outputs. Embedding: MSE to the teacher's vectors (pair ids say which samples match, not where a vector lies)."""
    if task == "embedding":
        return F.mse_loss(s_logits, t_logits)
    if task == "regression":  # MSE to the targets and to the teacher's outputs
        y = labels.to(s_logits.dtype).reshape(s_logits.shape)
        return (1 - cfg.alpha) * F.mse_loss(s_logits, y) + cfg.alpha * F.mse_loss(s_logits, t_logits)
    if task == "multilabel":  # BCE with logits to the multi-hot labels and to the teacher's probabilities
        y = labels.to(s_logits.dtype).reshape(s_logits.shape)
        soft = torch.sigmoid(t_logits)
        return (1 - cfg.alpha) * F.binary_cross_entropy_with_logits(s_logits, y) + (
            cfg.alpha * F.binary_cross_entropy_with_logits(s_logits, soft)
        )
    ce = F.cross_entropy(s_logits, labels, label_smoothing=cfg.label_smoothing)
    t = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(s_logits / t, -1), F.log_softmax(t_logits / t, -1), reduction="batchmean", log_target=True
    )
    return (1 - cfg.alpha) * ce + cfg.alpha * t * t * kl


def _fingerprint(cfg: DistillConfig, train: FeedDataset) -> dict[str, object]:
    return {**dataclasses.asdict(cfg), "train_samples": len(train)}


def _load_checkpoint(path: Path, fingerprint: dict[str, object]) -> dict[str, Any]:
    """Tensors and plain data only (weights_only=True): a checkpoint never runs code when it is read."""
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        old = json.loads(saved["config"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(
            f"{path} is not a distillation checkpoint, or is damaged; it was not loaded",
            "remove it or choose another checkpoint directory",
        ) from e
    changed = sorted(k for k in old.keys() | fingerprint.keys() if old.get(k) != fingerprint.get(k))
    if changed:
        raise UsageError(
            f"checkpoint {path} was written with a different config ({', '.join(changed)} differ)",
            "pass the same config to resume, or a new checkpoint directory to start over",
        )
    return saved


def _save_checkpoint(path: Path, stateful: dict[str, Any], **extra: object) -> None:
    """Atomic: a crash while writing leaves the previous epoch's checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save({key: obj.state_dict() for key, obj in stateful.items()} | extra, tmp)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    io: IOSpec,
    train: FeedDataset,
    val: FeedDataset,
    cfg: DistillConfig = DistillConfig(),
    checkpoint_dir: Path | None = None,
    progress: ProgressFn | None = None,
    device: str | None = "cpu",
    task: Task = CLASSIFICATION,
    metric: str = "accuracy",
    log: Callable[[str], None] = lambda _: None,
) -> DistillResult:
    """Train `student` in place from `teacher` (put in eval mode, never updated) on `device` (None: the best
    available); the student ends holding the weights of its best validation epoch, in eval mode, and both models
    end on the devices they came from. With `checkpoint_dir`, resume from it if it holds a checkpoint of the same
    config, and (rank 0) write one there after every epoch."""
    if teacher is student:
        raise UsageError("the teacher and the student are the same module", "distill into copy.deepcopy(teacher)")
    if not len(train) or not len(val):
        raise UsageError("distillation needs non-empty train and val splits")
    features = cfg.feature_weight > 0
    for role, model in (("teacher", teacher), ("student", student)):
        if features and not _has_features(model):
            raise UsageError(
                f"the {role} ({type(model).__name__}) has no forward_features() and classifier for the feature loss",
                "set feature_weight=0",
            )
    place = placement(device, cfg.amp)
    homes = next(teacher.parameters()).device, next(student.parameters()).device
    teacher.to(place.device).eval()
    student.to(place.device)
    s_width, t_width = _probe(teacher, student, io, train, features, place)

    torch.manual_seed(cfg.seed)  # dropout, and the projection's initial weights
    gen = torch.Generator().manual_seed(cfg.seed)  # sample order and modality masks
    # Maps student features onto the teacher's width; trained with the student, never part of it.
    proj: nn.Module = nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()
    trainee = _Trainee(student, proj, features).to(place.device)
    # find_unused_parameters: a user's model may hold weights its forward skips (a Hugging Face pooler).
    model = DistributedDataParallel(trainee, find_unused_parameters=True) if world_size() > 1 else trainee
    params = [*student.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = io.fit_batch(cfg.batch_size)  # the recipe's batch, within the model's declared batch range
    steps = cfg.epochs * -(-len(train) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.15)
    step = Stepper(params, opt, sched, place)
    stateful = {"student": student, "projection": proj, "optimizer": opt, "scheduler": sched}
    n_mod = len(io.modalities)
    hides = cfg.modality_dropout > 0 and (io.has_modality_mask() or n_mod > 1)  # any fusion model, mask or not

    # early stopping follows `task`'s `metric` on val, in its direction (a lower MAE is better)
    sign = 1.0 if task.higher_is_better(metric) else -1.0
    best_acc, best_epoch, best_state = -math.inf, 0, copy.deepcopy(student.state_dict())
    epoch, stopped = 0, False
    fingerprint = _fingerprint(cfg, train)
    path = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if path and path.is_file():
        saved = _load_checkpoint(path, fingerprint)
        try:
            for key, obj in stateful.items():
                obj.load_state_dict(saved[key])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(
                f"checkpoint {path} does not fit this student: {e}", "use a new checkpoint directory"
            ) from e
        torch.set_rng_state(saved["rng"])
        gen.set_state(saved["gen"])
        epoch, stopped = saved["epoch"], saved["stopped"]
        best_acc, best_epoch, best_state = saved["best_accuracy"], saved["best_epoch"], saved["best_student"]
    resumed_from = epoch
    steps, train_s, predicted = 0, 0.0, None
    per_epoch = -(-len(train) // batch)

    while not stopped and epoch < cfg.epochs:
        epoch += 1
        student.train()
        proj.train()
        total, count = 0.0, 0
        began = time.perf_counter()
        for feeds, y in train.batches(batch, torch.randperm(len(train), generator=gen).tolist()):
            inputs = {k: v for k, v in feeds.items() if k in io.input_names}
            if hides:  # the same inputs for both models: the teacher shows how to cope with what is missing
                inputs = hide_modalities(io, inputs, modality_dropout_mask(len(y), n_mod, cfg.modality_dropout, gen))
            mine = _share(len(y))
            inputs, labels = place.tensors({k: v[mine] for k, v in inputs.items()}), place.tensor(y[mine])
            with place.autocast():
                with torch.no_grad():
                    t_logits, t_feats = _outputs(teacher, inputs, features)
                s_logits, s_feats = model(inputs)
                loss = _kd_loss(s_logits.float(), t_logits.float(), labels, cfg, task.name)
                if features:
                    loss = loss + cfg.feature_weight * F.mse_loss(s_feats.float(), t_feats.float())
            step(loss)
            total, count = total + loss.item() * len(mine), count + len(mine)
            steps += 1
            if steps == PROBE_STEPS and predicted is None:  # the plan's time, from this model on this device
                per_step = (time.perf_counter() - began) / steps
                predicted = per_step * per_epoch * (cfg.epochs - resumed_from)
                log(f"distill: {per_step:.3g} s per step over the first {steps}: about {predicted:.0f} s of training "
                    f"for {cfg.epochs - resumed_from} epoch(s) of {per_epoch} steps, plus a val pass per epoch "
                    "(early stopping may end sooner)")  # fmt: skip
        train_s += time.perf_counter() - began
        total, count = all_sum([total, count])
        # Rank 0's weights and BatchNorm statistics are the ones it saves: its accuracy decides for every rank.
        val_acc = broadcast(evaluate(torch_predict(student), io, val, per_modality=False, task=task).overall[metric]
                            if is_main() else None)  # fmt: skip
        improved = sign * val_acc > best_acc
        if improved:
            best_acc, best_epoch, best_state = sign * val_acc, epoch, copy.deepcopy(student.state_dict())
        stopped = not improved and epoch - best_epoch >= cfg.patience
        if path and is_main():  # before progress is reported, so a run stopped from the callback keeps this epoch
            _save_checkpoint(
                path,
                stateful,
                config=json.dumps(fingerprint, sort_keys=True),
                epoch=epoch,
                stopped=stopped,
                best_accuracy=best_acc,
                best_epoch=best_epoch,
                best_student=best_state,
                rng=torch.get_rng_state(),
                gen=gen.get_state(),
            )
        if progress:
            progress(epoch, cfg.epochs, total / count, val_acc, metric)

    student.load_state_dict(best_state)
    student.to(homes[1]).eval()
    teacher.to(homes[0])
    return DistillResult(best_val_accuracy=sign * best_acc, best_epoch=best_epoch, epochs_run=epoch,
                         resumed_from=resumed_from, predicted_train_s=predicted and round(predicted, 1),
                         train_s=round(train_s, 1))  # fmt: skip
