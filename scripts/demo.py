"""`make demo`: the full story on the built-in default, as the commands a user types, with a plan.

AV-digits -> the reference teacher -> compress (recipes/avdigits-x86.yaml) -> artifacts for this host's x86
profile, a Jetson (an engine-build bundle) and Android -> validation against each profile -> report.html.

Before it starts, the demo prints each step with the time it expects on this host, and the CPU that time was
measured on: the step's time measured on the reference host (REFERENCE_S), scaled by how fast this host runs a fixed
torch workload, or the time this host itself took in its last run (runs/demo/timings.json, used only on the same CPU
model and ISA). A step that fails a budget (exit 1) or leaves one unverified (exit 3: latency that only
the device can decide, e.g. the Jetson's) is a result, recorded in the report, and the story goes on; a usage
error or a crash stops it. The x86 steps target `x86`, this host: its latency is measured here. Exit 0 when every
step ran, whatever the verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekit import api
from edgekit.data import BUILTIN
from edgekit.data.avdigits import is_built
from edgekit.fsutil import cache_root, write_json
from edgekit.hardware import host_profile
from edgekit.hardware.cpu import this_cpu

DEMO = Path("runs/demo")
TIMINGS = DEMO / "timings.json"
EDGEKIT = [sys.executable, "-P", "-m", "edgekit"]  # -P: never import a stray edgekit/ from the working directory


# The reference run: `make demo` on 2 vCPUs of an Intel Xeon (Sapphire Rapids, AVX-512 VNNI and AMX) on 2026-12-06,
# alone on the host; speed_score() took 0.36-0.48 s there (0.42 s typical). The dataset and the teacher come from
# the same host's first run, which built them. Each step's time there, in seconds:
REFERENCE_CPU = "a 2-vCPU Intel Xeon (Sapphire Rapids, AVX-512 VNNI and AMX), 2026-12-06, quiet"
REFERENCE_SHORT = "Intel Xeon Sapphire Rapids"
REFERENCE_WORKLOAD_S = 0.42
REFERENCE_S = {
    "data": 19,
    "teacher": 360,
    "eval": 6,
    "compress": 210,
    "export x86": 31,
    "export jetson": 27,
    "export android": 480,
    "validate x86": 12,
    "validate jetson": 10,
    "validate android": 26,
    "report": 2,
}


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    cached: bool = False  # its result is cached: it only checks and reuses it
    verdict: bool = False  # exit 1 (a failed budget) or 3 (unverified: only the device decides) is a result
    artifacts: tuple[str, ...] = ()  # what it validates: those an export did not build are left out
    on_device: str | None = None  # the one command that decides its unverified budgets on the device itself

    def command(self) -> list[str] | None:
        """Its argv without the artifacts that were not built; None when none was."""
        missing = [a for a in self.artifacts if not Path(a).is_dir()]
        if missing == list(self.artifacts) and missing:
            return None
        return [a for a in self.argv if a not in missing]


def run_step(argv: list[str]) -> tuple[int, str | None]:
    """Run a step as a user would, its output shown as it comes; its exit status and why it failed, if it did: its
    one-line error, or the budgets its validation failed (or, failing none, left to the device)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    error, checks = None, {"❎": [], "❔": []}
    assert p.stdout is not None
    for line in p.stdout:
        sys.stdout.write(line)
        if line.startswith("edgekit: error: "):
            error = line.removeprefix("edgekit: error: ").strip()
        elif line[:1] in checks:  # a budget a validation failed, or one only the device decides
            checks[line[:1]].append(line[1:].strip())
    return p.wait(), error or "; ".join(checks["❎"] or checks["❔"]) or None


