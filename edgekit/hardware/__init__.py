"""Hardware profiles: typed, frozen facts about a deployment device, shipped as YAML files.

A profile says what a device deploys to (format, runtime, precisions), how fast it can be (peak
throughput per precision, memory bandwidth; used by the latency estimator), the software stack it
implies, and the budgets an artifact must meet on it."""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import pydantic
import yaml

from ..errors import UsageError
from ..schema_errors import dotted, first_error, load_yaml, one_line, show
from .cpu import this_cpu
from .identity import Identity, host_facts

Precision = Literal["fp32", "fp16", "int8"]
FormatName = Literal["onnx", "openvino", "tensorrt", "executorch", "ort-mobile"]

# Short names users type -> the shipped profile they resolve to (printed when used).
ALIASES: dict[str, str] = {
    "jetson": "jetson-orin-nano-8gb",
    "jetson-orin-nano": "jetson-orin-nano-8gb",
    "jetson-orin-nx": "jetson-orin-nx-16gb",
    "jetson-agx-orin": "jetson-agx-orin-64gb",
    "x86-avx512": "x86-avx512-vnni",
    "android": "android-arm64",
    "raspberry-pi-5": "arm64-cortex-a76",
}
# Aliases of a CPU family that mean *this host*: the first of these profiles whose ISA this host has lends its INT8
# sizing, peaks and budgets, and this host is the device (its identity is this host's CPU model and CPU count), so
# latency measured here counts. Most capable first.
HOST_ALIASES: dict[str, tuple[str, ...]] = {"x86": ("x86-avx512-vnni", "x86-avx2")}


def alias_names() -> list[str]:
    return [*ALIASES, *HOST_ALIASES]


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class Budgets(_Frozen):
    """What an artifact must meet on the device. A missing value is not gated."""

    latency_p95_ms: pydantic.NonNegativeFloat | None = None  # at batch 1
    max_accuracy_drop: pydantic.NonNegativeFloat | None = None  # points (of accuracy, or a multilabel's mAP)
    # one metric of the model's task and how much worse it may get in its own unit ({mae: 0.05}; tasks.gate_for)
    max_metric_drop: dict[str, pydantic.NonNegativeFloat] | None = None
    max_size_mb: pydantic.NonNegativeFloat | None = None
    max_peak_ram_mb: pydantic.NonNegativeFloat | None = None
    max_energy_mj: pydantic.NonNegativeFloat | None = None  # board energy per inference at batch 1 (tegrastats)
    # lost with modalities missing, in the accuracy gate's unit, per subset ("audio", "image+audio") or one for all
    max_subset_drop: pydantic.NonNegativeFloat | dict[str, pydantic.NonNegativeFloat] | None = None


class Accelerator(_Frozen):
    """A fixed-function engine beside the main compute, e.g. an NVIDIA DLA core."""

    kind: Literal["dla", "npu"]
    count: pydantic.PositiveInt
    peak_tops: dict[Precision, pydantic.PositiveFloat]  # dense, per engine
    precisions: tuple[Precision, ...]


class ExportSpec(_Frozen):
    format: FormatName
    precision: Precision


