"""Side-by-side benchmark: the torch-eager teacher, its FP32 runtimes, the tools a user would pick instead
of EdgeKit (with their documented defaults), and EdgeKit's artifacts, measured in one run on one machine.

Every row is run in its own runtime with the same threads, on the same real test samples. Latency is
timed in alternating blocks (A B A B ...), twice over, so the document can show how much a repeat moves
the headline ratios. Writes docs/benchmarks.md (tables, targets, diagnosis) and docs/benchmarks.json, each with
one entry per host: the CPU model and its ISA class (`host_key`), so a run replaces only its own host's results
and a new host adds its own.

    python scripts/bench.py            # the AV-digits reference teacher, recipes/avdigits-x86.yaml
    python scripts/bench.py --help     # your own model package, recipes, sample counts
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit import api
from edgekit.artifact import Artifact, load_artifact, sha256_file
from edgekit.cli.common import metric_drop
from edgekit.data import FeedDataset, load_split, with_modalities
from edgekit.data.calibration import calibration_set
from edgekit.errors import EdgeKitError, UsageError
from edgekit.evaluation import evaluate
from edgekit.formats import load_runner, op_breakdown
from edgekit.fsutil import content_hash, write_json, write_text
from edgekit.hardware import host_profile, resolve_profile
from edgekit.hardware.estimator import graph_costs, point
from edgekit.io import IOSpec
from edgekit.loading import load_model
from edgekit.profiling.host import host_info
from edgekit.quant.onnx_qdq import ort_reader
from edgekit.recipe import load_recipe
from edgekit.runtimes import Runner, predict_fn
from edgekit.runtimes.torch import TorchRunner
from edgekit.stats import paired_drop
from edgekit.tasks import Gate, Task, gate_for
from edgekit.timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 16)
SEARCH_MINUTES = 18.0  # with the rest of the bench (about 8 min on 2 cores), `make bench` stays near 30 min


@dataclass
class Row:
    name: str
    group: str  # baseline | runtime | peer | edgekit
    runtime: str
    precision: str
    runner: Runner
    size_mb: float
    produce_s: float | None  # seconds to produce the artifact from the FP32 model
    note: str = ""
    artifact: Artifact | None = None  # for the op breakdown of the row the targets single out
    model: str = "teacher"  # the network it runs (teacher or the compressed student), for its roofline time
    roofline_ms: float | None = None  # roofline time at batch 1 on the --profile device (not a lower bound)
    estimate_ms: float | None = None  # the estimator's point estimate there: what calibrate_estimator.py compares
    score: float | None = None  # of the bench's gated metric (accuracy, mAP, MAE, ...) on the test samples
    correct: str | None = None  # per test sample, "1" where it is right (classification): for paired intervals
    latency: dict[int, list[np.ndarray]] = field(default_factory=dict)  # batch -> one array per repeat


class EagerRunner(TorchRunner):
    """Torch eager with its thread count set before every call: torch's is process-wide, and the bench times eager
    at two counts side by side."""

    def __init__(self, model: Any, io: IOSpec, threads: int) -> None:
        super().__init__(model, io, threads)
        self.threads = threads

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch.set_num_threads(self.threads)
        return super().run(feeds)


class OVDefaultRunner:
    """OpenVINO as a user compiles it without EdgeKit: `compile_model(model, "CPU")`, threads pinned only.
    The plugin then picks its own inference precision (bf16 on CPUs with AVX-512 BF16 or AMX)."""

    def __init__(self, model: Any, threads: int) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.name = f"openvino {ov.get_version().split('-')[0]}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(dict(feeds))
        return {o.get_any_name(): np.array(result[o]) for o in self.compiled.outputs}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def onnx_file_runner(path: Path, io: IOSpec, threads: int) -> Runner:
    return load_runner(Artifact("onnx", "int8", path.parent, path.name, io, ""), threads)


def mb(path: Path) -> float:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()) / 1e6


def isa_class(isa: list[str] | tuple[str, ...]) -> str:
    """The ISA class of a CPU: the flags that decide which kernels torch and the INT8 runtimes pick, and so its
    accuracies and speed. Most capable first."""
    flags = set(isa)
    if "avx512_vnni" in flags:
        return "avx512_vnni + amx" if "amx_int8" in flags else "avx512_vnni"
    if flags & {"avx512f", "avx512bw"}:
        return "avx512 without vnni"
    if "avx2" in flags:
        return "avx2 + avx_vnni" if "avx_vnni" in flags else "avx2 only"
    if "asimd" in flags:
        return "asimd" + (" + dotprod" if "asimddp" in flags else "") + (" + i8mm" if "i8mm" in flags else "")
    return "no SIMD flags known"


def host_key(host: Mapping[str, Any]) -> str:
    """Which results block and JSON entry a run on `host` (edgekit.profiling.host.host_info()) belongs to: the CPU
    model and its ISA class, e.g. "AMD EPYC, avx512_vnni" or "AMD EPYC, avx2 only". Safe inside an HTML comment."""
    cpu = " ".join(str(host.get("cpu") or host.get("arch") or "unknown CPU").split())
    key = f"{cpu}, {isa_class(host.get('isa', []))}"
    while "--" in key:
        key = key.replace("--", "-")
    return key.replace("<", "").replace(">", "")


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The per-host results already in OUT.json: {host key: result}. A file from before per-host results (one
    result with its `host`) becomes that host's entry."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"bench: {path} cannot be read ({e}); fix or move it, it holds other hosts' results") from e
    if isinstance(data, dict) and isinstance(data.get("hosts"), dict):
        return dict(data["hosts"])
    if isinstance(data, dict) and isinstance(data.get("host"), dict):
        return {host_key(data["host"]): data}
    raise SystemExit(f"bench: {path} holds no benchmark results; fix or move it")


def save_results(path: Path, section: str, key: str, value: dict[str, Any]) -> None:
    """OUT.json's `section` ("hosts": the main bench's results; "searches": --search's) gets `key`'s entry; every
    other entry and section stays."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["hosts"] = load_results(path)  # a file from before per-host results becomes per-host here
    write_json(path, {**data, section: {**data.get(section, {}), key: value}})


# -- rows --------------------------------------------------------------------------------------------


def artifact_row(name: str, art: Artifact, produce_s: float | None, threads: int, note: str = "") -> Row:
    runner = load_runner(art, threads)
    return Row(name, "edgekit", runtime_of(art), art.precision, runner, art.size_mb(), produce_s, note, art)


