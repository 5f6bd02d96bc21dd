"""The Python API the CLI calls. Each function does one verb's work and returns plain data."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import load_artifact, model_hash, sha256_file
from .data import BUILTIN, AVDigitsConfig, FeedDataset, build_avdigits, dataset_meta, load_split
from .data.avdigits import SPLITS
from .data.calibration import DEFAULT_SAMPLES, calibration_set
from .errors import UsageError
from .evaluation import EvalReport, against, evaluate, torch_outputs, torch_predict
from .formats import FORMATS, ExportContext, Search, ShapeMode, check_request
from .fsutil import atomic_dir, check_out_dir, check_writable, write_json
from .hardware import HardwareProfile, resolve_profile
from .hardware.estimator import graph_costs
from .loading import load_model, run_model
from .models import count_params
from .pipeline import Scoring, build_artifact
from .recipe import load_recipe
from .records import KEY, VERSION, read_record
from .runtimes import onnx_runner
from .targets.onnx import export_onnx
from .targets.parity import check_parity, require_parity
from .targets.parity import summary as parity_summary
from .tasks import agreement, gate_for
from .validate import Options as ValidateOptions
from .validate import validate
from .zoo import reference_teacher, reference_teacher_path, train

# The verbs; training the zoo and the reference teacher live in zoo.py, below the pipeline that starts from them.
__all__ = ["ExportOptions", "build_data", "evaluate_model", "export", "reference_teacher", "reference_teacher_path",
           "train"]  # fmt: skip


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


def evaluate_model(
    model: str | Path,
    data: str,
    split: str = "test",
    weights: Path | None = None,
    io: Path | None = None,
    trust_checkpoint: bool = False,
) -> EvalReport:
    loaded = load_model(model, weights, io, trust_checkpoint)
    return evaluate(torch_predict(loaded.model), loaded.io, load_split(data, split), task=loaded.task)


# -- export ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    fmt: str | None = None  # one format (default: the profile's)
    precision: str | None = None  # default: the profile's for that format
    data: str = "avdigits"  # calibration (train), the search (val), parity and accuracy (test)
    calib_samples: int = DEFAULT_SAMPLES
    shapes: ShapeMode = "dynamic"
    threads: int | None = None  # runtime threads for the accuracy runs
    max_drop: float | None = None  # INT8: search what stays float until the drop on val fits (points; default:
    # the profile's max_accuracy_drop, or its max_metric_drop)
    validate: bool = False  # validate the profile's artifacts against its budgets at the end
    max_metric_drop: dict[str, float] | None = None  # instead of max_drop: one metric of the task, in its unit
    against_teacher: bool = False  # gate agreement with the model's own outputs, not labels (unlabelled data too)


def plan_exports(
    profile: HardwareProfile, fmt: str | None, precision: str | None, shapes: ShapeMode
) -> list[tuple[str, str]]:
    """(format, precision) pairs to build: the profile's defaults unless given; all checked before any work."""
    if fmt:
        default = {e.format: e.precision for e in reversed(profile.exports)}.get(fmt, profile.exports[0].precision)
        plan = [(fmt, precision or default)]
    else:
        plan = [(e.format, precision or e.precision) for e in profile.exports]
    plan = list(dict.fromkeys(plan))
    for f, p in plan:
        check_request(f, p, profile, shapes)
    return plan


@dataclass(frozen=True)
class RunInt8:
    """What a compress run's quantize stage decided, so that exporting the run rebuilds the same INT8 model."""

    float_nodes: tuple[str, ...]
    fmt: str  # the format whose backend found them
    data: str
    split: str
    samples: int
    seed: int
    val: str  # the split its search measured on, against `reference` (the teacher there; None: the model's own)
    reference: float | None  # of the metric the run gated


