"""What a deployable format is, as one object, and what its builder receives.

A `Format` says everything EdgeKit needs of one format: the file it writes, its precisions and shape modes, the
extras it needs, how it is built, which runner and op profiler run it, and which INT8 backend quantizes for it.
Each format's module (edgekit/formats/*.py) declares one; edgekit/formats/__init__.py holds the registry."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from ..artifact import Artifact
from ..data import FeedDataset
from ..data.calibration import CalibrationSet
from ..hardware import HardwareProfile
from ..io import IOSpec
from ..quant.accuracy_aware import SensitivityReport
from ..quant.backends import Backend, Int8Job, find_float_nodes
from ..runtimes import Runner
from ..tasks import CLASSIFICATION, Gate, Task

ShapeMode = Literal["dynamic", "static"]
Builder = Callable[["ExportContext", str, Path], Artifact]
OpProfiler = Callable[[Artifact, Mapping[str, np.ndarray], int, "int | None"], dict[str, Any]]
Proxy = Callable[[Artifact, "int | None"], tuple[Runner, str]]


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # the file the runtime loads
    precisions: tuple[str, ...]
    build: Builder
    runner: str  # "module:factory" of its Runner, imported when an artifact is run
    runtime: tuple[str, str | None]  # (module the runner needs, the extra that installs it; None: the device's SDK)
    int8: Callable[[Int8Job], Backend] | None = None  # the backend that quantizes for it
    runs_here: tuple[str, ...] = ()  # runtimes that execute it on a CPU-only x86 host; empty: only on its device
    shapes: tuple[ShapeMode, ...] = ("dynamic", "static")
    needs: tuple[tuple[str, str], ...] = ()  # (module, extra) that exporting needs
    int8_needs: tuple[tuple[str, str], ...] = ()  # extra modules for INT8
    # Its runtime's x86 INT8 kernels sum pairs of products in 16 bits on a CPU without VNNI (hardware/cpu.py), so
    # full-range 8-bit weights can saturate there.
    saturates_without_vnni: bool = False
    op_profiler: OpProfiler | None = None  # per-operator times from the runtime's own profiler
    proxy: Proxy | None = None  # where it cannot run here: a runner of the same graph that can, and its label
    device_build: str | None = None  # a file only the device can build before the artifact runs (a TensorRT engine)
    summary: str = ""  # one line for the docs' capability table


@dataclass(frozen=True)
class Search:
    """The accuracy-aware INT8 search: keep the layers that cost most on `val` in float until `task`'s gated metric
    is within `gate` of `reference` (a compress run's teacher on `val`; None: the model being quantized, as
    `export --max-drop` gives it)."""

    val: FeedDataset
    gate: Gate
    task: Task = CLASSIFICATION
    reference: float | None = None

    @classmethod
    def points(cls, val: FeedDataset, max_drop: float, reference: float | None = None) -> Search:
        """Classification's search within `max_drop` points of accuracy."""
        return cls(val, Gate("accuracy", True, max_drop), CLASSIFICATION, reference)


@dataclass(frozen=True)
class ExportContext:
    """What every builder receives: the source model, its IOSpec, the parity-checked FP32 ONNX hub file, the
    profile, the calibration set (drawn once, on first use) and how INT8 decides what stays float."""

    model: nn.Module
    io: IOSpec
    onnx_fp32: Path  # the slimmed, parity-checked hub ONNX
    profile: HardwareProfile
    parent: str  # sha256 of the source model's weights
    calibrate: Callable[[], CalibrationSet]
    work: Path  # scratch directory for intermediate files
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in every manifest (source, profile, ...)
    branches: Mapping[str, Sequence[str]] = field(default_factory=dict)  # the package's `branches:` override
    float_nodes: Sequence[str] | None = None  # a compress run's exclusions, found for `run_format`'s backend
    search: Search | None = None  # without exclusions that apply: plain PTQ (nothing kept in float)
    run_format: Format | None = None  # the format whose INT8 the run searched
    built: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)  # INT8 models, by backend key
    sensitivity: dict[str, SensitivityReport] = field(default_factory=dict)  # searches run, by backend key

    @functools.cached_property
    def calib(self) -> CalibrationSet:
        return self.calibrate()

    @functools.cached_property
    def job(self) -> Int8Job:
        return Int8Job(self.model, self.io, self.onnx_fp32, self.calib, self.profile, self.branches)

    def int8(self, fmt: Format) -> tuple[Path, dict[str, Any]]:
        """The directory holding `fmt`'s INT8 model and its quantization record: the one INT8 path of `compress`
        and `export`. Built once per backend key (the Q/DQ formats share one per scheme); what stays float is the
        run's recorded exclusions, else the search's, else nothing."""
        assert fmt.int8 is not None, f"{fmt.name} has no INT8 backend"
        backend = fmt.int8(self.job)
        if backend.key not in self.built:
            if self.float_nodes is not None and self.reuses_run(fmt):
                keep = tuple(self.float_nodes)
            elif self.search is not None:
                s = self.search
                report = find_float_nodes(backend, self.job, s.val, s.gate, s.task, self.work / f"search-{backend.key}",
                                          s.reference)  # fmt: skip
                self.sensitivity[backend.key] = report
                keep = report.float_nodes
            else:
                keep = ()
            dst = self.work / f"int8-{backend.key}"
            info = {**backend.quantize(frozenset(keep), dst), "float_nodes": list(keep)}
            self.built[backend.key] = (dst, info)
        return self.built[backend.key]

    def searched(self, fmt: Format) -> SensitivityReport | None:
        """The accuracy-aware search that decided what `fmt`'s INT8 keeps in float, where one ran."""
        return self.sensitivity.get(fmt.int8(self.job).key) if fmt.int8 else None

    def reuses_run(self, fmt: Format) -> bool:
        """Whether `fmt`'s INT8 is the backend the run searched (the Q/DQ formats of one scheme share one). Exclusions
        found for one backend say nothing about another's numerics: its own search decides there."""
        run = self.run_format
        return (
            run is not None
            and run.int8 is not None
            and fmt.int8 is not None
            and (run.int8(self.job).key == fmt.int8(self.job).key)
        )

    def int8_plan(self, fmt: Format) -> str:
        """What decides what stays float in `fmt`'s INT8, in words."""
        if self.float_nodes is not None and self.reuses_run(fmt):
            return f"INT8 reuses the run's exclusions ({len(self.float_nodes)} node(s) kept in float) and calibration"
        searched = f"the run searched {self.run_format.name}'s INT8, not {fmt.name}'s: " if self.run_format else ""
        if self.search is None:
            return f"{searched}plain PTQ, nothing kept in float (no accuracy budget to search within)"
        return f"{searched}searching what {fmt.name}'s INT8 keeps in float for {self.search.gate.describe()} on val"

    def onnx_for(self, fmt: Format, precision: str) -> tuple[Path, dict[str, Any]]:
        """The ONNX a Q/DQ format packages, and its quantization record: the hub's float graph (FP16 is a runtime
        flag over it), or the INT8 Q/DQ model."""
        if precision != "int8":
            return self.onnx_fp32, {}
        built, info = self.int8(fmt)
        return built / "model.onnx", info