def export_rows(args: argparse.Namespace, teacher: Path, work: Path) -> list[Row]:
    """The FP32 runtimes and EdgeKit's PTQ-only artifacts, each from `edgekit export` of the teacher."""
    built: dict[tuple[str, str], tuple[Artifact, float]] = {}
    sources = content_hash({str(p): p.read_text() for p in sorted((ROOT / "edgekit").rglob("*.py"))})
    for target, fmt, precision in (("x86", "onnx", "int8"), ("x86", "openvino", "fp32"),
                                   ("x86", "openvino", "int8"), ("android", "executorch", "int8")):  # fmt: skip
        out = work / f"export-{fmt}-{precision}"
        options = api.ExportOptions(fmt, precision, args.data, args.calib_samples, threads=args.threads)
        # An export of the same teacher, options, host and EdgeKit sources is reused, as the compress runs are.
        key = {"teacher": sha256_file(teacher / "model.safetensors"), "options": repr(options),
               "host": host_info()["cpu"], "edgekit": sources}  # fmt: skip
        if (out / "bench-key.json").is_file() and json.loads((out / "bench-key.json").read_text()) == key:
            r = api.load_record(out / "export.json", api.ExportRecord, "export record")
        else:
            r = api.export(teacher, target, out, overwrite=True, options=options)
            write_json(out / "bench-key.json", key)
        for a in r.artifacts:
            built.setdefault((a.format, a.precision), (load_artifact(Path(a.path).parent), a.seconds))
    t = args.threads
    ov_fp32, ov_s = built["openvino", "fp32"]
    ov_default = OVDefaultRunner(str(ov_fp32.path), t)
    rows = [
        artifact_row("onnxruntime FP32", *built["onnx", "fp32"], t),
        artifact_row("OpenVINO FP32 (f32 hint)", ov_fp32, ov_s, t),
        Row("OpenVINO default precision", "runtime", "openvino", ov_default.precision, ov_default, ov_fp32.size_mb(),
            ov_s, "the FP32 IR compiled with the plugin's default inference precision"),
        artifact_row("EdgeKit PTQ ONNX Q/DQ INT8", *built["onnx", "int8"], t),
        artifact_row("EdgeKit PTQ OpenVINO INT8", *built["openvino", "int8"], t),
        artifact_row("EdgeKit PTQ ExecuTorch XNNPACK INT8", *built["executorch", "int8"], t,
                     "the Android artifact, run by ExecuTorch's runtime and XNNPACK on this x86 CPU"),
    ]  # fmt: skip
    for row in rows[:2]:
        row.group = "runtime"
    return rows


def peer_rows(args: argparse.Namespace, io: IOSpec, fp32_onnx: Path, work: Path, task: Task, gate: Gate) -> list[Row]:
    """What a user would do without EdgeKit, each library with its documented defaults, from the same FP32
    ONNX file and the same calibration samples."""
    import nncf
    import openvino as ov
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_set(io, load_split(args.data, "train"), args.calib_samples)
    t, rows = args.threads, []
    for name, path, quantize in (
        ("onnxruntime quantize_dynamic", work / "ort-dynamic.onnx", lambda dst: quantize_dynamic(fp32_onnx, dst)),
        ("onnxruntime quantize_static (Q/DQ)", work / "ort-static.onnx",
         lambda dst: quantize_static(fp32_onnx, dst, ort_reader(calib))),
    ):  # fmt: skip
        _, s = timed(lambda q=quantize, p=path: q(p))
        rows.append(Row(name, "peer", "onnxruntime", "int8", onnx_file_runner(path, io, t), mb(path), s))

    val = load_split(args.data, "val")
    val = val.head(args.val_samples) if args.val_samples else val
    batches = [(with_modalities(io, f, io.modalities), y) for f, y in val.batches(64)]

    def validate(compiled: Any, items: Any) -> float:
        """The gated metric as nncf takes it: higher is better (so MAE is negated), in the metric's own scale."""
        request, outs, labels = compiled.create_infer_request(), [], []
        for feeds, y in items:
            outs.append(np.asarray(next(iter(request.infer(feeds).values()))))
            labels.append(y)
        value = task.score(np.concatenate(outs), task.labels(np.concatenate(labels), "val"))[gate.metric]
        return value if gate.higher_is_better else -value

    assert gate.limit is not None
    max_drop = gate.limit / gate.scale  # 1 point of accuracy: 0.01
    budget = f"{gate.limit} points of {gate.metric}" if gate.unit == "points" else f"{gate.metric} {gate.limit}"

    model, dataset = ov.convert_model(str(fp32_onnx)), nncf.Dataset(list(calib.feeds))
    for name, key, quantize, note in (
        ("OpenVINO + nncf.quantize", "nncf-default", lambda: nncf.quantize(model, dataset, subset_size=len(calib)),
         "compiled with defaults ({} for the ops left in float)"),
        ("OpenVINO + nncf.quantize_with_accuracy_control", "nncf-ac",
         lambda: nncf.quantize_with_accuracy_control(model, dataset, nncf.Dataset(batches), validate,
                                                     max_drop=max_drop, subset_size=len(calib)),
         f"max_drop {max_drop:g} ({budget}) on the val split; compiled with defaults "
         "({} for the ops left in float)"),
    ):  # fmt: skip
        quantized, s = timed(quantize)
        ov.save_model(quantized, work / key / "model.xml")
        runner = OVDefaultRunner(quantized, t)
        rows.append(Row(name, "peer", "openvino", "int8", runner, mb(work / key), s, note.format(runner.precision)))
    return rows


