"""The same INT8 artifacts' accuracy on both x86 CPU classes: this host, an AVX2-only CPU without VNNI emulated by
QEMU, and what a CPU with VNNI computes.

QEMU's user-mode emulator (Debian's qemu-user) runs this very Python under another CPU model: CPUID reports that
model's flags, so onnxruntime and OpenVINO pick the kernels they would pick there (EPYC-Milan: an AMD Zen 3,
AVX2 and FMA, no AVX-512, no VNNI). The arithmetic is the emulated CPU's, instruction by instruction; only the
speed is not. QEMU's TCG implements no VNNI instruction (neither 7.2 nor 10.0: VPDPBUSD is an illegal instruction
under every CPU model), so the VNNI class cannot be emulated on an AVX2-only host. Its arithmetic is exact, though:
VPDPBUSD adds u8 x s8 products into 32-bit sums that never saturate. The `exact` column is that arithmetic, the
Q/DQ graph run as written (DequantizeLinear -> float op), on any host: a VNNI CPU's logits equal it to float
rounding. Usage:

    python scripts/isa_accuracy.py ART_DIR... [--cpu EPYC-Milan] [--data avdigits] [--samples N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QEMU = "qemu-x86_64"


def logits(artifact: str, data: str, samples: int | None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the artifact, run in its own runtime (`exact`: its Q/DQ ONNX with the INT8 arithmetic
    in float, as a VNNI CPU computes it), on the first `samples` test samples."""
    from edgekit.artifact import load_artifact
    from edgekit.data import load_split, with_modalities
    from edgekit.formats import load_runner
    from edgekit.runtimes import predict_fn, qdq_emulator

    art = load_artifact(Path(artifact))
    predict = predict_fn(qdq_emulator(art.path, art.io, 2) if exact else load_runner(art, 2))
    out, labels = [], []
    for feeds, y in load_split(data, "test").batches(64):
        out.append(np.asarray(predict(with_modalities(art.io, feeds, art.io.modalities))))
        labels.append(y)
        if samples and sum(len(b) for b in labels) >= samples:
            break
    return np.concatenate(out)[:samples], np.concatenate(labels)[:samples]


def emulated(artifacts: list[str], cpu: str, data: str, samples: int | None) -> dict[str, np.ndarray]:
    """Each artifact's logits, computed in a child Python that QEMU runs as `cpu`."""
    if shutil.which(QEMU) is None:
        raise SystemExit(f"error: {QEMU} not found; install Debian's qemu-user")
    with tempfile.TemporaryDirectory(prefix="edgekit-isa-") as tmp:
        out = Path(tmp) / "logits.npz"
        cmd = [QEMU, "-cpu", cpu, sys.executable, "-P", __file__, "--inner", str(out), "--data", data,
               "--samples", str(samples or 0), *artifacts]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"error: the emulated run failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        with np.load(out, allow_pickle=False) as z:
            return {a: z[str(i)] for i, a in enumerate(artifacts)}


def compare(artifacts: list[str], cpu: str = "EPYC-Milan", data: str = "avdigits", samples: int | None = None) -> dict:
    """Accuracy and logits of each ONNX INT8 artifact here, on the emulated CPU and in exact arithmetic (VNNI's).
    `max_logit_diff` is here against emulated; `*_vs_exact`, the largest logit difference from exact."""
    from edgekit.artifact import load_artifact
    from edgekit.hardware.cpu import int8_saturates, this_cpu

    there = emulated(artifacts, cpu, data, samples)
    rows = []
    for a in artifacts:
        q = load_artifact(Path(a)).meta.get("quantization") or {}
        here, labels = logits(a, data, samples)
        exact = logits(a, data, samples, exact=True)[0]
        acc = {k: float(np.mean(v.argmax(-1) == labels)) for k, v in (("here", here), ("emulated", there[a]),
                                                                         ("exact", exact))}  # fmt: skip
        rows.append({"artifact": a, "weight_bits": q.get("weight_bits"), "scheme": q.get("scheme"),
                     "samples": len(labels), **acc, "shift_points": round(100 * (acc["here"] - acc["emulated"]), 2),
                     "max_logit_diff": float(np.abs(here - there[a]).max()),
                     "here_vs_exact": float(np.abs(here - exact).max()),
                     "emulated_vs_exact": float(np.abs(there[a] - exact).max())})  # fmt: skip
    host, isa = this_cpu()
    return {"host": host, "host_saturates": int8_saturates(isa), "emulated": cpu, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--cpu", default="EPYC-Milan", help="QEMU CPU model (qemu-x86_64 -cpu help)")
    ap.add_argument("--data", default="avdigits")
    ap.add_argument("--samples", type=int, default=0, help="the first N test samples (default: all)")
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        np.savez(
            args.inner, **{str(i): logits(a, args.data, args.samples or None)[0] for i, a in enumerate(args.artifacts)}
        )
        return
    result = compare(args.artifacts, args.cpu, args.data, args.samples or None)
    print(f"this host: {result['host']}; emulated: {args.cpu} (qemu-user)")
    print(f"{'artifact':<48} {'bits':>4} {'here':>7} {'emulated':>9} {'exact':>7} {'shift':>7} {'max |dlogit|':>12}")
    for r in result["rows"]:
        line = f"{r['artifact']:<48} {r['weight_bits']!s:>4} {r['here']:7.4f} {r['emulated']:9.4f} {r['exact']:7.4f}"
        print(f"{line} {r['shift_points']:+7.2f} {r['max_logit_diff']:12.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
