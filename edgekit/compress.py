"""`edgekit compress`: run a recipe's stages in order into a run directory.

Every stage's output lands in `stages/NN-kind-KEY/`, written atomically, where KEY hashes everything that
determines it (the previous stage's key, this stage's settings, the data, the seed). A rerun with the same
recipe finds those directories and skips the stages; distillation also resumes mid-stage from its per-epoch
checkpoint. `report.json` is written last: a run directory without it is not complete."""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from .artifact import Artifact, accuracy_record, load_artifact, model_hash, sha256_file, versions
from .branches import ModuleBranches, discover, module_branches
from .data import load_split
from .errors import EdgeKitError, UsageError
from .evaluation import evaluate, torch_predict
from .fsutil import atomic_dir, check_writable, content_hash, write_json, write_text
from .hardware import HardwareProfile, resolve_profile
from .hardware.cpu import int8_saturates
from .hardware.estimator import graph_costs
from .io import IOSpec
from .loading import load_model, portable_factory, save_model_package
from .models import build_fusion_model, count_params
from .provenance import data_hashes, provenance, tree_hashes
from .quant.accuracy_aware import BudgetError, accuracy_aware, layer_sqnr, quant_units
from .quant.backends import ExecuTorchBackend, OnnxQDQBackend, OpenVINOBackend
from .quant.calibration import calibration_set
from .quant.onnx_qdq import quantize_qdq, scheme_for
from .recipe import DistillStage, PruneStage, QuantizeStage, Recipe, dump_recipe
from .runtimes import load_runner, onnx_runner, predict_fn
from .stages.distill import distill
from .stages.prune import check_config, measure, parts_of, prune, save_pruned
from .targets.onnx import export_onnx
from .training import ProgressFn
from .validate import Options, validate

REPORT = "report.json"
PRUNED_FACTORY = "edgekit.stages.prune:load_pruned_architecture"
# The primary export format of a profile -> the INT8 backend that produces it.
BACKEND_OF_FORMAT = {"openvino": "openvino", "onnx": "onnx", "tensorrt": "onnx", "ort-mobile": "onnx",
                     "executorch": "executorch"}  # fmt: skip
Log = Callable[[str], None]


@dataclass
class Current:
    """The model as the stages hand it on, and how to save it again."""

    model: nn.Module
    io: IOSpec
    labels: tuple[str, ...]
    factory: str
    kwargs: dict[str, Any]
    branches: dict[str, list[str]]  # the package's override of the branches found in the graph, if any
    mb: ModuleBranches  # the teacher's module branches (stages keep module names)
    pruned: bool = False

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        if self.pruned:
            save_pruned(self.model, self.io, path, {"factory": self.factory, "kwargs": self.kwargs}, self.labels, meta,
                        self.branches)  # fmt: skip
        else:
            save_model_package(self.model, self.io, path, factory=self.factory, kwargs=self.kwargs,
                               labels=self.labels, meta=meta, branches=self.branches)  # fmt: skip


def prepare_run_dir(out: Path, recipe_text: str, overwrite: bool) -> None:
    """A new directory, or the same recipe's earlier run (resumed); another recipe's run only with --overwrite."""
    check_writable(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is a file", "choose a directory for --out")
    previous = out / "recipe.yaml"
    if out.is_dir() and any(out.iterdir()):
        if not previous.is_file():  # --overwrite replaces an EdgeKit run, never an arbitrary directory
            raise UsageError(f"{out} is not empty and holds no EdgeKit run", "choose a new or empty --out")
        same = previous.read_text() == recipe_text
        if not same and not overwrite:
            raise UsageError(f"{out} holds a different run", "choose a new --out, or pass --overwrite to replace it")
        if not same:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)  # the run is incomplete until the new report is written
    for stale in [*out.rglob(".*.tmp"), *out.rglob(".*.old")]:  # what a killed run was writing (nested too)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    write_text(previous, recipe_text)


def run_log(path: Path, echo: Log) -> Log:
    """Echo each message and append it, time-stamped, to the run's log (a log is appended to, not replaced)."""

    def log(message: str) -> None:
        echo(message)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    return log


