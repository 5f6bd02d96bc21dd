"""The records EdgeKit writes (report.json, export.json, search.json, a validation), as typed models: each is built
in one place, written through `write_record`, and read back through `load_record` as the same type. A later
EdgeKit reads an older run directory, and refuses a newer one in one line instead of misreading its fields.

A row's scores are keyed by the task's metric (`accuracy`, `accuracy_drop`, `mae_ci`, `best_val_map`), so a row
declares its fixed fields and types the rest as numbers: `row.score("mae_drop")` reads one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import UsageError
from .fsutil import write_json

VERSION = 1  # bump when a record's fields change meaning; readers accept every version up to theirs
KEY = "schema_version"

Number = float | list[float] | None  # a metric's value, interval or drop
Status = Literal["pass", "fail", "unverified", "open"]
Detail = dict[str, Any]  # a nested measurement whose fields belong to its producer (host facts, parity, costs)


class Record(BaseModel):
    """A record part whose keys are all declared: a misspelt key is an error where the record is built."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The JSON object written: only the fields that were set, so an absent key stays absent."""
        return self.model_dump(mode="json", exclude_unset=True)


class Scored(Record):
    """A row that also holds the task's metric under its own name: those keys are numbers."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number]

    def score(self, key: str) -> Any:
        """A metric-named value (`accuracy`, `mae_drop`); None when the row has none."""
        return getattr(self, key, None)


class Versioned(Record):
    schema_version: int = VERSION

    @model_validator(mode="after")
    def _written(self) -> Versioned:
        self.model_fields_set.add("schema_version")  # written even when a record is built without naming it
        return self


# -- validation --------------------------------------------------------------------------------------


class Check(Record):
    """One budget on one artifact: `open` when its value cannot be had here, `unverified` when only the device
    decides it."""

    budget: str
    limit: float | None
    value: float | None
    status: Status
    ok: bool | None
    why: str | None = None
    note: str | None = None  # how sure the verdict is, from the drop's interval
    metric: str | None = None


class ValidationRow(Scored):
    """One artifact proven against a profile; `status` error with `error` when it could not be."""

    artifact: str
    status: Literal["pass", "fail", "unverified", "error"]
    error: str | None = None
    format: str | None = None
    precision: str | None = None
    size_mb: float | None = None
    sha256: str | None = None
    metric: str | None = None
    samples: int | None = None
    scores: dict[str, float | None] | None = None
    subsets: dict[str, Detail] | None = None  # per missing-modality subset: its score, drop and interval
    accuracy_source: str | None = None  # the runtime that measured it: here, a proxy, or the device
    built_on: str | None = None
    cpu_note: str | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    batch: int | None = None
    latency_source: Literal["measured", "proxy", "estimated"] | None = None
    peak_ram_mb: float | None = None
    measured_on: str | None = None
    measurements: str | None = None
    not_the_device: str | None = None
    device_side: str | None = None
    ops: Detail | None = None
    energy: Detail | None = None
    estimate: Detail | None = None
    checks: list[Check] = []
    unchecked: list[str] = []


class Validation(Versioned):
    """`edgekit validate`: artifacts against a profile's budgets, on a split, with a verdict."""

    profile: str
    resolution: str | None
    baseline: Detail | None  # the float model's scores on the split, its subsets, their intervals
    gate: Detail  # the metric the accuracy budget is on, its unit and limit
    split: str
    budgets: dict[str, Any]
    gated: bool
    host: Detail
    the_device: bool
    not_the_device: str | None = None
    device: str | None = None
    rows: list[ValidationRow]
    verdict: Literal["pass", "fail", "unverified"]


# -- compress ----------------------------------------------------------------------------------------


class Artifact(Scored):
    format: str
    precision: str
    path: str
    sha256: str
    size_mb: float


class StageRow(Scored):
    """One stage of a compress run: the model after it, what it cost, and its own details."""

    name: str
    metric: str | None = None  # absent from stages cached before rows named their metric
    cached: bool | None = None
    params: int | None = None
    macs: int | None = None
    per_branch: dict[str, Detail] | None = None
    seconds: float | None = None
    path: str | None = None
    accuracy_source: str | None = None
    parts: Detail | None = None  # pruning: requested against achieved per part
    search: Detail | None = None  # quantize: the accuracy-aware search
    speed: Detail | None = None  # quantize: INT8 against FP32 timed here, and which one shipped
    backend: str | None = None
    parity: Detail | None = None
    artifact: Artifact | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    resumed_from: int | None = None
    predicted_train_s: float | None = None  # distill: its training time, predicted from its first steps
    train_s: float | None = None  # distill: what its training steps took


