"""Zoo models trained on a dataset, and the reference teacher that `make demo`, the recipes and the tests start
from (trained once, cached under a content hash)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from .data import BUILTIN, dataset_meta, load_split, resolve_data
from .errors import UsageError
from .evaluation import evaluate, torch_predict
from .fsutil import cache_lock, cache_root, content_hash
from .io import IOSpec
from .loading import save_model_package
from .models import FACTORY, build_fusion_model, count_params
from .training import ProgressFn, TrainConfig, train_classifier

ZOO_VERSION = 1  # bump when a zoo architecture changes, so cached teachers are retrained


def data_io(data: str) -> IOSpec:
    where = resolve_data(data)
    meta = dataset_meta(where) if isinstance(where, Path) else {}
    if "io" not in meta:
        raise UsageError(f"dataset '{data}' has no meta.json with an 'io' spec", "training zoo models needs one")
    return IOSpec.from_dict(meta["io"])


def zoo_kwargs(arch: str, preset: str, io: IOSpec, n_classes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"arch": arch, "preset": preset, "modalities": list(io.modalities), "n_classes": n_classes}
    if "text" in io.modalities:
        ids = next(t for t in io.inputs if t.modality == "text" and t.dtype == "int64" and t.value_range)
        kwargs["vocab_size"] = int(ids.value_range[1])  # type: ignore[index]
        kwargs["max_len"] = io.dims["seq"].max
    return kwargs


def train(
    arch: str,
    preset: str,
    data: str,
    out: Path,
    cfg: TrainConfig = TrainConfig(),
    progress: ProgressFn | None = None,
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Train a zoo model on a dataset (on `device`), save it as a model package, and evaluate it on the test
    split."""
    io = data_io(data)
    labels = dataset_meta(resolve_data(data)).get("labels") or [str(i) for i in range(io.outputs[0].shape[-1])]  # type: ignore[arg-type]
    kwargs = zoo_kwargs(arch, preset, io, len(labels))
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed determines
    model = build_fusion_model(**kwargs)
    start = time.perf_counter()
    result = train_classifier(model, io, load_split(data, "train"), load_split(data, "val"), cfg, progress, device)
    seconds = time.perf_counter() - start
    report = evaluate(torch_predict(model), io, load_split(data, "test"))
    meta = {
        "data": data,
        "train": dataclasses.asdict(cfg),
        "train_seconds": round(seconds, 1),
        **dataclasses.asdict(result),
        "test": report.as_dict(),
    }
    save_model_package(model, io, out, factory=FACTORY, kwargs=kwargs, labels=labels, meta=meta)
    return {"model": str(out), "params": count_params(model), **meta}


# The reference teacher: the model `make demo`, the recipes and the tests start from.
REFERENCE = {"arch": "attention", "preset": "teacher", "data": "avdigits"}


def reference_teacher_path() -> Path:
    """Where the reference teacher's package is cached (under a content hash), trained or not."""
    key = content_hash(
        {
            **REFERENCE,
            "zoo": ZOO_VERSION,
            "data_key": BUILTIN["avdigits"].key(),
            # Unset options (amp) are left out, so that adding one keeps the cached teacher.
            "train": {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if v is not None},
        }
    )
    return cache_root() / "models" / f"teacher-{key}"


def reference_teacher(progress: ProgressFn | None = None) -> Path:
    """The trained reference teacher's package, trained once and cached."""
    path = reference_teacher_path()
    built = (path / "edgekit-model.yaml").is_file
    if not built():
        with cache_lock(path):
            if not built():  # another process may have trained it while this one waited
                train(REFERENCE["arch"], REFERENCE["preset"], REFERENCE["data"], path, TrainConfig(), progress)
    return path
