"""The version of the records EdgeKit writes (report.json, export.json, search.json, a validation) and the one
reader of them: a later EdgeKit reads an older run directory, and refuses a newer one in one line instead of
misreading its fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UsageError

VERSION = 1  # bump when a record's fields change meaning; readers accept every version up to theirs
KEY = "schema_version"


def read_record(path: Path, what: str) -> dict[str, Any]:
    """A record EdgeKit wrote. One without a version predates versions and has version 1's fields."""
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
