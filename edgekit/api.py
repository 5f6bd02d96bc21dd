"""The Python API the CLI calls. Each function does one verb's work and returns plain data."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from .data import BUILTIN, AVDigitsConfig, build_avdigits, dataset_meta, load_split, resolve_data
from .data.avdigits import SPLITS
from .errors import UsageError
from .evaluation import EvalReport, evaluate, torch_predict
from .fsutil import cache_root, check_out_dir, content_hash
from .io import IOSpec
from .loading import load_model, save_model_package
from .models import build_fusion_model, count_params
from .training import ProgressFn, TrainConfig, train_classifier

ZOO_FACTORY = "edgekit.models:build_fusion_model"
ZOO_VERSION = 1  # bump when a zoo architecture changes, so cached teachers are retrained


def build_data(
    name: str, config: AVDigitsConfig | None = None, out: Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    if name not in BUILTIN:
        raise UsageError(f"unknown dataset '{name}'", f"built-in datasets: {', '.join(BUILTIN)}")
    cfg = config or BUILTIN[name]
    if out is not None and dataset_meta(out).get("key") != cfg.key():
        check_out_dir(out, overwrite)
    start = time.perf_counter()
    path = build_avdigits(cfg, out)
    meta = dataset_meta(path)
    splits = {s: meta["splits"][s] for s in SPLITS}
    return {"name": name, "path": str(path), "key": meta["key"], "seconds": round(time.perf_counter() - start, 2),
            "splits": splits, "config": meta["config"]}  # fmt: skip


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
) -> dict[str, Any]:
    """Train a zoo model on a dataset, save it as a model package, and evaluate it on the test split."""
    io = data_io(data)
    labels = dataset_meta(resolve_data(data)).get("labels") or [str(i) for i in range(io.outputs[0].shape[-1])]  # type: ignore[arg-type]
    kwargs = zoo_kwargs(arch, preset, io, len(labels))
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed determines
    model = build_fusion_model(**kwargs)
    start = time.perf_counter()
    result = train_classifier(model, io, load_split(data, "train"), load_split(data, "val"), cfg, progress)
    seconds = time.perf_counter() - start
    report = evaluate(torch_predict(model), io, load_split(data, "test"))
    meta = {"data": data, "train": dataclasses.asdict(cfg), "train_seconds": round(seconds, 1),
            **dataclasses.asdict(result), "test": report.as_dict()}  # fmt: skip
    save_model_package(model, io, out, factory=ZOO_FACTORY, kwargs=kwargs, labels=labels, meta=meta)
    return {"model": str(out), "params": count_params(model), **meta}


def evaluate_model(
    model: str | Path,
    data: str,
    split: str = "test",
    weights: Path | None = None,
    io: Path | None = None,
    trust_checkpoint: bool = False,
) -> EvalReport:
    loaded = load_model(model, weights, io, trust_checkpoint)
    return evaluate(torch_predict(loaded.model), loaded.io, load_split(data, split))


# The reference teacher: the model `make demo`, the recipes and the tests start from.
REFERENCE = {"arch": "attention", "preset": "teacher", "data": "avdigits"}


def reference_teacher(progress: ProgressFn | None = None) -> Path:
    """The trained reference teacher's package, trained once and cached under a content hash."""
    cfg = TrainConfig()
    key = content_hash({**REFERENCE, "zoo": ZOO_VERSION, "data_key": BUILTIN["avdigits"].key(),
                        "train": dataclasses.asdict(cfg)})  # fmt: skip
    path = cache_root() / "models" / f"teacher-{key}"
    if not (path / "edgekit-model.yaml").is_file():
        train(REFERENCE["arch"], REFERENCE["preset"], REFERENCE["data"], path, cfg, progress)
    return path