def compress_rows(args: argparse.Namespace, teacher: Path, work: Path) -> tuple[list[Row], dict[str, Any]]:
    """EdgeKit's compress runs (resumed from `work` when the recipe is unchanged) and their artifacts. The
    full recipe's student is also exported to ONNX (FP32 and Q/DQ INT8) for onnxruntime, whose smaller
    per-op overhead wins at batch 1 where OpenVINO wins at batch 16."""
    rows, reports, t = [], {}, args.threads
    for key, path in (("ptq", args.ptq_recipe), ("full", args.recipe)):
        recipe = load_recipe(path)  # on the bench's model and data, as every other row
        data = recipe.data.model_copy(update={"name": args.data})
        recipe = recipe.model_copy(update={"model": str(teacher), "data": data, "out": None})
        try:
            reports[key] = api.compress(recipe, work / f"compress-{key}").dump()
        except EdgeKitError as e:
            reports[key] = {"error": str(e), "recipe": str(path)}
            print(f"bench: compress {path} failed: {e}", file=sys.stderr)
    if "artifacts" in reports["ptq"]:
        r = reports["ptq"]
        art = load_artifact(Path(r["artifacts"][0]["path"]).parent)
        rows.append(
            artifact_row("EdgeKit accuracy-aware PTQ", art, stage_seconds(r["stages"]), t, args.ptq_recipe.name)
        )
    if "artifacts" in reports["full"]:
        r = reports["full"]
        float_stages = [s for s in r["stages"] if s["name"] != "quantize"]
        student_s = stage_seconds(float_stages)
        exported = api.export(
            Path(float_stages[-1]["path"]),
            "x86",
            work / "student-onnx",
            overwrite=True,
            options=api.ExportOptions("onnx", "int8", args.data, args.calib_samples, threads=t),
        )
        onnx = {a.precision: (load_artifact(Path(a.path).parent), a.seconds) for a in exported.artifacts}
        how = "+".join(s["name"] for s in float_stages) + f" stages of {args.recipe.name}"
        art = load_artifact(Path(r["artifacts"][0]["path"]).parent)
        (fp32, fp32_s), (int8, int8_s) = onnx["fp32"], onnx["int8"]
        rows += [
            artifact_row("EdgeKit distill + prune (FP32)", fp32, student_s + fp32_s, t, f"the {how}, onnxruntime FP32"),
            artifact_row(f"EdgeKit distill + prune + INT8 (recipe, {runtime_of(art)})", art,
                         stage_seconds(r["stages"]), t, f"the whole {args.recipe.name} recipe"),
            artifact_row("EdgeKit distill + prune + INT8 (export, onnxruntime)", int8, student_s + int8_s, t,
                         f"the {how}, then `edgekit export --format onnx --precision int8` (Q/DQ PTQ)"),
        ]  # fmt: skip
        for row in rows[-3:]:
            row.model = "student"
    return rows, reports


def searched_rows(args: argparse.Namespace, work: Path, key: str) -> tuple[list[Row], dict[str, Any]]:
    """`edgekit search` for this host's profile, time-boxed (`--search-minutes`), from the search recipe (the x86
    recipe's stages and budgets, its own configuration tried first): the front's fastest point within the
    budgets becomes a row, timed beside every other. Its recipe is copied next to the results, so `edgekit
    compress --recipe` reproduces the row."""
    if not args.search_minutes:
        return [], {}
    recipe = load_recipe(args.search_recipe)
    data = recipe.data.model_copy(update={"name": args.data})
    mine = {"model": str(args.model)} if args.model else {}  # else the recipe's reference-teacher: a portable recipe
    recipe = recipe.model_copy(update={**mine, "data": data, "out": None})
    where = work / f"search-{content_hash(recipe.model_dump(mode='json'))[:12]}"  # a study per recipe: it resumes
    result = api.search(recipe, where, options=api.SearchOptions(time_budget_s=args.search_minutes * 60),
                        own_point=True, log=lambda m: print(f"bench: search: {m}", file=sys.stderr))  # fmt: skip
    fit = [t for t in result.front if t.status == "feasible" and t.artifact and t.latency]
    if not fit:
        print("bench: the search's front holds no point within the budgets; no searched row", file=sys.stderr)
        return [], {"trials": len(result.trials), "front": 0}
    best = min(fit, key=lambda t: t.latency["p50_ms"] if t.latency["p50_ms"] is not None else t.latency["p95_ms"])
    assert best.artifact is not None and best.recipe is not None
    art = load_artifact(Path(best.artifact["path"]).parent)
    saved = args.out.parent / "benchmarks-recipes" / f"{slug(key)}.yaml"
    write_text(saved, (where / best.recipe).read_text())
    config = " ".join(f"{k.removeprefix('prune.')}={v}" for k, v in best.params.items())
    shown = saved.relative_to(ROOT) if saved.is_relative_to(ROOT) else saved
    note = (f"the fastest point within the budgets of a {args.search_minutes:g}-min `edgekit search` front "
            f"({config}); `edgekit compress --recipe {shown}` reproduces it")  # fmt: skip
    rows = [artifact_row(f"EdgeKit searched (trial #{best.number}, {runtime_of(art)}, {t} thread{'s' * (t > 1)})",
                         art, best.seconds, t, note) for t in sorted({args.threads, 1})]  # fmt: skip
    for row in rows:
        row.model = "searched"
    summary = {"trials": len(result.trials), "front": len(result.front), "seconds": result.seconds,
               "trial": best.number, "params": best.params, "recipe": str(shown), "values": best.values,
               "latency_source": result.latency_source}  # fmt: skip
    return rows, summary


def slug(key: str) -> str:
    """A host key as a file name."""
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def stage_seconds(stages: list[dict[str, Any]]) -> float:
    return sum(s["seconds"] for s in stages)


def runtime_of(art: Artifact) -> str:
    return {"onnx": "onnxruntime", "ort-mobile": "onnxruntime"}.get(art.format, art.format)


# -- measurement -------------------------------------------------------------------------------------


def fidelity(rows: list[Row], io: IOSpec, threads: int, seconds: float, rounds: int = 3) -> dict[str, Any] | None:
    """`edgekit profile` vs OpenVINO's own benchmark_app on the OpenVINO artifacts: the same artifact, threads
    and precision, each tool in its own process, alternating `rounds` times (this machine's speed drifts by
    tens of percent within a minute); the medians of the per-round medians are compared."""
    import json
    import re
    import shutil
    import subprocess

    from edgekit.runtimes.openvino import HINTS

    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(tool).exists():
        return None
    shape = ",".join(f"{t.name}{list(io.concrete_shape(t, batch=1))}".replace(" ", "") for t in io.inputs)
    out = []
    for row in (r for r in rows if r.artifact is not None and r.artifact.format == "openvino"):
        art = row.artifact
        # Latency mode: one stream and the synchronous API (benchmark_app sets threads only with -hint none), the
        # model reshaped static at batch 1 (-shape), as EdgeKit's OpenVINO runner compiles it.
        theirs_cmd = [tool, "-m", str(art.path), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync",
                      "-nthreads", str(threads), "-t", str(seconds), "-shape", shape,
                      "-infer_precision", HINTS[art.precision]]  # fmt: skip
        ours_cmd = [sys.executable, "-P", "-m", "edgekit", "profile", str(art.directory), "--threads", str(threads),
                    "--duration", str(seconds), "--no-ops", "--json"]  # fmt: skip
        theirs, ours = [], []
        for _ in range(rounds):
            log = subprocess.run(theirs_cmd, capture_output=True, text=True, check=False).stdout
            median = re.search(r"Median:\s+([\d.]+) (ms|us)", log)
            if median:
                theirs.append(float(median.group(1)) / (1000 if median.group(2) == "us" else 1))
            p = subprocess.run(ours_cmd, capture_output=True, text=True, check=False)
            if p.returncode == 0:
                ours.append(json.loads(p.stdout)["results"][0]["latency_ms"]["p50"])
        if theirs and ours:
            t, o = float(np.median(theirs)), float(np.median(ours))
            out.append({"row": row.name, "benchmark_app_p50_ms": round(t, 4), "edgekit_p50_ms": round(o, 4),
                        "ratio": round(o / t, 3), "rounds": rounds})  # fmt: skip
    return {"tool": "benchmark_app", "rows": out}