def check_data(recipe: Recipe, io: IOSpec) -> None:
    """Fail on bad data (a missing or empty split, unusable calibration samples) before any run directory or
    stage exists, not minutes into the run."""
    data = recipe.data
    for split in {data.train, data.val, data.test, data.calibration}:
        load_split(data.name, split)
    for stage in recipe.stages:
        if isinstance(stage, QuantizeStage):
            calibration_set(io, load_split(data.name, data.calibration), stage.samples, recipe.seed)


def split_accuracy(predict: Callable, io: IOSpec, data: str, split: str) -> float:
    return evaluate(predict, io, load_split(data, split), per_modality=False).overall.accuracy


def model_stats(model: nn.Module, io: IOSpec, mb: ModuleBranches) -> dict[str, Any]:
    """Parameters and MACs per sample, in total and per branch. `mb`: the teacher's module branches, which hold
    for every model of the run (pruning and distillation keep module names)."""
    parts = measure(model, io, mb)
    return {"params": count_params(model), "macs": parts["total"][1],
            "per_branch": {k: {"params": p, "macs": m} for k, (p, m) in parts.items() if k != "total"}}  # fmt: skip


def compress(
    recipe: Recipe, out: Path, overwrite: bool = False, log: Log = lambda _: None, progress: ProgressFn | None = None
) -> dict[str, Any]:
    from . import api  # the reference teacher lives there; imported here to keep the layering one way

    text = dump_recipe(recipe)
    resolved = [resolve_profile(t) for t in recipe.targets]
    profiles = [p for p, _ in resolved]
    source = api.reference_teacher() if recipe.model == "reference-teacher" else Path(recipe.model)
    loaded = load_model(source)
    if loaded.manifest is None:
        raise UsageError(f"{source} is not a model package", "pass a model package directory as the recipe's model")
    teacher, io, data = loaded.model, loaded.io, recipe.data
    check_data(recipe, io)
    mb = module_branches(teacher, io, loaded.manifest.branches)
    for stage in recipe.stages:  # branch names are the model's: check them before the run directory exists
        if isinstance(stage, PruneStage):
            check_config(parts_of(mb), stage.to_config())
    prepare_run_dir(out, text, overwrite)
    log = run_log(out / "compress.log", log)
    for _, note in resolved:
        if note:
            log(note)
    teacher_sha = model_hash(teacher)
    key = content_hash({"model": teacher_sha, "data": data.model_dump(), "seed": recipe.seed})
    splits = {data.train, data.val, data.test, data.calibration}
    base_acc = split_accuracy(torch_predict(teacher), io, data.name, data.test)
    report: dict[str, Any] = {
        "recipe": recipe.model_dump(mode="json"), "model": str(source),
        "baseline": {"accuracy": base_acc, **model_stats(teacher, io, mb)},
        "stages": [], "artifacts": [],
        "versions": versions("torch", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "torch-pruning"),
        "provenance": provenance(recipe.seed, teacher_sha, data_hashes(data.name, splits)),
    }  # fmt: skip
    outputs: dict[str, str] = {}
    report["provenance"]["outputs"] = outputs
    factory = portable_factory(loaded.manifest.factory, Path(source))
    current = Current(copy.deepcopy(teacher), io, loaded.labels, factory, dict(loaded.manifest.kwargs),
                      dict(loaded.manifest.branches), mb)  # fmt: skip
    try:
        for i, stage in enumerate(recipe.stages, 1):
            step = {"previous": key, "stage": stage.model_dump(mode="json")}
            if isinstance(stage, QuantizeStage):  # INT8 weights are sized for the target's CPU (hardware/cpu.py)
                step["profile"] = profiles[0].name
            key = content_hash(step)
            where = out / "stages" / f"{i:02d}-{stage.kind}-{key}"
            cached = (where / "stage.json").is_file()
            log(f"stage {i} ({stage.kind}): {'cached, reusing ' + str(where) if cached else 'running'}")
            if isinstance(stage, QuantizeStage):
                row = quantize_stage(stage, recipe, current, profiles[0], where, cached, log)
                report["artifacts"].append(row["artifact"])
            else:
                if not cached:
                    run_model_stage(stage, recipe, teacher, current, where, out / "checkpoints" / key, progress)
                row = json.loads((where / "stage.json").read_text())
                reloaded = load_model(where)
                factory = reloaded.manifest.factory if reloaded.manifest else ""
                current.model, current.pruned = reloaded.model, factory == PRUNED_FACTORY
                if reloaded.manifest and not current.pruned:
                    current.factory, current.kwargs = factory, dict(reloaded.manifest.kwargs)
            row.update(cached=cached, accuracy_drop=round(100 * (base_acc - row["accuracy"]), 2))
            report["stages"].append(row)
            outputs.update({f"stages/{where.name}/{k}": v for k, v in tree_hashes(where).items()})
    except EdgeKitError as e:  # a failed run still says what it measured, and why it stopped
        report["verdict"] = {"status": "fail", "error": str(e), **(e.details or {})}
        write_json(out / REPORT, report)
        raise
    report["verdict"] = verdict(report, recipe, profiles)
    if report["artifacts"]:  # the artifact, proven against the first target the way `edgekit validate` does
        arts = [Path(a["path"]).parent for a in report["artifacts"]]
        b = recipe.budgets
        limits = {"max_accuracy_drop": b.max_drop, "latency_p95_ms": b.latency_p95_ms, "max_size_mb": b.size_mb}
        log(f"validating against {profiles[0].name}")
        report["validation"] = [validate(arts, profiles[0].name, source, budgets=limits, options=Options(data.name))]
        rows = report["validation"][0]["rows"]
        failed = [f"{Path(r['artifact']).name}: {c['budget']} {c['value']} > {c['limit']}"
                  for r in rows for c in r.get("checks", []) if c["ok"] is False]  # fmt: skip
        failed += [f"{Path(r['artifact']).name}: {r['error']}" for r in rows if "error" in r]
        if failed:
            report["verdict"].update(status="fail", failed=failed)
    write_json(out / REPORT, report)
    return report