def recorded_int8(model: Path) -> RunInt8 | None:
    """The exclusions and calibration of a compress run's INT8 artifact; None for a package or a run without."""
    report, recipe_file = model / "report.json", model / "recipe.yaml"
    if not (report.is_file() and recipe_file.is_file()):
        return None
    record = read_record(report, "compress report")
    artifacts = record.get("artifacts") or []
    if not artifacts:
        return None
    recorded = Path(artifacts[-1]["path"]).parent  # stages/<stage>/<format>-int8, written relative to compress's cwd
    art = load_artifact(model / "stages" / recorded.parent.name / recorded.name, verify=False)
    calib, recipe = art.meta.get("calibration") or {}, load_recipe(recipe_file)
    # Runs written before the one INT8 path kept the exclusions beside the quantization record, not in it.
    kept = (art.meta.get("quantization") or {}).get("float_nodes", art.meta.get("float_nodes"))
    if kept is None or "samples" not in calib:
        raise UsageError(f"{art.directory} does not record its INT8 exclusions", "rerun edgekit compress")
    reference = (record.get("reference") or {}).get("search") or {}
    return RunInt8(tuple(kept), art.format, recipe.data.name, recipe.data.calibration, int(calib["samples"]),
                   int(calib.get("seed", recipe.seed)), recipe.data.val,
                   reference.get(record.get("metric", "accuracy")))  # fmt: skip


