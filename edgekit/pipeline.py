"""One way to make an artifact: build it → check its parity with the float model in its own runtime → measure the
gated metric there on real data → write its manifest. `export`, the quantize stage and so every `search` trial
call `build_artifact`, so no artifact, INT8 above all, leaves EdgeKit unchecked against the model it came from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, accuracy_record
from .data import FeedDataset, with_modalities
from .evaluation import evaluate, torch_outputs
from .formats import ExportContext, Format, accuracy_runner, load_runner
from .runtimes import bound_call, predict_fn
from .targets.parity import TOLERANCES, check_parity, require_parity, summary
from .tasks import Task
from .timing import interleaved


@dataclass(frozen=True)
class Scoring:
    """What an artifact is measured on: real samples of `split` of `data`, scored by `task`'s `metric`."""

    test: FeedDataset  # parity's samples too
    task: Task
    metric: str
    data: str
    split: str
    threads: int | None = None  # runtime threads


@dataclass(frozen=True)
class Built:
    artifact: Artifact  # its manifest written, with its parity record (and accuracy, where it runs here)
    seconds: float  # to build it, calibration and the INT8 search included
    score: float | None  # the metric on the split, in its runtime or its labelled proxy; None where neither runs
    runtime: str | None  # "its runtime", or the proxy's label

    @property
    def here(self) -> bool:
        return self.runtime == "its runtime"


def build_artifact(ctx: ExportContext, fmt: Format, precision: str, dst: Path, scoring: Scoring) -> Built:
    """Build `fmt` at `precision` into `dst`, then gate it: parity with `ctx.model` at the precision's tolerance
    (targets/parity.py) on the split's samples, then the metric on the whole split. Raises EdgeKitError when parity
    fails, before any manifest says the artifact exists."""
    start = time.perf_counter()
    art = fmt.build(ctx, precision, dst)
    seconds = time.perf_counter() - start
    runs = accuracy_runner(art, scoring.threads)
    if runs is None:  # a format only its device runs, without a proxy here
        art.with_meta(parity={"passed": None, "why": f"{fmt.name} runs only on its device"}).write_manifest()
        return Built(art, seconds, None, None)
    runner, runtime = runs
    tol = TOLERANCES[precision]
    classes = scoring.task.name == "classification"
    cases = check_parity(ctx.io, torch_outputs(ctx.model, ctx.io), runner.run, scoring.test, tol, classes=classes)
    require_parity(cases, f"the {fmt.name}/{precision} artifact ({runtime})", tol)
    record: dict[str, Any] = {"parity": {**summary(cases, tol), "precision": precision, "runtime": runtime}}
    if precision == "int8":  # what exporting a compress run rebuilds it from (api.recorded_int8)
        record["calibration"] = ctx.calib.describe()
    score = evaluate(predict_fn(runner), ctx.io, scoring.test, per_modality=False, task=scoring.task).overall
    value = score[scoring.metric]
    if runtime == "its runtime" and scoring.metric == "accuracy":  # validate compares with it where the artifact runs
        record["accuracy"] = accuracy_record(value, scoring.data, scoring.split)
    art = art.with_meta(**record)
    art.write_manifest()
    return Built(art, seconds, value, runtime)


# -- INT8 only where it is faster ---------------------------------------------------------------------

MARGIN = 0.05  # FP32 ships only when it is this much faster: closer than that is timing noise, and INT8 is smaller


@dataclass(frozen=True)
class Speed:
    """An INT8 artifact against the FP32 one of the same format, timed side by side (interleaved blocks, batch 1)
    on this host, which is the profile's device. INT8 is not always faster: without VNNI (AVX2-only CPUs) its
    kernels sum pairs of products in more instructions, and Q/DQ boundaries cost time on small models."""

    int8_p50_ms: float
    fp32_p50_ms: float
    threads: int

    @property
    def ships(self) -> str:
        return "fp32" if self.fp32_p50_ms < self.int8_p50_ms * (1 - MARGIN) else "int8"

    def why(self) -> str:
        ratio = self.int8_p50_ms / self.fp32_p50_ms
        how = f"takes {ratio:.2f}x the time of" if ratio > 1 else f"is {1 / ratio:.2f}x faster than"
        line = f"INT8 {how} FP32 at batch 1 here ({self.int8_p50_ms:.3f} vs {self.fp32_p50_ms:.3f} ms p50)"
        return f"{line}; FP32 ships" if self.ships == "fp32" else line

    def as_dict(self) -> dict[str, Any]:
        return {"int8_p50_ms": self.int8_p50_ms, "fp32_p50_ms": self.fp32_p50_ms, "threads": self.threads,
                "ships": self.ships, "why": self.why()}  # fmt: skip


def int8_speed(int8: Artifact, fp32: Artifact, test: FeedDataset, threads: int, rounds: int = 8) -> Speed:
    """Time both in their runtime on one real sample at batch 1, in alternating blocks of 0.2 s."""
    feeds = with_modalities(int8.io, next(iter(test.batches(1)))[0], int8.io.modalities)
    calls = {a.precision: bound_call(load_runner(a, threads), feeds) for a in (int8, fp32)}
    seconds = interleaved(calls, rounds, 0.2)
    p50 = {k: round(float(np.median(v)) * 1e3, 4) for k, v in seconds.items()}
    return Speed(p50["int8"], p50["fp32"], threads)