class HardwareProfile(_Frozen):
    name: str
    description: str
    kind: Literal["gpu", "cpu"]
    # What `edgekit export --target NAME` produces, first = primary artifact.
    exports: tuple[ExportSpec, ...] = pydantic.Field(min_length=1)
    runtime: Literal["onnxruntime", "openvino", "tensorrt", "executorch"]
    precisions: tuple[Precision, ...] = pydantic.Field(min_length=1)
    # Dense (not sparse) peak of the main compute, per precision: TFLOP/s for floats, TOP/s for int8.
    peak_tops: dict[Precision, pydantic.PositiveFloat]
    memory_bandwidth_gbs: pydantic.PositiveFloat
    ram_gb: pydantic.PositiveFloat
    threads: pydantic.PositiveInt
    # Fixed cost per layer launch or op dispatch, for the roofline estimator.
    launch_overhead_us: pydantic.NonNegativeFloat
    cpu_isa: tuple[str, ...] = ()  # CPU flags its INT8 artifacts are sized for (hardware/cpu.py)
    identity: Identity | None = None  # what recognises the device itself; None: no host is it
    software: dict[str, str] = {}  # e.g. jetpack, tensorrt, cuda, android_api
    accelerators: tuple[Accelerator, ...] = ()
    budgets: Budgets  # required; an empty mapping means nothing is gated

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        for e in self.exports:
            if e.precision not in self.precisions:
                raise ValueError(f"export {e.format}/{e.precision} uses a precision the profile does not list")
        missing = [p for p in self.precisions if p not in self.peak_tops]
        if missing:
            raise ValueError(f"peak_tops has no figure for precision(s) {missing}")
        return self

    def not_the_device(self, facts: dict[str, object]) -> str | None:
        """Why a host with these facts (hardware/identity.py) is not this profile's device; None when it is."""
        if self.identity is None:
            return f"profile {self.name} names no device identity (docs/hardware-profiles.md#identity)"
        lacks = sorted(set(self.cpu_isa) - set(facts.get("isa") or []))  # type: ignore[arg-type]
        return f"its CPU lacks {', '.join(lacks)}" if lacks else self.identity.mismatch(facts)

    @property
    def dla_cores(self) -> int:
        return sum(a.count for a in self.accelerators if a.kind == "dla")


def _shipped() -> dict[str, Path]:
    root = resources.files(__package__) / "profiles"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def profile_names() -> list[str]:
    return sorted(_shipped())


def parse_profile(path: Path) -> HardwareProfile:
    try:
        data = load_yaml(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"profile {path} cannot be read: {str(e).splitlines()[0]}") from e
    try:
        return HardwareProfile.model_validate(data)
    except pydantic.ValidationError as e:
        err = first_error(e, HardwareProfile)
        raise UsageError(
            f"profile {path}: field '{dotted(err.loc) or '(top level)'}' {err.problem}",
            err.hint or "see docs/hardware-profiles.md for the fields",
        ) from e


def host_profile(family: str = "x86", isa: tuple[str, ...] | None = None) -> tuple[str | None, str]:
    """The profile of a CPU family that this host (or a CPU with `isa`) satisfies, and why: (None, why not)."""
    flags = set(this_cpu()[1] if isa is None else isa)
    for name in HOST_ALIASES[family]:
        needs = parse_profile(_shipped()[name]).cpu_isa
        if set(needs) <= flags:
            return name, f"this host's CPU has {', '.join(needs)}"
    lacks = sorted(set(parse_profile(_shipped()[HOST_ALIASES[family][-1]]).cpu_isa) - flags)
    return None, f"this host's CPU matches no {family} profile (it lacks {', '.join(lacks)})"


def resolve_profile(target: str) -> tuple[HardwareProfile, str | None]:
    """A shipped name, an alias, or a YAML path -> (profile, the alias resolution to print, if any)."""
    shipped = _shipped()
    if target in shipped:
        return parse_profile(shipped[target]), None
    if target in HOST_ALIASES:
        name, why = host_profile(target)
        if name is None:
            name, why = HOST_ALIASES[target][0], f"{why}; using the first"
        facts = host_facts()
        model, cpus = facts["cpu_model"], facts["cpus"]
        identity = Identity(cpu_model=f"^{re.escape(model)}$", cpus=cpus)
        host = parse_profile(shipped[name]).model_copy(
            update={"name": target, "identity": identity, "description": f"this host ({model}, {cpus} CPUs) as {name}"}
        )
        return (
            host,
            f"target '{target}' is this host ({model}, {cpus} CPUs) with profile '{name}''s INT8 and budgets ({why})",
        )
    if target in ALIASES:
        name = ALIASES[target]
        return parse_profile(shipped[name]), f"target '{target}' resolves to profile '{name}'"
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        if not os.path.isfile(path):  # unlike Path.is_file, False (not OSError) for a name too long or unreadable
            raise UsageError(
                f"profile file not found: {one_line(str(path))}", "pass an existing YAML file or a shipped profile name"
            )
        return parse_profile(path), None
    close = difflib.get_close_matches(target, [*shipped, *alias_names()], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UsageError(f"unknown target {show(target)}", f"{hint}see `edgekit profiles list`, or pass a profile .yaml")