def rooflines(rows: list[Row], args: argparse.Namespace, io: IOSpec) -> None:
    """Each row's roofline time on the profile's device, from the per-kernel costs of the network it runs."""
    profile = resolve_profile(args.profile)[0]
    onnx = {
        "teacher": args.work / "export-onnx-int8" / "onnx-fp32",
        "student": args.work / "student-onnx" / "onnx-fp32",
    }
    costs = {m: graph_costs(load_artifact(d).path, io) for m, d in onnx.items() if (d / "manifest.json").is_file()}
    costs |= {r.model: r.artifact.meta["costs"] for r in rows if r.model == "searched" and r.artifact}
    for row in rows:
        if row.model in costs:
            precision = row.precision if row.precision in ("fp32", "fp16", "int8") else "fp32"
            e = point(costs[row.model], profile, precision)
            row.roofline_ms, row.estimate_ms = e["roofline_ms"], e["estimate_ms"]


def bench_gate(task: Task, max_metric_drop: str | None) -> Gate:
    """The metric every row is scored by and the drop the targets allow: 1.0 point of the task's fraction metric
    (accuracy, mAP, recall@1), or `--max-metric-drop` in its metric's unit. A package's own metric is not
    benchmarked (its direction is learned from a first score, which the gate needs before)."""
    if task.user:
        raise SystemExit(f"bench: the package's own metric {task.user.name} is not benchmarked; gate a built-in "
                         f"metric with --max-metric-drop (one of {', '.join(task.builtin)})")  # fmt: skip
    try:
        gate = gate_for(task, None, metric_drop(max_metric_drop), default_points=1.0)
    except UsageError as e:
        raise SystemExit(f"bench: {e}") from e
    if gate.limit is None:
        raise SystemExit(f"bench: task {task.name} has no default budget on {gate.metric}; pass --max-metric-drop "
                         f"{gate.metric}=LIMIT")  # fmt: skip
    return gate


def measure_scores(rows: list[Row], io: IOSpec, test: FeedDataset, task: Task, metric: str) -> None:
    for row in rows:
        report = evaluate(predict_fn(row.runner), io, test, batch_size=16, per_modality=False, task=task)
        row.score = report.overall[metric]
        full = next(iter(report.correct.values()), None)  # per_modality=False: the one subset, every modality
        row.correct = None if full is None else "".join("01"[int(c)] for c in full)
        print(f"bench: {row.name}: {metric} {row.score:.4f}", file=sys.stderr)


def measure_latency(rows: list[Row], io: IOSpec, test: FeedDataset, rounds: int, block: float, repeats: int) -> None:
    """Real test samples as input; every repeat is a full interleaved pass over all rows."""
    for batch in BATCHES:
        feeds = with_modalities(io, next(iter(test.batches(batch)))[0], io.modalities)
        calls = {row.name: (lambda r=row, f=feeds: r.runner.run(f)) for row in rows}
        for rep in range(repeats):
            times = interleaved(calls, rounds, block)
            for row in rows:
                row.latency.setdefault(batch, []).append(times[row.name])
            print(f"bench: batch {batch}, repeat {rep + 1}/{repeats} timed", file=sys.stderr)


# -- report ------------------------------------------------------------------------------------------


def p50(row: Row, batch: int, repeat: int | None = None) -> float:
    runs = row.latency[batch] if repeat is None else [row.latency[batch][repeat]]
    return float(np.median(np.concatenate(runs))) * 1e3


def p95(row: Row, batch: int) -> float:
    return float(np.percentile(np.concatenate(row.latency[batch]), 95)) * 1e3


def row_dict(row: Row, base: Row, gate: Gate, eager: dict[int, Row]) -> dict[str, Any]:
    """A row as OUT.json keeps it; its score and drop are named after the metric (`accuracy`, `accuracy_drop`)."""
    m = gate.metric
    drop = None if row.score is None or base.score is None else gate.worsening(base.score, row.score)
    return {
        "name": row.name,
        "group": row.group,
        "runtime": row.runtime,
        "precision": row.precision,
        "runtime_version": row.runner.name,
        m: row.score,
        f"{m}_drop": drop,
        "p50_ms_b1": round(p50(row, 1), 4),
        "p95_ms_b1": round(p95(row, 1), 4),
        "p50_ms_b16": round(p50(row, 16), 4),
        "p95_ms_b16": round(p95(row, 16), 4),
        "ratio_vs_eager_b1": round(p50(eager[1], 1) / p50(row, 1), 3),
        "ratio_vs_eager_b16": round(p50(eager[16], 16) / p50(row, 16), 3),
        "throughput_b16": round(16e3 / p50(row, 16), 1),
        "size_mb": round(row.size_mb, 3),
        "size_ratio": round(base.size_mb / row.size_mb, 2),
        "produce_s": None if row.produce_s is None else round(row.produce_s, 1),
        "runs_b1": int(sum(len(x) for x in row.latency[1])),
        "roofline_ms_b1": row.roofline_ms,
        "estimate_ms_b1": row.estimate_ms,
        "vs_roofline_b1": None if row.roofline_ms is None else round(p50(row, 1) / row.roofline_ms, 2),
        "note": row.note,
        "correct": row.correct,
    }


def headline(rows: list[Row], repeat: int | None) -> dict[str, float]:
    """The ratios the targets are judged on, for one repeat (or both pooled)."""
    by = {r.name: r for r in rows}
    base = by["torch eager FP32 (teacher)"]
    out = {f"{r.name} vs eager b1": p50(base, 1, repeat) / p50(r, 1, repeat) for r in rows if r is not base}
    for fp32, int8 in (
        ("onnxruntime FP32", "EdgeKit PTQ ONNX Q/DQ INT8"),
        ("OpenVINO FP32 (f32 hint)", "EdgeKit PTQ OpenVINO INT8"),
    ):
        if fp32 in by and int8 in by:
            out[f"{int8} vs {fp32} b16"] = p50(by[fp32], 16, repeat) / p50(by[int8], 16, repeat)
    return out


