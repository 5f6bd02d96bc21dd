"""Validation of artifacts against a hardware profile: accuracy in the artifact's own runtime on the test
split, on this CPU, and against the accuracy recorded where it was built (INT8 kernels differ between CPUs);
latency (measured here when this host satisfies the profile, taken from an `edgekit profile` JSON run on the
device, or else estimated and labelled so); size and peak RAM; each gated by a budget.

Latency is measured in a child `edgekit profile` process, one per artifact, so that its peak RAM is the
artifact's own and not that of the artifacts validated before it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact, load_artifact, sha256_file
from .data import load_split
from .errors import EdgeKitError, UsageError
from .evaluation import evaluate, torch_predict
from .formats import accuracy_runner, get_format
from .fsutil import write_json
from .hardware import Budgets, HardwareProfile, resolve_profile
from .hardware.cpu import int8_saturates, missing_vnni
from .hardware.estimator import estimate, graph_costs
from .loading import MANIFEST, load_model, read_manifest
from .models import FACTORY as ZOO_FACTORY
from .profiling.host import host_info
from .runtimes import predict_fn
from .stages.prune import FACTORY as PRUNED_FACTORY

Log = Callable[[str], None]


def host_matches(profile: HardwareProfile, host: dict[str, Any]) -> bool:
    """Whether a measurement here stands for the profile's device: a CPU profile whose ISA this host has."""
    return profile.kind == "cpu" and bool(profile.cpu_isa) and set(profile.cpu_isa) <= set(host["isa"])


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


def cpu_shift(art: Artifact, accuracy: float | None, options: Options, isa: Sequence[str]) -> dict[str, Any]:
    """The accuracy here against the accuracy recorded where the artifact was built, and why they may differ."""
    rec = art.meta.get("accuracy")
    if (
        accuracy is None
        or not isinstance(rec, dict)
        or (rec.get("data"), rec.get("split")) != (options.data, options.split)
    ):
        return {}
    out: dict[str, Any] = {"build_accuracy": rec["value"], "built_on": rec.get("cpu"),
                           "accuracy_shift": round(100 * (rec["value"] - accuracy), 2)}  # fmt: skip
    if saturating(art) and int8_saturates(isa) and not int8_saturates(rec.get("isa", [])):
        out["cpu_note"] = (f"this CPU lacks {missing_vnni(isa)}: {art.format}'s INT8 kernels saturate with full 8-bit "
                           "weights; export for x86-avx2 (7-bit weights)")  # fmt: skip
    return out


