"""One way to make an artifact: build it → check its parity with the float model in its own runtime → measure the
gated metric there on real data → write its manifest. `export`, the quantize stage and so every `search` trial
call `build_artifact`, so no artifact, INT8 above all, leaves EdgeKit unchecked against the model it came from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact, accuracy_record
from .data import FeedDataset
from .evaluation import evaluate, torch_outputs
from .formats import ExportContext, Format, accuracy_runner
from .runtimes import predict_fn
from .targets.parity import TOLERANCES, check_parity, require_parity, summary
from .tasks import Task


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