def targets(rows: list[dict[str, Any]], reports: dict[str, Any], gate: Gate) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met) for every target issues 3 and 6 set, their drops in the gate's unit: 1.0
    and 0.5 points of accuracy, or the gate's limit and half of it for another metric."""
    by, d, spec = {r["name"]: r for r in rows}, f"{gate.metric}_drop", drop_spec(gate.unit)

    def show(drop: float) -> str:
        return format(drop, spec)

    assert gate.limit is not None
    limit, half = gate.limit, gate.limit / 2
    ek = [r for r in rows if r["group"] == "edgekit" and r[d] is not None]
    out: list[tuple[str, str, bool | None]] = []
    fit = [r for r in ek if r[d] <= limit and r["runtime"] != "executorch"]
    if fit:
        best = max(fit, key=lambda r: r["ratio_vs_eager_b1"])
        out.append(
            (
                f"best x86 artifact: >= 15x lower p50 than torch eager at batch 1, drop <= {limit}",
                f"{best['name']}: {best['ratio_vs_eager_b1']:.2f}x, drop {show(best[d])}",
                best["ratio_vs_eager_b1"] >= 15,
            )
        )
        if best["vs_roofline_b1"] is not None:
            out.append(
                (
                    "best x86 artifact: p50 within 3x of its roofline time at batch 1",
                    f"{best['vs_roofline_b1']:.1f}x ({best['p50_ms_b1']:.3f} vs {best['roofline_ms_b1']:.4f} ms)",
                    best["vs_roofline_b1"] <= 3,
                )
            )
    for fp32, int8 in (
        ("onnxruntime FP32", "EdgeKit PTQ ONNX Q/DQ INT8"),
        ("OpenVINO FP32 (f32 hint)", "EdgeKit PTQ OpenVINO INT8"),
    ):
        if fp32 in by and int8 in by:
            ratio = by[fp32]["p50_ms_b16"] / by[int8]["p50_ms_b16"]
            drop = by[int8][d]
            out.append(
                (
                    f"{int8}: >= 2.0x over {fp32} at batch 16, drop <= {half}",
                    f"{ratio:.2f}x, drop {show(drop)}",
                    ratio >= 2.0 and drop <= half,
                )
            )
    x86 = [r for r in ek if r["runtime"] != "executorch"]  # the phone artifact is not an x86 deployment
    for peer in (r for r in rows if r["group"] == "peer"):
        out.append(versus(peer, x86, d, show))
    full_rows = [r for r in ek if r["name"].startswith("EdgeKit distill + prune + INT8")]
    if full_rows:
        full = min(full_rows, key=lambda r: r["size_mb"])
        size = f"{full['size_ratio']:.1f}x ({full['name']}, {full['size_mb']:.2f} MB)"
        out.append(("prune + INT8: >= 8x smaller than the FP32 teacher", size, full["size_ratio"] >= 8))
    f = reports.get("full", {})
    if "stages" in f:
        base_macs = f["baseline"]["macs"]
        student = [s for s in f["stages"] if s["name"] != "quantize"][-1]
        out.append(
            (
                f"distill + prune: >= 3x fewer MACs, drop <= {limit}",
                f"{base_macs / student['macs']:.2f}x fewer MACs, drop {show(student[d])}",
                base_macs / student["macs"] >= 3 and student[d] <= limit,
            )
        )
        seconds = sum(s["seconds"] for s in f["stages"])
        out.append(("full recipe: compress <= 10 min on 2 cores", f"{seconds / 60:.1f} min", seconds <= 600))
    p = reports.get("ptq", {})
    if "stages" in p:
        seconds = sum(s["seconds"] for s in p["stages"])
        out.append(("PTQ-only: compress <= 60 s", f"{seconds:.0f} s (stages)", seconds <= 60))
    elif p:
        out.append(("PTQ-only accuracy-aware compress", f"failed: {p['error']}", False))
    return out


def more_accurate(ours: dict[str, Any], peer: dict[str, Any], d: str) -> tuple[bool, str]:
    """Whether `ours` is more accurate than `peer` on the same test samples: the paired 95% interval of the
    difference (stats.paired_drop) lies above zero; a task without per-sample correctness compares the drops."""
    if ours.get("correct") and peer.get("correct"):
        lo, hi = paired_drop(*(np.frombuffer(r["correct"].encode(), np.uint8) == ord("1") for r in (ours, peer)))
        return lo > 0, f"paired 95% interval of the difference {lo:.2f} to {hi:.2f} points"
    return ours[d] < peer[d], "no per-sample interval for this metric"


def versus(peer: dict[str, Any], ours: list[dict[str, Any]], d: str, show: Callable[[float], str]
           ) -> tuple[str, str, bool]:  # fmt: skip
    """EdgeKit's best answer to a peer: its fastest artifact at an equal or lower drop must be >= 1.3x faster
    at batch 1, or else one at least as fast must be more accurate, by a paired interval that excludes zero."""
    target = f"vs {peer['name']}: >= 1.3x faster (b1) at equal or lower drop, or more accurate at equal speed"
    drop = peer[d]
    as_good = [r for r in ours if r[d] <= drop]
    if as_good:
        best = min(as_good, key=lambda r: r["p50_ms_b1"])
        speed = peer["p50_ms_b1"] / best["p50_ms_b1"]
        if speed >= 1.3:
            return (
                target,
                f"{best['name']}: {speed:.2f}x faster, drop {show(best[d])} vs {show(drop)}",
                True,
            )
    as_fast = [r for r in ours if r["p50_ms_b1"] <= peer["p50_ms_b1"] and r[d] < drop]
    if as_fast:
        best = min(as_fast, key=lambda r: r[d])
        speed = peer["p50_ms_b1"] / best["p50_ms_b1"]
        better, why = more_accurate(best, peer, d)
        return target, f"{best['name']}: drop {show(best[d])} vs {show(drop)} ({why}), {speed:.2f}x faster", better
    fast = min(ours, key=lambda r: r["p50_ms_b1"])
    least = min(r[d] for r in ours)
    return target, (f"no EdgeKit artifact is as accurate (best drop {show(least)} vs {show(drop)}); the fastest, "
                    f"{fast['name']}, is {peer['p50_ms_b1'] / fast['p50_ms_b1']:.2f}x faster at drop "
                    f"{show(fast[d])}"), False  # fmt: skip