class Verdict(Scored):
    status: Literal["pass", "fail", "unverified"]
    gated: list[str] = []
    metric: str | None = None
    max_drop: float | None = None
    unit: str | None = None
    note: str | None = None
    error: str | None = None
    failed: list[str] | None = None
    unverified: list[str] | None = None
    sensitivity: Detail | None = None  # a quantize stage that could not meet its budget: what it measured


class CompressReport(Versioned):
    """`edgekit compress`'s report.json, written last: a run directory without it is not complete."""

    recipe: Detail
    model: str
    task: str
    metric: str
    unit: str
    higher_is_better: bool
    baseline: Detail  # the teacher: its gated metric, params, MACs per branch
    reference: Detail  # the teacher's scores every drop is taken against: val for the search, test for the verdict
    stages: list[StageRow] = []
    artifacts: list[Artifact] = []
    versions: dict[str, str | None]
    provenance: Detail
    verdict: Verdict | None = None
    validation: list[Validation] = []


# -- export ------------------------------------------------------------------------------------------


class ExportRow(Scored):
    format: str
    precision: str
    path: str
    sha256: str
    size_mb: float
    speed: Detail | None = None  # INT8: timed against FP32 of its format here, and which one the profile ships
    runtime: list[str] | str | None
    metric: str
    parity: Detail
    seconds: float
    reference: Detail | None = None  # a proxy's score where the format does not run here (TensorRT)
    delegation: Detail | None = None  # ExecuTorch: nodes in the delegate, and each op left on portable kernels


class ExportSource(Scored):
    """The model exported: its scores on test in torch, size and weights' hash."""

    scores: dict[str, float | None]
    params: int
    sha256: str


class ExportRecord(Versioned):
    """`edgekit export`'s export.json: the source model, what INT8 kept in float, every artifact."""

    model: str
    profile: str
    resolution: str | None
    out: str
    task: str
    metric: str
    unit: str
    source: ExportSource
    parity: Detail
    int8: dict[str, Any] | str
    artifacts: list[ExportRow]
    sensitivity: Detail | None = None
    validation: Validation | None = None


# -- search ------------------------------------------------------------------------------------------


class Trial(Scored):
    number: int
    status: str
    params: dict[str, Any]
    origin: str | None = None
    values: dict[str, float] | None = None  # the objectives: val_drop, latency_p95_ms, size_mb
    violated: list[str] | None = None
    reason: str | None = None
    error: str | None = None
    same_as: int | None = None
    resumes: int | None = None
    seconds: float | None = None
    macs: int | None = None
    n_params: int | None = None
    artifact: Detail | None = None
    latency: Detail | None = None
    recipe: str | None = None  # on the front: the recipe that reproduces it


class SearchRecord(Versioned):
    """`edgekit search`'s search.json: every trial and the Pareto front, each point with its recipe."""

    model: str
    data: str
    profile: str
    latency_source: str
    latency_note: str | None = None
    objectives: list[str]
    metric: str
    unit: str
    space: dict[str, list[Any]]
    budgets: Detail
    trials: list[Trial]
    front: list[Trial]
    chosen: int | None
    seconds: float | None = None
    study: Detail | None = None
    html: str | None = None


RECORDS: dict[str, type[Versioned]] = {
    "report": CompressReport,
    "validation": Validation,
    "search": SearchRecord,
    "export": ExportRecord,
}
R = TypeVar("R", bound=BaseModel)


def write_record(path: Path, record: Record) -> None:
    write_json(path, record.dump())


def read_record(path: Path, what: str) -> dict[str, Any]:
    """A record EdgeKit wrote, as JSON. One without a version predates versions and has version 1's fields."""
    try:
        record = json.loads(Path(path).read_text())
    except (ValueError, RecursionError) as e:  # ValueError: JSON syntax, ints past 4300 digits
        raise UsageError(f"{path} is malformed ({type(e).__name__})", f"rerun the command that wrote the {what}") from e
    if not isinstance(record, dict):
        raise UsageError(f"{path} is not a {what} (a JSON object)", f"pass a file EdgeKit wrote as its {what}")
    version = record.get(KEY, 1)
    if not isinstance(version, int) or version > VERSION:
        raise UsageError(f"{path} is a {what} of record version {version}; this EdgeKit reads up to {VERSION}",
                         "upgrade EdgeKit to read it, or rerun the command with this one")  # fmt: skip
    return record


def load_record(path: Path, model: type[R], what: str) -> R:
    """A record read back as its type; one whose fields do not fit is refused in one line."""
    try:
        return model.model_validate(read_record(path, what))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise UsageError(f"{path} is not a {what}: {where}: {first['msg']}",
                         f"pass the {what} EdgeKit wrote, or rerun the command that wrote it") from e  # fmt: skip