def read_measurements(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """`edgekit profile --json` results by the sha256 of the artifact file they measured."""
    found = {}
    for path in paths:
        try:
            m = json.loads(Path(path).read_text())
            _ = m["results"][0]["latency_ms"]["p50"]
            found[m["artifact"]["sha256"]] = {**m, "file": str(path)}
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


def latency(art: Artifact, profile: HardwareProfile, measured: dict[str, Any] | None) -> dict[str, Any]:
    """p50/p95 at batch 1 and model RAM from a measurement, else the roofline estimate."""
    if measured:
        r = next((x for x in measured["results"] if x["batch"] == 1), measured["results"][0])  # budgets are at batch 1
        return {"p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "latency_source": "measured",
                "batch": r["batch"], "peak_ram_mb": round(r["peak_rss_mb"] - measured["rss_before_load_mb"], 1),
                "measured_on": measured["host"]["cpu"], "measurements": measured.get("file", "here"),
                "ops": measured.get("ops")}  # fmt: skip
    costs = art.meta.get("costs") or (graph_costs(art.path, art.io) if art.path.suffix == ".onnx" else None)
    if not costs:
        return {"p50_ms": None, "p95_ms": None, "latency_source": None, "peak_ram_mb": None}
    est = estimate(costs, profile, art.precision)
    return {"p50_ms": est["estimate_ms"], "p95_ms": est["estimate_ms"], "latency_source": "estimated", "batch": 1,
            "floor_ms": est["floor_ms"], "peak_ram_mb": None, "estimate": est}  # fmt: skip


def checks(row: dict[str, Any], budgets: Budgets) -> list[dict[str, Any]]:
    """One check per budget that is set. A value that cannot be had here (accuracy without a baseline or a
    runtime, latency without costs, RAM without a measurement) leaves its check open (`ok` None): reported,
    never passed silently. The accuracy budget also bounds the loss against the build host's accuracy."""
    pairs = [("max_accuracy_drop", "accuracy_drop"), ("latency_p95_ms", "p95_ms"), ("max_size_mb", "size_mb"),
             ("max_peak_ram_mb", "peak_ram_mb")]  # fmt: skip
    out = []
    for budget, key in pairs:
        limit = getattr(budgets, budget)
        if limit is not None:
            value = row.get(key)
            check = {"budget": budget, "limit": limit, "value": value, "ok": None if value is None else value <= limit}
            if key == "accuracy_drop" and row.get("accuracy_source", "").startswith("proxy"):
                check["why"] = row["accuracy_source"]  # a proxy's drop gates too, and says it is one
            out.append(check)
    if "accuracy_shift" in row and budgets.max_accuracy_drop is not None:
        shift, limit = row["accuracy_shift"], budgets.max_accuracy_drop
        why = f"{shift:.2f} points below its accuracy on the build host ({row['built_on']})"
        out.append({"budget": "max_accuracy_shift", "limit": limit, "value": shift, "ok": shift <= limit,
                    "why": f"{why}; {row['cpu_note']}" if "cpu_note" in row else why})  # fmt: skip
    return out


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


@dataclass(frozen=True)
class Options:
    data: str = "avdigits"
    split: str = "test"
    threads: int | None = None  # default: the profile's
    duration: float = 2.0  # seconds of timed calls per measured artifact
    estimate_only: bool = False


def validate(
    artifacts: Sequence[Path],
    target: str,
    baseline: Path | None = None,
    measurements: Sequence[Path] = (),
    budgets: dict[str, float | None] | None = None,
    options: Options = Options(),
    log: Log = lambda _: None,
) -> dict[str, Any]:
    if not artifacts:
        raise UsageError("no artifacts to validate", "pass one or more artifact directories")
    profile, resolution = resolve_profile(target)
    limits = profile.budgets.model_copy(update={k: v for k, v in (budgets or {}).items() if v is not None})
    measured = read_measurements(measurements)
    host = host_info()
    here = host_matches(profile, host) and not options.estimate_only
    test = load_split(options.data, options.split)
    base_acc = None
    baseline = baseline or recorded_source(artifacts, log)
    if baseline is not None:
        loaded = load_model(baseline)
        base_acc = evaluate(torch_predict(loaded.model), loaded.io, test, per_modality=False).overall.accuracy
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
            row["accuracy"] = None
            threads = options.threads or profile.threads
            if measures := accuracy_runner(art, threads):
                runner, row["accuracy_source"] = measures
                log(f"{path}: accuracy on {options.data}/{options.split} ({row['accuracy_source']})")
                row["accuracy"] = evaluate(predict_fn(runner), art.io, test, per_modality=False).overall.accuracy
            drop = None if row["accuracy"] is None or base_acc is None else 100 * (base_acc - row["accuracy"])
            row["accuracy_drop"] = None if drop is None else round(drop, 2)
            row.update(cpu_shift(art, row["accuracy"], options, host["isa"]))
            if "cpu_note" in row:
                log(f"{path}: {row['cpu_note']}")
            m = measured.get(sha)
            if m is None and here and get_format(art.format).runs_here:
                log(f"{path}: measuring latency here ({host['cpu']})")
                m = measure_here(art, options.threads or profile.threads, options.duration)
            row.update(latency(art, profile, m))
            row["checks"] = checks(row, limits)
            row["status"] = "fail" if any(c["ok"] is False for c in row["checks"]) else "pass"
            row["unchecked"] = [c["budget"] for c in row["checks"] if c["ok"] is None]
        except EdgeKitError as e:
            row.update(status="error", error=str(e))
        rows.append(row)
    gated = any(v is not None for v in limits.model_dump().values())
    return {
        "profile": profile.name,
        "resolution": resolution,
        "baseline": {"model": str(baseline), "accuracy": base_acc} if baseline else None,
        "budgets": limits.model_dump(),
        "gated": gated,
        "host": host,
        "latency_here": here,
        "rows": rows,
        "verdict": "pass" if all(r["status"] == "pass" for r in rows) else "fail",
    }


def attach(result: dict[str, Any], run_dir: Path) -> Path:
    """Record a validation in a compress run's report.json (replacing an earlier one for the same profile)."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no report.json", "pass a run directory `edgekit compress` wrote")
    report = json.loads(path.read_text())
    report["validation"] = [v for v in report.get("validation", []) if v["profile"] != result["profile"]] + [result]
    write_json(path, report)
    return path