def drop_spec(unit: str) -> str:
    """How the tables print a drop: points to 2 decimals, another metric's unit to 4 significant digits."""
    return "+.2f" if unit == "points" else "+.4g"


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    host, rows = result["host"], result["rows"]
    m = result.get("metric", "accuracy")  # results from before the bench took any task gate accuracy
    unit = result.get("unit", "points")
    lines = [
        f"### Host: {host_key(host)}",
        "",
        f"Measured {result['date']} on **{host['cpu']}** ({host['usable_cores']} usable cores, {host['arch']}; "
        f"ISA {', '.join(host['isa'])}), {host['os']}. Every row ran in its own runtime with "
        f"{result['settings']['threads']} threads on the same real test samples "
        f"({result['settings']['test_samples']} for accuracy). Latency: medians of interleaved blocks "
        f"(A B A B ...), {result['settings']['repeats']} repeats of {result['settings']['rounds']} rounds each. "
        f'Roofline times (last column) of profile `{result["settings"].get("profile", "x86")}`. "vs eager" is '
        "against torch eager at its faster thread count at that batch size.",
        "",
        f"| | artifact | runtime | precision | {m} | drop ({'pts' if unit == 'points' else unit}) | p50 b1 ms "
        "| p95 b1 ms | vs eager b1 "
        "| p50 b16 ms | vs eager b16 | samples/s b16 | size MB | size ratio | produce s | ÷ roofline b1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r['name']} | {r['runtime_version']} | {r['precision']} | {fmt(r[m], '.4f')} "
            f"| {fmt(r[f'{m}_drop'], drop_spec(unit))} "
            f"| {r['p50_ms_b1']:.3f} | {r['p95_ms_b1']:.3f} "
            f"| {r['ratio_vs_eager_b1']:.2f}x | {r['p50_ms_b16']:.3f} | {r['ratio_vs_eager_b16']:.2f}x "
            f"| {r['throughput_b16']:.0f} | {r['size_mb']:.2f} | {r['size_ratio']:.1f}x "
            f"| {fmt(r['produce_s'], '.1f')} | {fmt(r['vs_roofline_b1'], '.1f')} |"
        )
    notes = [f"- **{r['name']}**: {r['note']}" for r in rows if r["note"]]
    if (found := result.get("search")) and "trial" in found:
        minutes = (found["seconds"] or 0) / 60
        notes.append(f"- The search ran {found['trials']} trials in all ({minutes:.1f} min in this run, "
                     f"latency {found['latency_source']}); its front held {found['front']} points. Recipe of the "
                     f"searched row: `{found['recipe']}`.")  # fmt: skip
    lines += ["", *notes, "", "#### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in result["targets"]:
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    s = result["stability"]
    lines += [
        "",
        "#### Repeatability",
        "",
        f"The latency measurement ran {len(s['repeats'])} times in this run; the largest change of a headline "
        f"ratio between repeats was **{100 * s['max_relative_change']:.1f}%** (the rule is < 10%).",
        "",
        "| ratio | " + " | ".join(f"repeat {i + 1}" for i in range(len(s["repeats"]))) + " |",
        "|---|" + "---|" * len(s["repeats"]),
    ]
    for k in s["repeats"][0]:
        lines.append(f"| {k} | " + " | ".join(f"{rep[k]:.2f}x" for rep in s["repeats"]) + " |")
    if result.get("ops_b1"):
        ops = result["ops_b1"]
        lines += [
            "",
            f"#### Where the time goes: {ops['row']}, batch 1 ({ops['runtime']} profiler)",
            "",
            f"Profiled total {ops['total_ms']:.3f} ms per inference (profiling adds overhead per op).",
            "",
            "| op type | nodes | ms | share |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['op']} | {o['nodes']} | {o['ms']:.3f} | {100 * o['share']:.1f}% |" for o in ops["by_op_type"][:8]
        ]
    if result.get("fidelity"):
        lines += ["", "#### Fidelity: EdgeKit's timer vs OpenVINO's benchmark_app", "",
                  f"Same artifact, threads and precision; each tool in its own process for "
                  f"{result['settings']['fidelity_s']} s, alternating three times; medians of the per-round "
                  "medians.", "",
                  "| artifact | benchmark_app p50 ms | edgekit profile p50 ms | ratio |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {f['row']} | {f['benchmark_app_p50_ms']:.3f} | {f['edgekit_p50_ms']:.3f} | {f['ratio']:.2f}x |"
                  for f in result["fidelity"]["rows"]]  # fmt: skip
    lines += ["", "#### Versions", "", ", ".join(f"{k} {v}" for k, v in host["versions"].items())]
    return "\n".join(lines)


def update_doc(
    path: Path, generated: str, tag: str = "bench", key: str | None = None, legacy_key: str | None = None
) -> None:
    """Replace the document's generated block named `tag` (appending it when absent), keeping the
    hand-written text around it. With `key` (a host, for the bench results) the block is that host's: its
    markers carry the key, a run replaces only its own host's block, and a new host's block goes after the last
    host's. A single block from before per-host blocks becomes `legacy_key`'s (its host, from the old JSON), or
    else this host's."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    plain = f"<!-- {tag}:begin (generated, do not edit) -->", f"<!-- {tag}:end -->"
    if key is None:
        begin, end = plain
    else:
        begin, end = f"<!-- {tag}:begin {key} -->", f"<!-- {tag}:end {key} -->"
        head, sep, rest = text.partition(plain[0])
        body, sep2, tail = rest.partition(plain[1])
        if sep and sep2:
            old = legacy_key or key
            text = f"{head}<!-- {tag}:begin {old} -->{body}<!-- {tag}:end {old} -->{tail}"
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not (sep and sep2):
        last = text.rfind(f"<!-- {tag}:end ") if key is not None else -1
        if last >= 0:  # after the last host's block
            cut = text.index("-->", last) + 3
            head, tail = text[:cut] + "\n\n", text[cut:]
        else:
            head, tail = text.rstrip("\n") + "\n\n", "\n"
    write_text(path, f"{head}{begin}\n{generated}\n{end}{tail}")


def stability(rows: list[Row], repeats: int) -> dict[str, Any]:
    reps = [{k: round(v, 3) for k, v in headline(rows, i).items()} for i in range(repeats)]
    change = max((abs(a[k] - b[k]) / min(a[k], b[k]) for a in reps for b in reps for k in a), default=0.0)
    return {"repeats": reps, "max_relative_change": round(change, 4)}


def search_bench(args: argparse.Namespace, key: str) -> int:
    """`--search 30m`: `edgekit search` for the x86 profile this host is, with the hand-written recipe's budgets
    and its own configuration tried first; then that configuration and every point of the front timed side by
    side (interleaved blocks, batch 1), and the answer: does a point the search found beat the recipe (lower p50
    at an equal or lower test drop)?"""
    recipe = load_recipe(args.recipe)
    if api.search_space(recipe, own_point=True)["recipe_point"] is None:
        raise SystemExit(f"bench: {args.recipe} is not a point of the search space")
    out = args.work / f"search-{key}"
    budget = float(args.search.rstrip("m")) * 60
    result = api.search(recipe, out, options=api.SearchOptions(time_budget_s=budget), own_point=True,
                        log=lambda m: print(m, file=sys.stderr)).dump()  # fmt: skip
    trials = {t["number"]: t for t in result["trials"]}
    hand = next(t for t in result["trials"] if t.get("origin") == "the recipe's own" and "artifact" in t)
    timed = {f"#{t['number']}": t for t in [hand, *result["front"]]}
    io = load_artifact(Path(hand["artifact"]["path"]).parent).io
    feeds = with_modalities(io, next(iter(load_split(recipe.data.name, "test").batches(1)))[0], io.modalities)
    calls = {}
    for name, t in timed.items():
        runner = load_runner(load_artifact(Path(t["artifact"]["path"]).parent), threads=args.threads)
        calls[name] = (lambda r: lambda: r.run(feeds))(runner)
    seconds = interleaved(calls, args.rounds, args.block)
    rows = [{"trial": n, "origin": t.get("origin") or ("front" if n != f"#{hand['number']}" else ""),
             "params": t["params"], "val_drop": t["values"]["val_drop"], "test_drop": t["test_drop"],
             "p50_ms": round(float(np.median(seconds[n])) * 1e3, 4), "size_mb": t["values"]["size_mb"],
             "macs": t["macs"]} for n, t in timed.items()]  # fmt: skip
    mine = rows[0]
    better = [r for r in rows[1:] if r["trial"] != mine["trial"] and r["p50_ms"] < mine["p50_ms"]
              and r["test_drop"] <= mine["test_drop"]]  # fmt: skip
    statuses: dict[str, int] = {}
    for t in trials.values():
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    summary = {"date": time.strftime("%Y-%m-%d"), "profile": result["profile"], "budget_s": budget,
               "seconds": result["seconds"], "trials": len(trials), "statuses": statuses,
               "latency_source": result["latency_source"], "rows": rows,
               "beats_the_recipe": [r["trial"] for r in better]}  # fmt: skip
    counts = ", ".join(f"{v} {k}" for k, v in statuses.items())
    lines = [
        f"### Search on {key} ({summary['date']}, {result['profile']}, latency {result['latency_source']})", "",
        f"`edgekit search --recipe {args.recipe.relative_to(ROOT)} --time-budget {args.search}`: {len(trials)} "
        f"trials in {result['seconds'] / 60:.1f} min ({counts}). Every row below was timed again side by side in "
        f"one run (interleaved blocks, batch 1, {args.threads} threads); drops are against the teacher.", "",
        "| trial | what | val drop | test drop | p50 ms | MB | MACs | configuration |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        config = " ".join(f"{k.removeprefix('prune.')}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['trial']} | {r['origin'] or 'front'} | {r['val_drop']:+.2f} | {r['test_drop']:+.2f} | "
                     f"{r['p50_ms']:.3f} | {r['size_mb']:.2f} | {r['macs']:,} | {config} |")  # fmt: skip
    verdict = (f"**Yes**: {', '.join(summary['beats_the_recipe'])} beat the hand-written recipe ({mine['trial']})."
               if better else f"**No**: no point of the front beats the hand-written recipe ({mine['trial']}) on "
               "both p50 and test drop.")  # fmt: skip
    lines += ["", verdict]
    save_results(args.out.with_suffix(".json"), "searches", key, summary)
    update_doc(args.out.with_suffix(".md"), "\n".join(lines), tag="search", key=key)
    print(f"bench: search block of host '{key}' written; {verdict}", file=sys.stderr)
    return 0


def ddp_bench(args: argparse.Namespace, key: str) -> int:
    """`--ddp SEEDS`: distillation in one process against two under torchrun (gloo, one thread each), the same
    recipe and global batch, SEEDS seeds each: the test accuracy of every run (the run-to-run spread of each) and
    the seconds per epoch, side by side in one run. A small attention-fusion teacher trained on AV-digits is
    pruned and recovers on a 384-sample slice of its train split, as in tests/test_distributed.py."""
    import shutil
    import subprocess

    import yaml

    from edgekit.data import resolve_data
    from edgekit.training import TrainConfig

    work = args.work / "ddp"
    work.mkdir(parents=True, exist_ok=True)
    source, data, teacher = Path(resolve_data(args.data)), work / "data", work / "teacher"
    if not (teacher / "edgekit-model.yaml").is_file():
        data.mkdir(exist_ok=True)
        shutil.copy(source / "meta.json", data / "meta.json")
        for split, n in {"train": 384, "val": 200, "test": 200}.items():
            with np.load(source / f"{split}.npz", allow_pickle=False) as z:
                np.savez(data / f"{split}.npz", **{k: z[k][:n] for k in z.files})
        api.train("attention", "small", args.data, teacher, TrainConfig(epochs=5, lr=1e-2, modality_dropout=0.25))
    runs: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 processes (torchrun, gloo)": []}
    for seed in range(args.ddp):
        for name, nproc in zip(runs, (1, 2), strict=True):
            body = {"model": str(teacher), "data": {"name": str(data)}, "seed": seed, "targets": ["x86"],
                    "budgets": {"max_drop": 100.0}, "stages": [
                        {"kind": "prune", "branch_ratios": {"text": 0.5, "fusion": 0.5}, "head_ratio": 0.5},
                        {"kind": "distill", "student": "pruned", "epochs": 4, "batch_size": 64}]}  # fmt: skip
            out = work / f"seed{seed}-nproc{nproc}"
            (work / "r.yaml").write_text(yaml.safe_dump(body))
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "edgekit", "compress", "--recipe", str(work / "r.yaml"), "--out", str(out),
                   "--nproc", str(nproc), "--json"]  # fmt: skip
            report = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            distill = report["stages"][1]
            runs[name].append({"seed": seed, "test_accuracy": distill["accuracy"],
                               "s_per_epoch": round(distill["seconds"] / distill["epochs_run"], 2)})  # fmt: skip
            print(f"bench: {name} seed {seed}: {runs[name][-1]}", file=sys.stderr)
    summary = {"date": time.strftime("%Y-%m-%d"), "seeds": args.ddp, "runs": runs,
               "accuracy": {k: [round(float(np.mean([r["test_accuracy"] for r in v])), 4),
                                round(float(np.std([r["test_accuracy"] for r in v])), 4)] for k, v in runs.items()},
               "s_per_epoch": {k: round(float(np.median([r["s_per_epoch"] for r in v])), 2)
                               for k, v in runs.items()}}  # fmt: skip
    one, two = runs
    lines = [f"### One process against two under torchrun on {key} ({summary['date']})", "",
             f"Distillation of a pruned small attention-fusion teacher on a 384-sample AV-digits slice, 4 epochs, "
             f"global batch 64, {args.ddp} seeds each, run in turn; test split slice of 200.", "",
             "| run | test accuracy per seed | mean ± std | s per epoch (median) |", "|---|---|---|---|"]  # fmt: skip
    for name, rows in runs.items():
        accs = ", ".join(f"{r['test_accuracy']:.3f}" for r in rows)
        mean, std = summary["accuracy"][name]
        lines.append(f"| {name} | {accs} | {mean:.3f} ± {std:.3f} | {summary['s_per_epoch'][name]:.1f} |")
    ratio = summary["s_per_epoch"][two] / summary["s_per_epoch"][one]
    lines += ["", f"Two processes take {ratio:.2f} times the time per epoch of one on this host's CPUs."]
    save_results(args.out.with_suffix(".json"), "distributed", key, summary)
    update_doc(args.out.with_suffix(".md"), "\n".join(lines), tag="ddp", key=key)
    print(f"bench: ddp block of host '{key}' written", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model package (default: the AV-digits reference teacher)")
    p.add_argument("--data", default="avdigits", help="dataset name or directory")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "avdigits-x86.yaml", help="the full recipe")
    p.add_argument("--ptq-recipe", type=Path, default=ROOT / "recipes" / "ptq-only.yaml", help="accuracy-aware PTQ")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench", help="artifacts; compress runs resume here")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="writes OUT.md and OUT.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--profile",
        help="the profile of this machine, for the roofline times (default: the x86 profile this host's CPU satisfies)",
    )
    p.add_argument("--calib-samples", type=int, default=300)
    p.add_argument("--test-samples", type=int, default=0, help="0: the whole test split")
    p.add_argument("--val-samples", type=int, default=0, help="for nncf's accuracy control; 0: the whole split")
    p.add_argument("--max-metric-drop", metavar="METRIC=LIMIT",
                   help="gate this metric of the model's task in its own unit (default: 1.0 point of accuracy, mAP or "
                   "recall@1); the recipes' budgets gate compress")  # fmt: skip
    p.add_argument("--rounds", type=int, default=10, help="interleaved blocks per row and repeat")
    p.add_argument("--block", type=float, default=0.25, help="seconds per block")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fidelity-seconds", type=int, default=3, help="per tool, artifact and round, vs benchmark_app")
    p.add_argument("--search-recipe", type=Path, default=ROOT / "recipes" / "avdigits-x86-search.yaml",
                   help="the recipe (stages, budgets, search space) of the bench's time-boxed search")  # fmt: skip
    p.add_argument("--search-minutes", type=float, default=SEARCH_MINUTES,
                   help="the bench's search time box; 0: no searched row")  # fmt: skip
    p.add_argument("--search", metavar="MINUTES", help="instead: `edgekit search` for this host vs --recipe, e.g. 30m")
    p.add_argument("--ddp", type=int, metavar="SEEDS", help="instead: distillation in 1 vs 2 processes, SEEDS seeds")
    args = p.parse_args(argv)
    if args.profile is None:
        args.profile, why = host_profile("x86")
        if args.profile is None:
            args.profile, why = "x86-avx512-vnni", f"{why}; its roofline times are only a reference here"
        print(f"bench: profile {args.profile} ({why})", file=sys.stderr)
    host = host_info()
    key = host_key(host)
    if args.search:
        return search_bench(args, key)
    if args.ddp:
        return ddp_bench(args, key)
    results = load_results(args.out.with_suffix(".json"))  # before the run: a bad file fails now, not in 10 min
    legacy = next(iter(results)) if len(results) == 1 else None  # the host of a single block from before per-host

    start = time.perf_counter()
    teacher = args.model or api.reference_teacher()
    loaded = load_model(teacher)
    task, gate = loaded.task, bench_gate(loaded.task, args.max_metric_drop)
    io = loaded.io
    test = load_split(args.data, "test")
    test = test.head(args.test_samples) if args.test_samples else test
    size = mb(teacher / "model.safetensors")
    note = "the model package's safetensors size"
    rows = [Row(f"torch eager FP32 (teacher){', 1 thread' if t == 1 and args.threads != 1 else ''}", "baseline",
                "torch", "fp32", EagerRunner(loaded.model, io, t), size, None, note)
            for t in dict.fromkeys((args.threads, 1))]  # fmt: skip
    rows += export_rows(args, teacher, args.work)
    fp32_onnx = load_artifact(args.work / "export-onnx-int8" / "onnx-fp32").path
    rows += peer_rows(args, io, fp32_onnx, args.work / "peers", task, gate)
    ek_rows, reports = compress_rows(args, teacher, args.work)
    searched, found = searched_rows(args, args.work, key)
    rows += ek_rows + searched
    rooflines(rows, args, io)
    measure_scores(rows, io, test, task, gate.metric)
    measure_latency(rows, io, test, args.rounds, args.block, args.repeats)
    base = rows[0]
    eagers = [r for r in rows if r.group == "baseline"]
    eager = {b: min(eagers, key=lambda r, b=b: p50(r, b)) for b in BATCHES}  # torch eager at its faster count
    table = [row_dict(r, base, gate, eager) for r in rows]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "host": host,
        "settings": {
            "threads": args.threads,
            "profile": args.profile,
            "rounds": args.rounds,
            "block_s": args.block,
            "repeats": args.repeats,
            "fidelity_s": args.fidelity_seconds,
            "test_samples": len(test),
            "calib_samples": args.calib_samples,
            "model": str(teacher),
            "recipe": str(args.recipe),
            "ptq_recipe": str(args.ptq_recipe),
        },
        "task": task.name,
        "metric": gate.metric,
        "unit": gate.unit,
        "rows": table,
        "targets": targets(table, reports, gate),
        "stability": stability(rows, args.repeats),
        "compress": {k: {x: v.get(x) for x in ("baseline", "stages", "verdict", "error")} for k, v in reports.items()},
        "search": found,
        "seconds": round(time.perf_counter() - start, 1),
    }
    result["fidelity"] = fidelity(rows, io, args.threads, args.fidelity_seconds)
    full = [r for r in rows if r.name.startswith("EdgeKit distill + prune + INT8") and r.artifact]
    for row in sorted(full, key=lambda r: p50(r, 1))[
        :1
    ]:  # where the time of EdgeKit's best artifact goes, for the diagnosis of a missed target
        feeds = with_modalities(io, next(iter(test.batches(1)))[0], io.modalities)
        result["ops_b1"] = {"row": row.name, **(op_breakdown(row.artifact, feeds, runs=50, threads=args.threads) or {})}
    save_results(args.out.with_suffix(".json"), "hosts", key, result)
    update_doc(args.out.with_suffix(".md"), markdown(result), key=key, legacy_key=legacy)
    print(
        f"bench: wrote the results of host '{key}' to {args.out.with_suffix('.md')} and .json in "
        f"{result['seconds']:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
