"""Validation of artifacts against a hardware profile: accuracy in the artifact's own runtime on the test
split, with 95% intervals, per modality subset, on this CPU, and against the accuracy recorded where it was built
(INT8 kernels differ between CPUs); latency measured on the profile's device (here, or from an `edgekit profile`
JSON run there), else measured on another host (a proxy) or estimated, each labelled so; size and peak RAM.

Each budget's check is `pass`, `fail`, `unverified` (only the device can decide: a proxy measurement, or an
estimate whose calibration interval straddles the budget) or `open` (no value can be had here). A row passes only
when nothing failed and nothing is unverified.

Latency is measured in a child `edgekit profile` process, one per artifact, so that its peak RAM is the
artifact's own and not that of the artifacts validated before it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, load_artifact, sha256_file
from .data import DataLike, Splits
from .data.adapter import subset_names
from .errors import EdgeKitError, UsageError
from .evaluation import EvalReport, against, cached_evaluate, evaluate, evaluate_elsewhere, torch_predict
from .formats import accuracy_runner, get_format
from .hardware import Budgets, HardwareProfile, resolve_profile
from .hardware.cpu import int8_saturates, missing_vnni
from .hardware.estimator import estimate, graph_costs
from .io import IOSpec
from .loading import MANIFEST, LoadedModel, load_model, read_manifest
from .models import FACTORY as ZOO_FACTORY
from .profiling.fleet import Fleet, profile_fleet
from .profiling.host import host_info
from .profiling.local import Settings
from .profiling.remote import Remote, build_in, device_outputs, device_session, measure
from .profiling.source import latency_source
from .profiling.trtexec import TRTEXEC_HINT, from_trtexec, is_trtexec
from .records import CompressReport, Validation, ValidationRow, load_record, write_record
from .runtimes import predict_fn
from .stages.prune import FACTORY as PRUNED_FACTORY
from .stats import budget_note, paired_drop, paired_interval, wilson
from .tasks import CLASSIFICATION, PER_QUERY, Gate, Task, agreement, gate_for, get_task
from .timing import DURATION_S

Log = Callable[[str], None]


def saturating(art: Artifact) -> bool:
    """An INT8 artifact with full 8-bit weights for a runtime whose x86 kernels saturate without VNNI."""
    q = art.meta.get("quantization") or {}
    return art.precision == "int8" and get_format(art.format).saturates_without_vnni and q.get("weight_bits") == 8


def check_int8_fit(art: Artifact, profile: HardwareProfile) -> None:
    """Refuse an artifact whose INT8 weights were sized for VNNI when the profile's CPU has none."""
    if saturating(art) and int8_saturates(profile.cpu_isa):
        built = art.meta.get("profile", "a CPU with VNNI")
        raise UsageError(f"{art.format}/int8 was built for {built}: full 8-bit weights, which saturate on "
                         f"{profile.name}'s CPU (no {missing_vnni(profile.cpu_isa)})",
                         f"export for it: edgekit export --target {profile.name}")  # fmt: skip


def cpu_shift(art: Artifact, accuracy: float | None, data: str, split: str, isa: Sequence[str]) -> dict[str, Any]:
    """The accuracy here against the accuracy recorded where the artifact was built, and why they may differ."""
    rec = art.meta.get("accuracy")
    if accuracy is None or not isinstance(rec, dict) or (rec.get("data"), rec.get("split")) != (data, split):
        return {}
    out: dict[str, Any] = {"build_accuracy": rec["value"], "built_on": rec.get("cpu"),
                           "accuracy_shift": round(100 * (rec["value"] - accuracy), 2)}  # fmt: skip
    if saturating(art) and int8_saturates(isa) and not int8_saturates(rec.get("isa", [])):
        out["cpu_note"] = (f"this CPU lacks {missing_vnni(isa)}: {art.format}'s INT8 kernels saturate with full 8-bit "
                           "weights; export for x86-avx2 (7-bit weights)")  # fmt: skip
    return out


