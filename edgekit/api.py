"""The Python API the CLI calls. Each function does one verb's work and returns plain data."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .artifact import Artifact, accuracy_record, model_hash, sha256_file
from .data import BUILTIN, AVDigitsConfig, FeedDataset, build_avdigits, dataset_meta, load_split, resolve_data
from .data.avdigits import SPLITS
from .errors import UsageError
from .evaluation import EvalReport, evaluate, torch_outputs, torch_predict
from .fsutil import atomic_dir, cache_root, check_out_dir, check_writable, content_hash, write_json
from .hardware import HardwareProfile, resolve_profile
from .hardware.estimator import graph_costs
from .io import IOSpec
from .loading import load_model, run_model, save_model_package
from .models import build_fusion_model, count_params
from .quant.calibration import DEFAULT_SAMPLES, calibration_set
from .runtimes import load_runner, onnx_runner, predict_fn, proxy_runner
from .targets import BUILDERS
from .targets.capabilities import FORMATS, ShapeMode, check_request
from .targets.context import ExportContext
from .targets.onnx import export_onnx
from .targets.parity import check_parity, require_parity
from .targets.parity import summary as parity_summary
from .training import ProgressFn, TrainConfig, train_classifier
from .validate import Options as ValidateOptions
from .validate import validate

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
    return {
        "name": name,
        "path": str(path),
        "key": meta["key"],
        "seconds": round(time.perf_counter() - start, 2),
        "splits": splits,
        "config": meta["config"],
    }


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
    meta = {
        "data": data,
        "train": dataclasses.asdict(cfg),
        "train_seconds": round(seconds, 1),
        **dataclasses.asdict(result),
        "test": report.as_dict(),
    }
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


def reference_teacher_path() -> Path:
    """Where the reference teacher's package is cached (under a content hash), trained or not."""
    key = content_hash(
        {
            **REFERENCE,
            "zoo": ZOO_VERSION,
            "data_key": BUILTIN["avdigits"].key(),
            "train": dataclasses.asdict(TrainConfig()),
        }
    )
    return cache_root() / "models" / f"teacher-{key}"


def reference_teacher(progress: ProgressFn | None = None) -> Path:
    """The trained reference teacher's package, trained once and cached."""
    path = reference_teacher_path()
    if not (path / "edgekit-model.yaml").is_file():
        train(REFERENCE["arch"], REFERENCE["preset"], REFERENCE["data"], path, TrainConfig(), progress)
    return path


# -- export ------------------------------------------------------------------------------------------


def plan_exports(
    profile: HardwareProfile, fmt: str | None, precision: str | None, shapes: ShapeMode
) -> list[tuple[str, str]]:
    """(format, precision) pairs to build: the profile's defaults unless given; all checked before any work."""
    if fmt:
        default = next((e.precision for e in profile.exports if e.format == fmt), profile.exports[0].precision)
        plan = [(fmt, precision or default)]
    else:
        plan = [(e.format, precision or e.precision) for e in profile.exports]
    plan = list(dict.fromkeys(plan))
    for f, p in plan:
        check_request(f, p, profile, shapes)
    return plan


def max_batch(io: IOSpec, cap: int = 64) -> int:
    return min(cap, io.dims["batch"].max) if "batch" in io.dims else cap


def artifact_accuracy(art: Artifact, test: FeedDataset, threads: int | None = None) -> float | None:
    """Top-1 accuracy of the artifact run in its own runtime; None where that runtime cannot run here."""
    if not FORMATS[art.format].runs_here:
        return None
    report = evaluate(predict_fn(load_runner(art, threads)), art.io, test, max_batch(art.io), per_modality=False)
    return report.overall.accuracy