def speed_score() -> float:
    """Seconds this host takes for a fixed torch training workload (convolutions and attention, forward and
    backward): the scale between the reference host's step times and this host's."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 64))  # fmt: skip
    attn = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    x, tokens = torch.randn(64, 1, 28, 28), torch.randn(64, 16, 64)
    opt = torch.optim.SGD([*net.parameters(), *attn.parameters()], lr=0.01)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            opt.zero_grad()
            (net(x).sum() + attn(tokens).sum()).backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return min(times)  # other work on the host only adds time: the fastest round is the host's speed


def steps() -> list[Step]:
    teacher = api.reference_teacher_path()
    run = DEMO / "compress"
    x86 = [f"{DEMO}/x86/openvino-int8", f"{DEMO}/x86/onnx-int8"]
    jetson, android = (
        f"{DEMO}/jetson/tensorrt-int8",
        [f"{DEMO}/android/executorch-int8", f"{DEMO}/android/ort-mobile-fp32"],
    )
    baseline = ["--baseline", str(teacher)]
    return [
        Step("data", [*EDGEKIT, "data", "build", "avdigits"], cached=is_built(BUILTIN["avdigits"])),
        Step("teacher", [sys.executable, "scripts/reference_teacher.py"],
             cached=(teacher / "edgekit-model.yaml").is_file()),
        Step("eval", [*EDGEKIT, "eval", "--model", str(teacher), "--data", "avdigits"]),
        Step("compress", [*EDGEKIT, "compress", "--recipe", "recipes/avdigits-x86.yaml", "--out", str(run)],
             cached=(run / "report.json").is_file(), verdict=True),
        Step("export x86", [*EDGEKIT, "export", "--model", str(run), "--target", "x86", "--out",
                                   f"{DEMO}/x86", "--overwrite"], verdict=True),
        Step("export jetson", [*EDGEKIT, "export", "--model", str(run), "--target", "jetson", "--out",
                               f"{DEMO}/jetson", "--overwrite"], verdict=True),
        Step("export android", [*EDGEKIT, "export", "--model", str(run), "--target", "android", "--out",
                                f"{DEMO}/android", "--overwrite"], verdict=True),
        Step("validate x86", [*EDGEKIT, "validate", *x86, "--profile", "x86", *baseline, "--report",
                                     str(run)], verdict=True, artifacts=tuple(x86)),
        Step("validate jetson", [*EDGEKIT, "validate", jetson, "--profile", "jetson", *baseline, "--report", str(run)],
             verdict=True, artifacts=(jetson,),
             on_device=f"edgekit validate {jetson} --target jetson --remote USER@JETSON {' '.join(baseline)} "
                       f"--report {run}  (builds the engine there; needs only JetPack on the Jetson)"),
        Step("validate android", [*EDGEKIT, "validate", *android, "--profile", "android", *baseline, "--report",
                                  str(run)], verdict=True, artifacts=tuple(android)),
        Step("report", [*EDGEKIT, "report", str(run)]),
    ]  # fmt: skip


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def main() -> int:
    cpu, isa = this_cpu()
    profile, why = host_profile("x86")
    if profile is None:
        profile, why = "x86-avx512-vnni", f"{why}; its latency will be a proxy, not measured"
    print(f"host: {cpu}, {os.cpu_count()} cores; target x86: this host, with {profile}'s INT8 and budgets ({why})",
          flush=True)  # fmt: skip
    last = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    same_host = last.get("cpu") == cpu and last.get("isa") == list(isa)
    scale = speed_score() / REFERENCE_WORKLOAD_S
    plan = steps()
    print(
        f"plan: step times measured on {REFERENCE_CPU}, scaled by {scale:.2f}x (this host's time for the "
        f"reference workload over that host's), or measured on this host ({cpu}) in its last run:"
    )
    expected = {}
    for i, s in enumerate(plan, 1):
        seen = last.get("steps", {}).get(s.name) if same_host else None
        if s.cached:
            expected[s.name], note = 5.0, "cached, reused"
        elif seen is not None:
            expected[s.name], note = seen, f"measured on this host's {cpu} in its last run"
        else:
            expected[s.name], note = REFERENCE_S[s.name] * scale, f"measured on the {REFERENCE_SHORT}, scaled"
        print(f"  [{i:2d}/{len(plan)}] {s.name:<28} ~{minutes(expected[s.name]):>8}  ({note})")
    print(f"  expected in all: ~{minutes(sum(expected.values()))}", flush=True)
    taken: dict[str, float] = {}
    failed: list[str] = []
    for i, s in enumerate(plan, 1):
        argv = s.command()
        if argv is None:
            failed.append(f"{s.name} (nothing to validate: its export built none)")
            print(f"\n[{i}/{len(plan)}] {s.name}: skipped, its export built none of {', '.join(s.artifacts)}")
            continue
        print(f"\n[{i}/{len(plan)}] {s.name} (expected ~{minutes(expected[s.name])}): {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        code, error = run_step(argv)
        taken[s.name] = round(time.perf_counter() - start, 1)
        if code in (1, 3) and s.verdict:
            failed.append(f"{s.name} ({error})" if error else s.name)
            what = "a budget failed" if code == 1 else "a budget is unverified: only the device decides it"
            print(f"[{i}/{len(plan)}] {s.name}: {what} (see above; recorded in the report), "
                  f"{minutes(taken[s.name])}", flush=True)  # fmt: skip
            if code == 3 and s.on_device:
                print(f"[{i}/{len(plan)}] to decide it on the device: {s.on_device}", flush=True)
        elif code != 0:
            print(f"[{i}/{len(plan)}] {s.name}: exit {code}; the demo stops here", file=sys.stderr)
            return code
        else:
            print(f"[{i}/{len(plan)}] {s.name}: done in {minutes(taken[s.name])}", flush=True)
    seen = last.get("steps", {}) if same_host else {}
    ran = {s.name: taken[s.name] for s in plan if s.name in taken and not s.cached}
    write_json(TIMINGS, {"cpu": cpu, "isa": list(isa), "steps": {**seen, **ran}})
    print(f"\ndemo done in {minutes(sum(taken.values()))}: {DEMO}/compress/report.html")
    print(f"budgets failed or unverified in: {'; '.join(failed)} (shown in the report)" if failed
          else "every budget passed")  # fmt: skip
    print(f"(edgekit's cache: {cache_root()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