def read_measurements(
    paths: Sequence[Path | Mapping[str, Any]], artifacts: Sequence[Path] = (), facts: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """`edgekit profile --json` results by the sha256 of the artifact file they measured: files, or results in
    hand (a fleet's), whose "file" says where they came from. trtexec's own --exportTimes (and --exportProfile)
    files are of the one artifact validated, measured on the device `facts` describe."""
    found, trtexec = {}, [Path(p) for p in paths if not isinstance(p, Mapping) and is_trtexec(Path(p))]
    if trtexec:
        if len(artifacts) != 1:
            raise UsageError(
                f"trtexec files {', '.join(map(str, trtexec))} name no artifact, and {len(artifacts)} are validated",
                "validate one artifact with its trtexec files",
            )
        art = load_artifact(Path(artifacts[0]), verify=False)
        m = from_trtexec(trtexec, art, facts)
        found[m["artifact"]["sha256"]] = m
    for path in paths:
        if not isinstance(path, Mapping) and Path(path) in trtexec:
            continue
        try:
            m = {"file": "given", **path} if isinstance(path, Mapping) else {**json.loads(Path(path).read_text()),
                                                                            "file": str(path)}  # fmt: skip
            _ = m["results"][0]["latency_ms"]["p50"]
            found[m["artifact"]["sha256"]] = m
        except (OSError, ValueError, RecursionError, KeyError, IndexError, TypeError) as e:  # ValueError: JSON syntax
            raise UsageError(f"{path} is not the JSON of `edgekit profile --json` ({type(e).__name__}: {e})") from e
    return found


def measure_here(art: Artifact, threads: int, duration: float) -> dict[str, Any]:
    # -P: a directory named edgekit/ in the working directory must not shadow the installed package
    cmd = [sys.executable, "-P", "-m", "edgekit", "profile", str(art.directory), "--batch", "1", "--threads",
           str(threads), "--duration", str(duration), "--json"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise EdgeKitError((p.stderr.strip().splitlines() or [f"edgekit profile exited {p.returncode}"])[-1])
    return json.loads(p.stdout)


def device_facts(measured: dict[str, Any]) -> dict[str, Any]:
    """The identity facts of the host a measurement ran on. A file from before they were recorded has CPU facts
    only, which recognise no Jetson, Raspberry Pi or phone: measure there again."""
    host = measured["host"] or {}
    return host.get("identity") or {"cpu_model": host.get("cpu"), "cpus": host.get("usable_cores"),
                                    "isa": host.get("isa", [])}  # fmt: skip


def latency(art: Artifact, profile: HardwareProfile, measured: dict[str, Any] | None) -> dict[str, Any]:
    """p50/p95 at batch 1 and model RAM: `measured` on the profile's device, `proxy` when measured on another host,
    else the roofline estimate; the estimate (with its calibration interval) comes along unless measured."""
    row: dict[str, Any] = {"p50_ms": None, "p95_ms": None, "latency_source": None, "peak_ram_mb": None}
    if measured:
        r = next((x for x in measured["results"] if x["batch"] == 1), measured["results"][0])  # budgets are at batch 1
        why_not = profile.not_the_device(device_facts(measured))
        if why_not and not measured["host"]:
            why_not = f"no device facts came with it ({TRTEXEC_HINT})"
        row = {"p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "batch": r["batch"],
               "latency_source": "proxy" if why_not else "measured",
               "peak_ram_mb": None if r["peak_rss_mb"] is None or measured["rss_before_load_mb"] is None else
               round(r["peak_rss_mb"] - measured["rss_before_load_mb"], 1),
               "measured_on": (measured["host"] or {}).get("cpu", "?"), "measurements": measured.get("file", "here"),
               "ops": measured.get("ops"), "energy": r.get("energy"),
               "device_side": (measured.get("remote") or {}).get("device_side", measured.get("device_side"))
               }  # fmt: skip
        if not why_not:
            return row
        row["not_the_device"] = why_not
    costs = art.meta.get("costs") or (graph_costs(art.path, art.io) if art.path.suffix == ".onnx" else None)
    if costs:
        row["estimate"] = est = estimate(costs, profile, art.precision)
        if row["latency_source"] is None:
            row.update(p50_ms=est["estimate_ms"], p95_ms=est["estimate_ms"], latency_source="estimated", batch=1)
    return row


def accuracy_fields(art_eval: EvalReport, base: EvalReport | None, io: IOSpec, gate: Gate, task: Task) -> dict:
    """The gated metric (accuracy with its 95% interval) and, against the baseline on the same samples, how much
    worse it got, in the gate's unit, with its paired interval; the same per modality subset (those whose outputs
    were not finite are marked). Keys are the metric's: `accuracy`, `accuracy_drop`; `mae`, `mae_drop`."""
    n, full, metric = art_eval.samples, "+".join(io.modalities), gate.metric

    def one(name: str) -> dict[str, Any]:
        value = art_eval.subsets[name][metric]
        out: dict[str, Any] = {metric: value}
        if metric == "accuracy" and name in art_eval.correct:
            out["accuracy_ci"] = wilson(int(art_eval.correct[name].sum()), n)
        if base is not None and name in base.subsets:
            out["drop"] = gate.worsening(base.subsets[name][metric], value)
            if gate.scale == 100 and metric == "accuracy":
                out["drop_ci"] = paired_drop(base.correct[name], art_eval.correct[name])
            else:
                out["drop_ci"] = metric_interval(base.outputs[name], art_eval.outputs[name], art_eval.labels, gate,
                                                 task)  # fmt: skip
        return {**out, "nonfinite": True} if name in art_eval.nonfinite else out

    main = one(full)
    row = {"metric": metric, metric: main[metric], "samples": n, f"{metric}_drop": main.get("drop"),
           "drop_ci": main.get("drop_ci"), "scores": art_eval.overall.as_dict()}  # fmt: skip
    if "accuracy_ci" in main:
        row["accuracy_ci"] = main["accuracy_ci"]
    row["subsets"] = {name: one(name) for name in art_eval.subsets if name != full}
    return row


def metric_interval(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, gate: Gate,
                    task: Task) -> tuple[float, float]:  # fmt: skip
    """The paired bootstrap interval of how much worse `candidate` is on the gate's metric: over the samples, or
    over the queries for a retrieval metric (recall@k), each ranked against the whole split."""
    assert labels is not None
    if per_query := PER_QUERY.get(gate.metric):
        ref, cand = per_query(reference, labels).astype(float), per_query(candidate, labels).astype(float)
        return paired_interval(ref, cand, np.zeros(len(ref)), lambda hits, _: float(hits.mean()), gate.worsening)
    return paired_interval(reference, candidate, labels, task.metric(gate.metric), gate.worsening)


def validation_gate(task: Task, budgets: Budgets) -> Gate:
    """The accuracy budget's gate: `max_metric_drop`, else `max_accuracy_drop` points of accuracy (mAP)."""
    return gate_for(task, None, budgets.max_metric_drop, default_points=budgets.max_accuracy_drop)


def _check(budget: str, limit: Any, value: float | None, status: str, why: str | None = None) -> dict[str, Any]:
    c = {"budget": budget, "limit": limit, "value": value, "status": status,
         "ok": {"pass": True, "fail": False}.get(status)}  # fmt: skip
    return {**c, "why": why} if why else c


def latency_check(row: dict[str, Any], limit: float) -> dict[str, Any]:
    """Measured on the device: its p95 decides. Otherwise the estimate's interval: pass only when the pessimistic
    end fits, fail when even the optimistic end does not, unverified in between or without calibration. A proxy
    measurement never decides, but where it contradicts the estimate's decision, that decision is unverified."""
    source, est = row["latency_source"], row.get("estimate")
    if source == "measured":
        return _check("latency_p95_ms", limit, row["p95_ms"], "pass" if row["p95_ms"] <= limit else "fail")
    proxy = (f"measured {row['p95_ms']:.3f} ms on {row['measured_on']}, not the device ({row['not_the_device']}); "
             if source == "proxy" else "")  # fmt: skip
    if est is None or est["interval_ms"] is None:
        why = "no estimate" if est is None else f"no {est['profile']} calibration points"
        return _check("latency_p95_ms", limit, None, "unverified", f"{proxy}{why}")
    low, high = est["interval_ms"]
    cal = est["calibration"]
    why = (f"{proxy}estimated {est['estimate_ms']:.3f} ms, {low:.3f}-{high:.3f} ms by the estimator's calibration "
           f"({cal['low']}-{cal['high']}x on {cal['points']} {cal['kind']} {cal['precision']} points)")  # fmt: skip
    status = "pass" if high <= limit else "fail" if low > limit else "unverified"
    if proxy and status != "unverified" and (row["p95_ms"] <= limit) != (status == "pass"):
        status, why = "unverified", f"{why}; the proxy contradicts the estimate"
    return _check("latency_p95_ms", limit, high, status, why)


def subset_check(row: dict[str, Any], limit: float | dict[str, float]) -> dict[str, Any]:
    """The worst modality-subset drop against `max_subset_drop` (one limit for all, or per subset); open without
    per-subset drops (no baseline or no runtime here)."""
    subsets = row.get("subsets") or {}
    limits = limit if isinstance(limit, dict) else dict.fromkeys(subsets, limit)
    drops = {name: subsets.get(name, {}).get("drop") for name in limits}
    if not limits or any(d is None for d in drops.values()):
        return _check("max_subset_drop", limit, None, "open")
    worst = max(limits, key=lambda name: drops[name] - limits[name])
    status = "pass" if drops[worst] <= limits[worst] else "fail"
    return _check("max_subset_drop", limits[worst], drops[worst], status, f"{worst} only")


def accuracy_source(runtime: str, not_here: str | None, cpu: str) -> str:
    """What measured the accuracy. The artifact's runtime on a host that is not the device is a proxy, as its
    latency is: its kernels are this CPU's (XNNPACK's or onnxruntime's INT8 kernels on x86 are not a phone's or a
    Pi's), so the device may compute other logits. A proxy's drop gates all the same, and says what it is."""
    if runtime != "its runtime" or not_here is None:
        return runtime
    return f"proxy: its runtime on this host ({cpu}), not the device ({not_here}); the device's kernels may differ"


def checks(row: dict[str, Any], budgets: Budgets, subsets: bool, gate: Gate) -> list[dict[str, Any]]:
    """One check per budget that is set. A value that cannot be had here leaves its check `open` (accuracy
    without a baseline or a runtime) or `unverified` (latency or RAM only the device can give): reported, never
    passed. The accuracy budget (`gate`: accuracy points, or another metric in its unit) also bounds the loss
    against the build host's accuracy. `subsets`: whether the model has more than one modality."""
    out = []
    if gate.limit is not None:
        drop = row.get(f"{gate.metric}_drop")
        name = "max_accuracy_drop" if gate.scale == 100 else "max_metric_drop"
        c = _check(name, gate.limit, drop, "open" if drop is None else "pass" if gate.fits(drop) else "fail")
        c["metric"] = gate.metric
        if row.get("accuracy_source", "").startswith("proxy"):
            c["why"] = row["accuracy_source"]  # a proxy's drop gates too, and says it is one
        if drop is not None and (note := budget_note(drop, row["drop_ci"], gate.limit, row["samples"])):
            c["note"] = note
        out.append(c)
    elif budgets.max_accuracy_drop is not None:  # a profile's points mean nothing for a regression: never a pass
        out.append(_check("max_accuracy_drop", budgets.max_accuracy_drop, None, "open",
                          f"points of accuracy do not measure {gate.metric}: set max_metric_drop "
                          f"(--max-metric-drop {gate.metric}=LIMIT)"))  # fmt: skip
    if budgets.latency_p95_ms is not None:
        out.append(latency_check(row, budgets.latency_p95_ms))
    if (limit := budgets.max_size_mb) is not None:
        out.append(_check("max_size_mb", limit, row.get("size_mb"), "pass" if row["size_mb"] <= limit else "fail"))
    if (limit := budgets.max_peak_ram_mb) is not None:
        ram, source = row.get("peak_ram_mb"), row["latency_source"]
        if source == "measured" and ram is not None:
            out.append(_check("max_peak_ram_mb", limit, ram, "pass" if ram <= limit else "fail"))
        elif source == "measured":  # trtexec reports no memory
            out.append(_check("max_peak_ram_mb", limit, ram, "unverified", "the measurement has no peak RSS"))
        else:
            why = "measured on another host" if source == "proxy" else "no measurement on the device"
            out.append(_check("max_peak_ram_mb", limit, ram, "unverified", why))
    if (limit := budgets.max_energy_mj) is not None:
        out.append(energy_check(row, limit))
    if budgets.max_subset_drop is not None and subsets:
        out.append(subset_check(row, budgets.max_subset_drop))
    if "accuracy_shift" in row and gate.metric == "accuracy" and budgets.max_accuracy_drop is not None:
        shift, limit = row["accuracy_shift"], budgets.max_accuracy_drop
        why = f"{shift:.2f} points below its accuracy on the build host ({row['built_on']})"
        out.append(_check("max_accuracy_shift", limit, shift, "pass" if shift <= limit else "fail",
                          f"{why}; {row['cpu_note']}" if "cpu_note" in row else why))  # fmt: skip
    return out


def energy_check(row: dict[str, Any], limit: float) -> dict[str, Any]:
    """Board energy per inference, measured on the device during the timed batch-1 calls (tegrastats); without it
    the budget is unverified, and says why (no tegrastats, or not measured on the device)."""
    energy = row.get("energy") or {}
    mj = energy.get("energy_mj")
    if row["latency_source"] == "measured" and mj is not None:
        how = f"{energy['mean_power_mw']:.0f} mW mean {energy['rail']} over {energy['samples']} samples"
        return _check("max_energy_mj", limit, mj, "pass" if mj <= limit else "fail", how)
    if row["latency_source"] != "measured":
        why = energy.get("why") or "not measured on the device"
    else:
        why = energy.get("why") or "the measurement has no energy: measure with the agent (edgekit validate --remote)"
    return _check("max_energy_mj", limit, None, "unverified", why)


def row_status(checks: Sequence[dict[str, Any]]) -> str:
    """fail when a check fails; else unverified when a gated budget was not decided here (unverified or open)."""
    statuses = {c["status"] for c in checks}
    return "fail" if "fail" in statuses else "unverified" if statuses & {"unverified", "open"} else "pass"


def check_measurements(measured: dict[str, dict[str, Any]], artifacts: Sequence[Path]) -> None:
    """Before any work: every measurements file must be of one of the artifacts (by the hash of its file)."""
    shas = set()
    for path in artifacts:
        try:
            shas.add(sha256_file(load_artifact(Path(path), verify=False).path))
        except (EdgeKitError, OSError):
            pass  # reported on the artifact's own row
    stray = set(measured) - shas
    if stray:
        files = ", ".join(measured[s]["file"] for s in stray)
        raise UsageError(f"measurements {files} are of another artifact (sha256 {sorted(stray)[0][:12]}...)",
                         "pass the JSON of `edgekit profile` run on these artifacts")  # fmt: skip


def recorded_source(artifacts: Sequence[Path], log: Log = lambda _: None) -> Path | None:
    """The model package every artifact was exported from, when their manifests agree and it still exists.

    Only a package built from one of EdgeKit's own factories: loading a package runs its factory, and the path
    comes from a manifest, which is data anyone can edit. A model of the user's own takes --baseline."""
    try:
        sources = {load_artifact(Path(a), verify=False).meta.get("source") for a in artifacts}
        source = sources.pop() if len(sources) == 1 else None
        if not isinstance(source, str) or not (Path(source) / MANIFEST).is_file():
            return None
        factory = read_manifest(Path(source)).factory
    except (EdgeKitError, TypeError):  # TypeError: an unhashable "source"
        return None
    if factory not in (ZOO_FACTORY, PRUNED_FACTORY):
        log(f"no accuracy baseline: {source} runs its own factory ({factory}); pass --baseline {source} to use it")
        return None
    return Path(source)


def recorded_task(artifacts: Sequence[Path]) -> Task:
    """The task the artifacts' manifests record (export and compress write it; classification for artifacts from
    before they did): an embedding's vectors are then scored by recall@k, never by an argmax. A package's own
    metric is not recorded (a manifest never names code to run): pass --baseline to gate by it."""
    names = set()
    for path in artifacts:
        try:
            names.add(str(load_artifact(Path(path), verify=False).meta.get("task", "classification")))
        except EdgeKitError:
            continue  # reported on the artifact's own row
    if len(names) > 1:
        raise UsageError(f"the artifacts record different tasks ({', '.join(sorted(names))})",
                         "validate one task's artifacts at a time")  # fmt: skip
    return get_task(names.pop()) if names else CLASSIFICATION


@dataclass(frozen=True)
class Options:
    data: DataLike = "avdigits"  # a spec, or splits in memory
    split: str = "test"
    threads: int | None = None  # default: the profile's
    duration: float = DURATION_S  # seconds of timed calls per measured artifact
    estimate_only: bool = False
    remote: Remote | None = None  # measure latency, energy and accuracy on this device over ssh
    device_facts: Mapping[str, Any] | None = None  # the device trtexec measurement files came from
    against_teacher: bool = False  # gate agreement with the baseline's outputs, not labels (unlabelled data too)


def validate(
    artifacts: Sequence[Path],
    target: str,
    baseline: Path | LoadedModel | None = None,
    measurements: Sequence[Path | Mapping[str, Any]] = (),
    budgets: dict[str, Any] | None = None,
    options: Options = Options(),
    log: Log = lambda _: None,
) -> Validation:
    """Prove artifacts against a profile's budgets on `options.data`'s split. `baseline`: the float model the
    drops are against (a package, or a model in memory); default: the package the artifacts were exported from."""
    if not artifacts:
        raise UsageError("no artifacts to validate", "pass one or more artifact directories")
    profile, resolution = resolve_profile(target)
    limits = profile.budgets.model_copy(update={k: v for k, v in (budgets or {}).items() if v is not None})
    measured = read_measurements(measurements, artifacts, options.device_facts)
    host = host_info()
    not_here = profile.not_the_device(host["identity"])
    for path in artifacts:  # a subset name no artifact's model has is a usage error, found before any work
        try:
            io = load_artifact(Path(path), verify=False).io
        except EdgeKitError:
            continue  # reported on the artifact's own row
        subset_names(limits.max_subset_drop, io)
    data = Splits.of(options.data)
    where_data = f"{data.name}/{options.split}"
    test = data(options.split)
    base: EvalReport | None = None
    task = recorded_task(artifacts)  # the baseline package's, when there is one
    baseline = baseline or recorded_source(artifacts, log)
    if (options.against_teacher or not test.labelled) and baseline is None:
        raise UsageError(f"gating {where_data} against the float model needs that model",
                         "pass --baseline PACKAGE (the package the artifacts were exported from)")  # fmt: skip
    if baseline is not None:
        loaded = baseline if isinstance(baseline, LoadedModel) else load_model(baseline)
        baseline_name = "in-memory" if isinstance(baseline, LoadedModel) else str(baseline)
        task = loaded.task
        if options.against_teacher or not test.labelled:
            log(f"gating agreement with {baseline_name} on {where_data}, not labels")
            test, task = against(torch_predict(loaded.model), loaded.io, test), agreement(task)
        gates_accuracy = task is CLASSIFICATION and not limits.max_metric_drop  # what the cache holds
        split_sha = data.hashes({options.split}).get(options.split) if gates_accuracy else None
        base = cached_evaluate(torch_predict(loaded.model), loaded.io, test, split_sha, task)
    gate = validation_gate(task, limits)
    check_measurements(measured, artifacts)
    rows = []
    for path in artifacts:
        row: dict[str, Any] = {"artifact": str(path)}
        try:
            art = load_artifact(Path(path))
            deployed = {e.format for e in profile.exports}
            if art.format not in deployed:
                raise UsageError(f"{profile.name} deploys {', '.join(sorted(deployed))}, not {art.format}",
                                 f"export for it: edgekit export --target {profile.name}")  # fmt: skip
            check_int8_fit(art, profile)
            sha = sha256_file(art.path)
            row.update(format=art.format, precision=art.precision, size_mb=round(art.size_mb(), 3), sha256=sha)
            row.update({"metric": gate.metric, gate.metric: None})
            where = latency_source(profile, bool(get_format(art.format).runs_here), options.remote, options.threads,
                                   options.duration)  # fmt: skip
            threads = where.threads
            m = measured.get(sha)
            if options.remote is not None:
                log(f"{path}: latency, energy and accuracy on {options.remote.name} ({where_data})")
                m, art_eval, row["accuracy_source"] = on_device(art, profile, options, threads, test, task)
                row.update(accuracy_fields(art_eval, base, art.io, gate, task))
            elif measures := accuracy_runner(art, threads):
                runner, row["accuracy_source"] = measures[0], accuracy_source(measures[1], not_here, host["cpu"])
                log(f"{path}: accuracy on {where_data}, per modality subset "
                    f"({row['accuracy_source']})")  # fmt: skip
                art_eval = evaluate(predict_fn(runner), art.io, test, task=task)
                row.update(accuracy_fields(art_eval, base, art.io, gate, task))
            row.update(cpu_shift(art, row.get("accuracy"), data.name, options.split, host["isa"]))
            if "cpu_note" in row:
                log(f"{path}: {row['cpu_note']}")
            if m is None and options.remote is None and not options.estimate_only and where.runs:
                what = "" if where.source == "measured" else f", a proxy: this host is not the device ({not_here})"
                log(f"{path}: measuring latency here ({host['cpu']}, {threads} thread(s){what})")
                m = measure_here(art, threads, where.duration)
            row.update(latency(art, profile, m))
            row["checks"] = checks(row, limits, len(art.io.modalities) > 1, gate)
            row["status"] = row_status(row["checks"])
            row["unchecked"] = [c["budget"] for c in row["checks"] if c["status"] == "open"]
        except EdgeKitError as e:
            row.update(status="error", error=str(e))
        rows.append(ValidationRow.model_validate(row))
    gated = any(v is not None for v in limits.model_dump().values())
    statuses = {r.status for r in rows}
    return Validation.model_validate({
        "profile": profile.name,
        "resolution": resolution,
        "baseline": None if base is None else {
            "model": baseline_name, "task": task.name, "metric": gate.metric, gate.metric: base.overall[gate.metric],
            "samples": base.samples, "scores": base.overall.as_dict(),
            **({"accuracy_ci": wilson(round(base.overall.accuracy * base.samples), base.samples)}
               if gate.metric == "accuracy" else {}),
            "subsets": {k: v[gate.metric] for k, v in base.subsets.items()}},
        "gate": {"metric": gate.metric, "unit": gate.unit, "limit": gate.limit},
        "split": where_data,
        "budgets": limits.model_dump(),
        "gated": gated,
        "host": host,
        "the_device": not_here is None or options.remote is not None,  # where latency counts as `measured`
        **({"not_the_device": not_here} if not_here and options.remote is None else {}),
        **({"device": options.remote.name} if options.remote else {}),
        "rows": rows,
        "verdict": "fail" if statuses & {"fail", "error"} else "unverified" if "unverified" in statuses else "pass",
    })  # fmt: skip


def on_device(
    art: Artifact, profile: HardwareProfile, options: Options, threads: int, test: Any, task: Task = CLASSIFICATION
) -> tuple[dict[str, Any], EvalReport, str]:
    """On `options.remote`: check it is the profile's device, time the artifact (with energy where tegrastats
    exists), and run the test split's feeds through it there; scored here by the same evaluation code. A TensorRT
    bundle without an engine gets one built there first (`edgekit build --remote`)."""
    assert options.remote is not None
    with device_session(options.remote) as session:
        facts = session.agent(["facts"], "reading the device's facts")
        if why := profile.not_the_device(facts):
            raise EdgeKitError(f"{options.remote.name} is not {profile.name}'s device: {why}",
                               "validate against that device's own profile (--target), or match the profile's "
                               "identity to it (docs/hardware-profiles.md#identity)")  # fmt: skip
        built_there = get_format(art.format).device_build
        if built_there and not (art.directory / built_there).is_file():  # one command from bundle to verdict
            build_in(session, art.directory)
            art = load_artifact(art.directory)
        there = session.push(art.directory)
        m = measure(session, art.directory, there, Settings(duration=options.duration, threads=threads))
        runtime = ""

        def run_all(chunks: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
            nonlocal runtime
            outputs, runtime = device_outputs(session, there, chunks, threads)
            first = art.io.output_names[0]
            return [o[first] if first in o else next(iter(o.values())) for o in outputs]

        report = evaluate_elsewhere(run_all, art.io, test, task)
    m["file"] = f"{options.remote.name} ({m['remote']['device_side']})"
    return m, report, f"device: {runtime} on {options.remote.name}"


def attach(result: Validation, run_dir: Path) -> Path:
    """Record a validation in a compress run's report.json (replacing an earlier one for the same profile)."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no report.json", "pass a run directory `edgekit compress` wrote")
    report = load_record(path, CompressReport, "compress report")
    report.validation = [v for v in report.validation if v.profile != result.profile] + [result]
    write_record(path, report)
    return path


def validate_fleet(
    fleet: Fleet,
    artifacts: Sequence[Path],
    baseline: Path | None = None,
    budgets: dict[str, Any] | None = None,
    options: Options = Options(),
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Each fleet device measures the artifacts built for its profile (`profile_fleet`); each device's
    measurements are then validated against its own profile, accuracy measured here as `validate` does. Latency
    comes only from the device: an artifact the device failed to measure is an error row, never measured here."""
    settings = lambda d: Settings(duration=options.duration, threads=options.threads or d.hardware.threads)  # noqa: E731
    run = profile_fleet(fleet, artifacts, settings, log)
    for d in fleet.devices:
        rows = [r for r in run["rows"] if r["device"] == d.name and r["status"] == "ok"]
        if not rows:
            continue
        measured = [{**r.pop("result"), "file": f"{d.name} ({d.remote.name})"} for r in rows]
        try:
            result = validate([Path(r["artifact"]) for r in rows], d.profile, baseline, measured, budgets,
                              replace(options, estimate_only=True), log)  # fmt: skip
        except EdgeKitError as e:
            for r in rows:
                r.update(status="error", error=str(e))
            continue
        checked = {v.artifact: v.dump() for v in result.rows}
        for r in rows:
            r.update(checked[r["artifact"]])
        next(x for x in run["devices"] if x["device"] == d.name)["validation"] = result.model_dump(
            mode="json", exclude_unset=True, exclude={"rows"}
        )
    statuses = {r["status"] for r in run["rows"]}
    run["verdict"] = ("fail" if statuses & {"fail", "error", "no-device"} else
                      "unverified" if "unverified" in statuses else "pass")  # fmt: skip
    return run