def export(
    model: str | Path,
    target: str,
    out: Path,
    options: ExportOptions = ExportOptions(),
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Export a model for a hardware profile: the parity-checked ONNX hub file, then every requested
    artifact, each with a manifest and (where it runs here) its test-split accuracy. INT8 goes through the one
    path `compress` takes: a compress run's recorded exclusions, else the search when `max_drop` is given, else
    plain PTQ. With `validate`, the profile's artifacts are then validated against its budgets."""
    o = options
    profile, resolution = resolve_profile(target)
    if resolution:
        log(resolution)
    plan = plan_exports(profile, o.fmt, o.precision, o.shapes)
    check_out_dir(out, overwrite)
    check_writable(out)
    loaded = load_model(model)
    task, run = loaded.task, recorded_int8(Path(model))
    io, test = (loaded.io.static() if o.shapes == "static" else loaded.io), load_split(o.data, "test")
    agree = o.against_teacher or not test.labelled  # every split is scored against the model's own outputs
    if agree:
        log(f"gating agreement with {model} on {o.data}, not labels")
        task, test = agreement(task), against(torch_predict(loaded.model), io, test)

    def split(data: str, name: str) -> FeedDataset:
        found = load_split(data, name)
        return against(torch_predict(loaded.model), io, found) if agree else found

    source = evaluate(torch_predict(loaded.model), io, test, per_modality=False, task=task).overall  # a package
    # metric learns its direction here, before its gate is made
    explicit = gate_for(task, o.max_drop, o.max_metric_drop)  # what --max-drop / --max-metric-drop ask for
    m = explicit.metric
    source_score = source[m]
    parent = model_hash(loaded.model)
    meta = {"source": str(model), "profile": profile.name, "shapes": o.shapes, "task": loaded.task.name}
    # INT8 keeps in float what the budget needs, as compress's quantize stage does: --max-drop / --max-metric-drop,
    # else the profile's accuracy budget. Plain PTQ is only for a profile without one.
    gate = explicit if explicit.limit is not None else gate_for(task, None, o.max_metric_drop,
                                                                profile.budgets.max_accuracy_drop)  # fmt: skip
    if run:  # a format the run did not search gets its own search, against the run's reference
        calibrate = lambda: calibration_set(io, load_split(run.data, run.split), run.samples, run.seed)  # noqa: E731
        reference = None if agree else run.reference  # agreement: against the model exported, not the run's teacher
        search = None if gate.limit is None else Search(split(run.data, run.val), gate, task, reference)
    else:
        calibrate = lambda: calibration_set(io, load_split(o.data, "train"), o.calib_samples)  # noqa: E731
        search = None if gate.limit is None else Search(split(o.data, "val"), gate, task)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as work, atomic_dir(out) as tmp:
        hub = Path(work) / "model.onnx"
        log("exporting ONNX (dynamo, opset 18) and checking parity on real samples")
        export_onnx(loaded.model, io, hub, slim=True)
        cases = check_parity(io, torch_outputs(loaded.model, io), onnx_runner(hub, io).run, test)
        require_parity(cases, "the exported ONNX")
        meta["parity"] = parity_summary(cases)  # the hub's, before any format is built from it
        meta["costs"] = graph_costs(hub, io)  # per-kernel MACs and elements: the roofline estimate of any format
        branches = dict(loaded.manifest.branches) if loaded.manifest else {}
        ctx = ExportContext(loaded.model, io, hub, profile, parent, calibrate, Path(work), meta, branches,
                            run.float_nodes if run else None, search, FORMATS[run.fmt] if run else None)  # fmt: skip
        scoring = Scoring(test, task, m, o.data, "test", o.threads)
        for f, p in [("onnx", "fp32"), *[x for x in plan if x != ("onnx", "fp32")]]:
            log(f"building {f}/{p}")
            if p == "int8" and (run or search):
                log(f"{f}/int8: {ctx.int8_plan(FORMATS[f])}")
            built = build_artifact(ctx, FORMATS[f], p, tmp / f"{f}-{p}", scoring)
            art = built.artifact
            if p == "int8" and (searched := ctx.searched(FORMATS[f])):
                kept = searched.accepted()
                log(f"{f}/int8: kept in float: {', '.join(kept.float_parts) or 'nothing'} "
                    f"({kept.drop:.4g} {searched.gate.unit} worse on val than the reference)")  # fmt: skip
            if fallback := art.meta.get("quantization", {}).get("fallback"):
                log(f"{f}/{p}: INT8 failed inside {fallback['branch']} ({', '.join(fallback['modules'])}): "
                    f"{fallback['error']}; that branch stays float")  # fmt: skip
            value = built.score if built.here else None
            row = {
                "format": f,
                "precision": p,
                "path": str(out / art.directory.name / art.file),
                "sha256": sha256_file(art.path),
                "size_mb": round(art.size_mb(), 3),
                "runtime": FORMATS[f].runs_here,
                "metric": m,
                m: value,
                f"{m}_drop": None if value is None else explicit.worsening(source_score, value),
                "parity": art.meta["parity"],
                "seconds": round(built.seconds, 1),  # to build it (calibration included), not to measure it
            }
            if built.score is not None and not built.here:  # e.g. TensorRT: its graph runs here
                row["reference"] = {"runtime": built.runtime, m: built.score}
            rows.append(row)
        result = {
            KEY: VERSION,
            "model": str(model),
            "profile": profile.name,
            "resolution": resolution,
            "out": str(out),
            "task": task.name,
            "metric": m,
            "unit": explicit.unit,
            "source": {
                m: source_score,
                "scores": source.as_dict(),
                "params": count_params(loaded.model),
                "sha256": parent,
            },
            "parity": meta["parity"],
            "int8": {f: ctx.int8_plan(FORMATS[f]) for f, p in plan if p == "int8"}
            if run
            else ("searched" if search else "plain PTQ"),
            "artifacts": rows,
        }
        if ctx.sensitivity:
            result["sensitivity"] = {k: s.as_dict() for k, s in ctx.sensitivity.items()}
        write_json(tmp / "export.json", result)
    deployed = {(e.format, e.precision) for e in profile.exports}
    arts = [Path(r["path"]).parent for r in rows if (r["format"], r["precision"]) in deployed]
    if o.validate and not arts:
        log(f"validating none: {profile.name} deploys {', '.join(sorted(f'{f}/{p}' for f, p in deployed))}")
    elif o.validate:  # the profile's own artifacts, proven the way `edgekit validate` does
        log(f"validating {len(arts)} artifact(s) against {profile.name}")
        baseline = run_model(Path(model))
        checks = ValidateOptions(o.data, threads=o.threads, against_teacher=o.against_teacher)
        budgets = {"max_metric_drop": o.max_metric_drop}
        result["validation"] = validate(arts, target, baseline, budgets=budgets, options=checks)  # the same target
        write_json(out / "export.json", result)
    return result