def run_model_stage(stage: PruneStage | DistillStage, recipe: Recipe, teacher: nn.Module, current: Current,
                    where: Path, checkpoints: Path, progress: ProgressFn | None) -> None:  # fmt: skip
    data, io, start = recipe.data, current.io, time.perf_counter()
    if isinstance(stage, PruneStage):
        result = prune(current.model, io, stage.to_config(), current.branches, current.mb)
        current.model, current.pruned = result.model, True
        extra: dict[str, Any] = {"parts": result.as_dict()}
    else:
        if stage.student != "pruned":
            kwargs = {**current.kwargs, "preset": stage.student}
            current.model, current.pruned, current.kwargs = build_fusion_model(**kwargs), False, kwargs
        result = distill(teacher, current.model, io, load_split(data.name, data.train), load_split(data.name, data.val),
                         stage.to_config(recipe.seed), checkpoint_dir=checkpoints, progress=progress)  # fmt: skip
        extra = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                 "resumed_from": result.resumed_from}  # fmt: skip
    acc = split_accuracy(torch_predict(current.model), io, data.name, data.test)
    row = {
        "name": stage.kind,
        "path": str(where),
        "accuracy": acc,
        **model_stats(current.model, io, current.mb),
        **extra,
    }
    current.save(where, {"stage": stage.kind})  # atomic; stage.json, written last, marks the stage complete
    write_json(where / "stage.json", {**row, "seconds": round(time.perf_counter() - start, 1)})
    shutil.rmtree(checkpoints, ignore_errors=True)


