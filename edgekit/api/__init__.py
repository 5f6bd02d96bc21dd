"""EdgeKit's Python API, and the only module the CLI calls: each verb takes a model (a package directory, or an
`nn.Module` with its IOSpec via `model()`), data (a dataset spec, or splits in memory: `{"train": from_arrays(...),
...}`) and a recipe (a `Recipe`, a .yaml, or the default), and returns the typed record the CLI prints as JSON.
docs/python-api.md walks through it end to end."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..compress import Plan
from ..data import BUILTIN, AVDigitsConfig, DataLike, FeedDataset, Splits, from_arrays
from ..data.calibration import DEFAULT_SAMPLES
from ..devices import launch, placement
from ..errors import EdgeKitError, UsageError
from ..formats import FormatName
from ..fsutil import write_text
from ..hardware import HardwareProfile, profile_names, resolve_profile
from ..io import IOSpec, TensorSpec
from ..loading import LoadedModel
from ..models import FUSIONS, PRESETS
from ..noise import set_verbose
from ..profiling.local import Settings
from ..profiling.remote import Remote
from ..recipe import Recipe, dump_recipe, load_recipe, recipe_from_flags, recipe_schema
from ..records import (
    RECORDS,
    Check,
    CompressReport,
    ExportRecord,
    Record,
    SearchRecord,
    StageRow,
    Trial,
    Validation,
    ValidationRow,
    Verdict,
    load_record,
)
from ..report import render as render_report
from ..report import render_fleet
from ..search import Options as SearchOptions
from ..tracking import budget_missed
from ..training import TrainConfig
from ..validate import Options as ValidateOptions
from ..zoo import reference_teacher, reference_teacher_path
from .export import ExportOptions, export
from .models import ModelLike, model
from .verbs import (
    build_data,
    build_engine,
    compress,
    evaluate_model,
    plan,
    profile,
    profile_on_fleet,
    search,
    search_space,
    train,
    validate,
    validate_on_fleet,
)


def record_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a record EdgeKit writes: report, validation, search or export (recipe: the recipe's)."""
    if name == "recipe":
        return recipe_schema()
    if name not in RECORDS:
        raise UsageError(f"no record named '{name}'", f"one of: recipe, {', '.join(RECORDS)}")
    return RECORDS[name].model_json_schema()


def schema_text(name: str) -> str:
    return json.dumps(record_schema(name), indent=2) + "\n"


__all__ = [
    "BUILTIN", "DEFAULT_SAMPLES", "FUSIONS", "PRESETS", "RECORDS", "AVDigitsConfig", "Check", "CompressReport",
    "DataLike", "EdgeKitError", "ExportOptions", "ExportRecord", "FeedDataset", "FormatName", "HardwareProfile",
    "IOSpec", "LoadedModel", "ModelLike", "Plan", "Recipe", "Record", "Remote", "SearchOptions", "SearchRecord",
    "Settings", "Splits", "StageRow", "TensorSpec", "TrainConfig", "Trial", "UsageError", "ValidateOptions",
    "Validation", "ValidationRow", "Verdict", "__version__", "budget_missed", "build_data", "build_engine",
    "compress", "dump_recipe", "evaluate_model", "export", "from_arrays", "launch", "load_recipe", "load_record",
    "model", "placement", "plan", "profile", "profile_names", "profile_on_fleet", "recipe_from_flags",
    "recipe_schema", "record_schema", "reference_teacher", "reference_teacher_path", "render_fleet", "render_report",
    "resolve_profile", "schema_text", "search", "search_space", "set_verbose", "train", "validate",
    "validate_on_fleet", "write_text",
]  # fmt: skip
