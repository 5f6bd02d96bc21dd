"""Calibration check of the roofline estimator against published Jetson latencies.

Rebuilds ResNet-50 v1.5 (the MLPerf Inference network: 224x224, stride-2 on the 3x3 convolution of each
downsampling bottleneck), exports it to ONNX, and compares EdgeKit's INT8 estimate for each shipped Jetson
profile with NVIDIA's MLPerf Inference SingleStream results (batch 1, INT8, GPU, TensorRT). Batch norms are
left out of the rebuilt network because TensorRT folds them into the convolutions; the weights are random,
which changes no MAC or byte count. Writes the calibration block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from bench import update_doc  # scripts/ is on sys.path when this file runs as a script
from torch import nn

from edgekit.hardware import resolve_profile
from edgekit.hardware.estimator import estimate, graph_costs
from edgekit.io import IOSpec
from edgekit.targets.onnx import export_onnx

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


IO = IOSpec.from_dict({
    "dims": {"batch": {"min": 1, "opt": 1, "max": 1}},
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224], "modality": "image"}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}],
})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(ResNet50(), IO, Path(tmp) / "resnet50.onnx")
        costs = graph_costs(path, IO)
    macs = sum(c[2] for c in costs)
    lines = [
        f"Rebuilt ResNet-50 v1.5 at 224x224: {macs / 1e9:.2f} GMACs in {len(costs)} kernels (batch norms folded). "
        "Published: NVIDIA's MLPerf Inference SingleStream mean latency, INT8, batch 1, GPU only.",
        "",
        "| profile | estimate ms | roofline floor ms | published ms | estimated / published | within 0.65-1.5x |",
        "|---|---|---|---|---|---|",
    ]
    for name, published, *_ in PUBLISHED:
        est = estimate(costs, resolve_profile(name)[0], "int8")
        ratio = est["estimate_ms"] / published
        lines.append(f"| {name} | {est['estimate_ms']:.3f} | {est['floor_ms']:.3f} | {published:.3f} | {ratio:.2f}x "
                     f"| {'yes' if 0.65 <= ratio <= 1.5 else '**no**'} |")  # fmt: skip
        print(f"{name}: estimate {est['estimate_ms']:.3f} ms, published {published} ms, ratio {ratio:.2f}")
    lines += ["", "Sources:"]
    lines += [f"- {name}: {MLPERF.format(v=version, sys=system)}/mlperf_log_summary.txt ({caveat})"
              for name, _, system, version, caveat in PUBLISHED]  # fmt: skip
    update_doc(args.doc, "\n".join(lines), "calibration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