def quantize_stage(stage: QuantizeStage, recipe: Recipe, current: Current, profile: HardwareProfile, where: Path,
                   cached: bool, log: Log) -> dict[str, Any]:  # fmt: skip
    if cached:
        return json.loads((where / "stage.json").read_text())
    data, io, start = recipe.data, current.io, time.perf_counter()
    primary_format = profile.exports[0].format
    backend = BACKEND_OF_FORMAT[primary_format] if stage.backend == "auto" else stage.backend
    max_drop = stage.max_drop if stage.max_drop is not None else (recipe.budgets.max_drop or 1.0)
    calib = calibration_set(io, load_split(data.name, data.calibration), stage.samples, recipe.seed)
    parent = model_hash(current.model)
    with atomic_dir(where) as tmp:
        work = tmp / "work"
        work.mkdir()
        log("exporting ONNX")
        hub = export_onnx(current.model, io, work / "model.onnx", slim=True)
        graph = onnx.load(str(hub))
        branches = discover(graph, io, current.branches)
        log(f"branches ({branches.method}): {', '.join(branches.labels.values())}")
        units = quant_units(graph, branches)
        meta: dict[str, Any] = {"calibration": calib.describe(), "max_drop": max_drop}
        scheme = scheme_for(primary_format, profile)  # TensorRT's Q/DQ graph, else onnxruntime's for this CPU
        art_dir = tmp / f"{backend}-int8"
        if backend == "executorch":
            scopes = {u.node: u.scope for u in units}
            impl: Any = ExecuTorchBackend(current.model, io, calib, scopes)
        elif backend == "onnx":
            impl = OnnxQDQBackend(hub, io, calib, scheme)
        else:
            impl = OpenVINOBackend(hub, io, calib, int8_saturates(profile.cpu_isa), tuple(units))
        if backend != "executorch":  # the bits decide whether a CPU without VNNI saturates (hardware/cpu.py)
            seven = scheme.reduce_range if backend == "onnx" else int8_saturates(profile.cpu_isa)
            meta["quantization"] = {
                "scheme": scheme.name if backend == "onnx" else "nncf",
                "weight_bits": 7 if seven else 8,
            }
        float_nodes: tuple[str, ...] = ()
        if stage.accuracy_aware:
            val = load_split(data.name, data.val)

            def accuracy(predict: Callable) -> float:
                return evaluate(predict, io, val, per_modality=False).overall.accuracy

            def rank() -> dict[str, float]:
                quantize_qdq(hub, work / "full-int8.onnx", calib, scheme=scheme)
                return layer_sqnr(hub, work / "full-int8.onnx", calib)

            baseline = accuracy(predict_fn(onnx_runner(hub, io)))
            try:
                sens = accuracy_aware(impl, units, accuracy, baseline, max_drop, work, rank, branches.labels)
            except BudgetError as e:
                write_json(where.parent.parent / "sensitivity.json", e.report.as_dict())
                log(e.report.table())
                raise
            log(sens.table())
            float_nodes = sens.float_nodes
            write_json(tmp / "sensitivity.json", sens.as_dict())
            meta["sensitivity"] = "sensitivity.json"
        log(f"quantizing ({backend}, {len(calib)} calibration samples, {len(float_nodes)} node(s) kept in float)")
        impl.build(frozenset(float_nodes), art_dir)
        meta["float_nodes"] = list(float_nodes)
        meta["costs"] = graph_costs(hub, io)
        if backend == "executorch":  # export_pte wrote the manifest; add what the stage knows
            art = load_artifact(art_dir)
            art = Artifact(art.format, art.precision, art_dir, art.file, io, parent, {**art.meta, **meta})
        else:
            meta["versions"] = versions("torch", "onnx", "onnxruntime", "openvino", "nncf")
            art = Artifact(backend, "int8", art_dir, "model.onnx" if backend == "onnx" else "model.xml", io, parent,
                           meta)  # fmt: skip
        art.write_manifest()
        shutil.rmtree(work)
        acc = split_accuracy(predict_fn(load_runner(art)), io, data.name, data.test)
        art.with_meta(accuracy=accuracy_record(acc, data.name, data.test)).write_manifest()
        final = where / art_dir.name / art.file
        seconds = round(time.perf_counter() - start, 1)
        row = {"name": "quantize", "backend": backend, "path": str(final), "accuracy": acc, "seconds": seconds,
               **model_stats(current.model, io, current.mb),
               "artifact": {"format": backend, "precision": "int8", "path": str(final), "accuracy": acc,
                            "size_mb": round(art.size_mb(), 3), "sha256": sha256_file(art.path)}}  # fmt: skip
        write_json(tmp / "stage.json", row)
    return row


def verdict(report: dict[str, Any], recipe: Recipe, profiles: list) -> dict[str, Any]:
    """Pass when the final model's test accuracy drop from the teacher fits the budget (recipe, else profile)."""
    final = report["stages"][-1] if report["stages"] else None
    limit = recipe.budgets.max_drop
    if limit is None:
        limit = profiles[0].budgets.max_accuracy_drop
    if final is None or limit is None:
        return {"status": "pass", "gated": [], "note": "nothing was gated"}
    drop = final["accuracy_drop"]
    if final.get("artifact"):
        final["artifact"]["accuracy_drop"] = drop
    ok = drop <= limit
    return {"status": "pass" if ok else "fail", "gated": ["max_drop"], "accuracy_drop": drop, "max_drop": limit}