def export(
    model: str | Path,
    target: str,
    out: Path,
    fmt: str | None = None,
    precision: str | None = None,
    data: str = "avdigits",
    calib_samples: int = DEFAULT_SAMPLES,
    shapes: ShapeMode = "dynamic",
    overwrite: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _: None,
    validate_artifacts: bool = False,
) -> dict[str, Any]:
    """Export a model for a hardware profile: the parity-checked ONNX hub file, then every requested
    artifact, each with a manifest and (where its runtime runs here) its test-split accuracy; with
    `validate_artifacts`, the profile's artifacts are then validated against its budgets."""
    profile, resolution = resolve_profile(target)
    if resolution:
        log(resolution)
    plan = plan_exports(profile, fmt, precision, shapes)
    check_out_dir(out, overwrite)
    check_writable(out)
    loaded = load_model(model)
    io, test = (loaded.io.static() if shapes == "static" else loaded.io), load_split(data, "test")
    source_acc = evaluate(torch_predict(loaded.model), io, test, per_modality=False).overall.accuracy
    parent = model_hash(loaded.model)
    meta = {"source": str(model), "profile": profile.name, "shapes": shapes}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as work, atomic_dir(out) as tmp:
        hub = Path(work) / "model.onnx"
        log("exporting ONNX (dynamo, opset 18) and checking parity on real samples")
        export_onnx(loaded.model, io, hub, slim=True)
        cases = check_parity(io, torch_outputs(loaded.model, io), onnx_runner(hub, io).run, test)
        require_parity(cases, "the exported ONNX")
        meta["parity"] = parity_summary(cases)
        meta["costs"] = graph_costs(hub, io)  # per-kernel MACs and elements: the roofline estimate of any format
        ctx = ExportContext(
            loaded.model,
            io,
            hub,
            profile,
            parent,
            lambda: calibration_set(io, load_split(data, "train"), calib_samples),
            Path(work),
            meta,
        )
        for f, p in [("onnx", "fp32"), *[x for x in plan if x != ("onnx", "fp32")]]:
            log(f"building {f}/{p}")
            start = time.perf_counter()
            art = BUILDERS[f](ctx, p, tmp / f"{f}-{p}")
            art.write_manifest()
            seconds = time.perf_counter() - start
            if fallback := art.meta.get("quantization", {}).get("fallback"):
                log(f"{f}/{p}: INT8 failed inside {fallback['branch']} ({', '.join(fallback['modules'])}): "
                    f"{fallback['error']}; that branch stays float")  # fmt: skip
            acc = artifact_accuracy(art, test, threads)
            if acc is not None:
                art.with_meta(accuracy=accuracy_record(acc, data, "test")).write_manifest()
            row = {
                "format": f,
                "precision": p,
                "path": str(out / art.directory.name / art.file),
                "sha256": sha256_file(art.path),
                "size_mb": round(art.size_mb(), 3),
                "runtime": FORMATS[f].runs_here,
                "accuracy": acc,
                "accuracy_drop": None if acc is None else round(100 * (source_acc - acc), 2),
                "seconds": round(seconds, 1),  # to build it (calibration included), not to measure it
            }
            if acc is None and (proxy := proxy_runner(art, threads)):  # e.g. TensorRT: its graph runs here
                ref = evaluate(predict_fn(proxy[0]), io, test, max_batch(io), per_modality=False)
                row["reference"] = {"runtime": proxy[1], "accuracy": ref.overall.accuracy}
            rows.append(row)
        result = {
            "model": str(model),
            "profile": profile.name,
            "resolution": resolution,
            "out": str(out),
            "source": {"accuracy": source_acc, "params": count_params(loaded.model), "sha256": parent},
            "parity": meta["parity"],
            "artifacts": rows,
        }
        write_json(tmp / "export.json", result)
    if validate_artifacts:  # the profile's own artifacts, proven the way `edgekit validate` does
        deployed = {(e.format, e.precision) for e in profile.exports}
        arts = [Path(r["path"]).parent for r in rows if (r["format"], r["precision"]) in deployed]
        log(f"validating {len(arts)} artifact(s) against {profile.name}")
        baseline = run_model(Path(model))
        result["validation"] = validate(arts, profile.name, baseline, options=ValidateOptions(data, threads=threads))
        write_json(out / "export.json", result)
    return result
