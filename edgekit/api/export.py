"""`edgekit export`: the parity-checked ONNX hub file, then every artifact a profile deploys, each through the one
artifact pipeline (build -> parity -> accuracy in its runtime -> manifest), INT8 the way compress made it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agent import usable_cpus
from ..artifact import load_artifact, model_hash, sha256_file
from ..data import DataLike, FeedDataset, Splits
from ..data.calibration import DEFAULT_SAMPLES, calibration_set
from ..errors import UsageError
from ..evaluation import against, evaluate, torch_outputs, torch_predict
from ..formats import FORMATS, ExportContext, Search, ShapeMode, check_request
from ..fsutil import atomic_dir, check_out_dir, check_writable
from ..hardware import HardwareProfile, resolve_profile
from ..hardware.estimator import graph_costs
from ..hardware.identity import host_facts
from ..loading import LoadedModel, run_model
from ..models import count_params
from ..pipeline import Built, Scoring, build_artifact, int8_speed
from ..recipe import load_recipe
from ..records import CompressReport, ExportRecord, load_record, write_record
from ..runtimes import onnx_runner
from ..targets.onnx import export_onnx
from ..targets.parity import check_parity, require_parity
from ..targets.parity import summary as parity_summary
from ..tasks import agreement, gate_for
from ..validate import Options as ValidateOptions
from ..validate import validate
from .models import ModelLike, as_loaded, model_name

# -- export ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    fmt: str | None = None  # one format (default: the profile's)
    precision: str | None = None  # default: the profile's for that format
    data: DataLike = "avdigits"  # calibration (train), the search (val), parity and accuracy (test); a spec, or
    # splits in memory
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
    record = load_record(report, CompressReport, "compress report")
    if not record.artifacts:
        return None
    shipped = record.artifacts[-1]  # stages/<stage>/<format>-<precision>, relative to compress's cwd
    stage = model / "stages" / Path(shipped.path).parent.parent.name
    art = load_artifact(stage / f"{shipped.format}-int8", verify=False)  # kept where FP32 shipped as the faster
    calib, recipe = art.meta.get("calibration") or {}, load_recipe(recipe_file)
    # Runs written before the one INT8 path kept the exclusions beside the quantization record, not in it.
    kept = (art.meta.get("quantization") or {}).get("float_nodes", art.meta.get("float_nodes"))
    if kept is None or "samples" not in calib:
        raise UsageError(f"{art.directory} does not record its INT8 exclusions", "rerun edgekit compress")
    reference = record.reference.get("search") or {}
    return RunInt8(tuple(kept), art.format, recipe.data.name, recipe.data.calibration, int(calib["samples"]),
                   int(calib.get("seed", recipe.seed)), recipe.data.val,
                   reference.get(record.metric))  # fmt: skip


def with_fp32(plan: list[tuple[str, str]], timed: bool) -> list[tuple[str, str]]:
    """What to build, in order: the ONNX FP32 hub first, and, where INT8 is timed against FP32, each INT8 format's
    FP32 model before it."""
    todo = [("onnx", "fp32")]
    for f, p in plan:
        if p == "int8" and timed and "fp32" in FORMATS[f].precisions:
            todo.append((f, "fp32"))
        todo.append((f, p))
    return list(dict.fromkeys(todo))


def export(
    model: ModelLike,
    target: str,
    out: Path,
    options: ExportOptions = ExportOptions(),
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ExportRecord:
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
    loaded, name, data = as_loaded(model), model_name(model), Splits.of(o.data)
    task, run = loaded.task, None if isinstance(model, LoadedModel) else recorded_int8(Path(model))
    io, test = (loaded.io.static() if o.shapes == "static" else loaded.io), data("test")
    agree = o.against_teacher or not test.labelled  # every split is scored against the model's own outputs
    if agree:
        log(f"gating agreement with {name} on {data.name}, not labels")
        task, test = agreement(task), against(torch_predict(loaded.model), io, test)

    def split(splits: Splits, which: str) -> FeedDataset:
        found = splits(which)
        return against(torch_predict(loaded.model), io, found) if agree else found

    source = evaluate(torch_predict(loaded.model), io, test, per_modality=False, task=task).overall  # a package
    # metric learns its direction here, before its gate is made
    explicit = gate_for(task, o.max_drop, o.max_metric_drop)  # what --max-drop / --max-metric-drop ask for
    m = explicit.metric
    source_score = source[m]
    parent = model_hash(loaded.model)
    meta = {"source": name, "profile": profile.name, "shapes": o.shapes, "task": loaded.task.name}
    # INT8 keeps in float what the budget needs, as compress's quantize stage does: --max-drop / --max-metric-drop,
    # else the profile's accuracy budget. Plain PTQ is only for a profile without one.
    gate = explicit if explicit.limit is not None else gate_for(task, None, o.max_metric_drop,
                                                                profile.budgets.max_accuracy_drop)  # fmt: skip
    if run:  # a format the run did not search gets its own search, against the run's reference
        recorded = Splits.of(run.data)  # the run's own data, as its recipe names it
        calibrate = lambda: calibration_set(io, recorded(run.split), run.samples, run.seed)  # noqa: E731
        reference = None if agree else run.reference  # agreement: against the model exported, not the run's teacher
        search = None if gate.limit is None else Search(split(recorded, run.val), gate, task, reference)
    else:
        calibrate = lambda: calibration_set(io, data("train"), o.calib_samples)  # noqa: E731
        search = None if gate.limit is None else Search(split(data, "val"), gate, task)
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
        scoring = Scoring(test, task, m, data.name, "test", o.threads)
        builds: dict[tuple[str, str], Built] = {}
        timed = profile.not_the_device(host_facts()) is None  # this host is the device: INT8 is timed against FP32
        for f, p in with_fp32(plan, timed):
            log(f"building {f}/{p}")
            if p == "int8" and (run or search):
                log(f"{f}/int8: {ctx.int8_plan(FORMATS[f])}")
            built = builds[f, p] = build_artifact(ctx, FORMATS[f], p, tmp / f"{f}-{p}", scoring)
            art = built.artifact
            if p == "int8" and (searched := ctx.searched(FORMATS[f])):
                kept = searched.accepted()
                log(f"{f}/int8: kept in float: {', '.join(kept.float_parts) or 'nothing'} "
                    f"({kept.drop:.4g} {searched.gate.unit} worse on val than the reference)")  # fmt: skip
            if fallback := art.meta.get("quantization", {}).get("fallback"):
                log(f"{f}/{p}: INT8 failed inside {fallback['branch']} ({', '.join(fallback['modules'])}): "
                    f"{fallback['error']}; that branch stays float")  # fmt: skip
            speed = None
            if (f, "fp32") in builds and p == "int8" and timed:
                speed = int8_speed(art, builds[f, "fp32"].artifact, test, min(profile.threads, usable_cpus()))
                log(f"{f}/int8: {speed.why()}")
            value = built.score if built.here else None
            row = {
                "format": f,
                "precision": p,
                "path": str(out / art.directory.name / art.file),
                "sha256": sha256_file(art.path),
                "size_mb": round(art.size_mb(), 3),
                **({"speed": speed.as_dict()} if speed else {}),
                "runtime": FORMATS[f].runs_here,
                "metric": m,
                m: value,
                f"{m}_drop": None if value is None else explicit.worsening(source_score, value),
                "parity": art.meta["parity"],
                "seconds": round(built.seconds, 1),  # to build it (calibration included), not to measure it
            }
            if built.score is not None and not built.here:  # e.g. TensorRT: its graph runs here
                row["reference"] = {"runtime": built.runtime, m: built.score}
            if delegation := art.meta.get("delegation"):  # what runs outside the delegate, and whether it could not
                row["delegation"] = delegation
                if left := delegation.get("portable"):
                    log(
                        f"{f}/{p}: {delegation['portable_nodes']} nodes on portable kernels, outside "
                        f"{art.meta.get('delegate', 'the delegate')}: "
                        + "; ".join(f"{o['op']} x{o['nodes']} ({o['why'].split(':')[0]})" for o in left)
                    )
            rows.append(row)
        result = ExportRecord.model_validate(
            {
                "model": name,
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
                **({"sensitivity": {k: s.as_dict() for k, s in ctx.sensitivity.items()}} if ctx.sensitivity else {}),
            }
        )
        write_record(tmp / "export.json", result)
    slower = {(r.format, "int8") for r in result.artifacts if r.speed and r.speed["ships"] == "fp32"}
    deployed = {(f, "fp32" if (f, p) in slower else p) for f, p in ((e.format, e.precision) for e in profile.exports)}
    arts = [Path(r.path).parent for r in result.artifacts if (r.format, r.precision) in deployed]
    if o.validate and not arts:
        log(f"validating none: {profile.name} deploys {', '.join(sorted(f'{f}/{p}' for f, p in deployed))}")
    elif o.validate:  # the profile's own artifacts, proven the way `edgekit validate` does
        log(f"validating {len(arts)} artifact(s) against {profile.name}")
        baseline = loaded if isinstance(model, LoadedModel) else run_model(Path(model))
        checks = ValidateOptions(data, threads=o.threads, against_teacher=o.against_teacher)
        budgets = {"max_metric_drop": o.max_metric_drop}
        result.validation = validate(arts, target, baseline, budgets=budgets, options=checks)  # the same target
        write_record(out / "export.json", result)
    return result
