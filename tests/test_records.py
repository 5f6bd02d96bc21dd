"""The records EdgeKit writes are typed: built as models, read back as the same type, their schemas published (the
`edgekit schema` command and docs/records.md), and a record that does not fit refused in one line."""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from edgekit import api
from edgekit.records import Check, ValidationRow

from .conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
from gen_docs import records_markdown

ROW = {"artifact": "out/onnx-int8", "status": "pass", "format": "onnx", "precision": "int8", "metric": "mae",
       "mae": 0.31, "mae_drop": 0.02, "drop_ci": [0.0, 0.04], "latency_source": "estimated", "checks": [],
       "unchecked": []}  # fmt: skip
VALIDATION = {"profile": "x86", "resolution": None, "baseline": None, "gate": {"metric": "mae", "unit": "mae"},
              "split": "in-memory/test", "budgets": {}, "gated": False, "host": {}, "the_device": True,
              "rows": [ROW], "verdict": "pass"}  # fmt: skip


def test_the_records_page_is_the_schemas():
    assert (ROOT / "docs" / "records.md").read_text() == records_markdown(), "stale: run scripts/gen_docs.py"


@pytest.mark.parametrize("name", ["report", "validation", "search", "export"])
def test_edgekit_schema_prints_each_records_schema(name):
    r = run_cli("schema", name)
    assert r.code == 0 and json.loads(r.stdout) == api.record_schema(name)
    assert "schema_version" in json.loads(r.stdout)["properties"]


def test_a_record_reads_back_as_written():
    """Only the keys that were set are written, so a row without an error has no `error` key, and a metric-named
    value (mae, its drop and interval) keeps its name."""
    v = api.Validation.model_validate(VALIDATION)
    assert v.dump() == {**VALIDATION, "schema_version": 1} and "error" not in v.dump()["rows"][0]
    row = v.rows[0]
    assert (row.score("mae"), row.score("mae_drop"), row.score("drop_ci"), row.score("accuracy")) == (
        0.31, 0.02, [0.0, 0.04], None)  # fmt: skip


def test_a_rows_metric_named_values_are_numbers_and_its_other_fields_declared():
    with pytest.raises(ValidationError, match="cpu_notes"):  # a misspelt text field is not a number
        ValidationRow.model_validate({**ROW, "cpu_notes": "no VNNI"})
    with pytest.raises(ValidationError, match="statu"):
        Check.model_validate({"budget": "max_size_mb", "limit": 1.0, "value": 0.5, "statu": "pass", "ok": True})


def test_an_older_record_is_read_a_newer_or_misfitting_one_refused_in_one_line(tmp_path):
    path = tmp_path / "validation.json"
    path.write_text(json.dumps(VALIDATION))  # written before records carried a version: version 1
    assert api.load_record(path, api.Validation, "validation").rows[0].score("mae") == 0.31
    path.write_text(json.dumps({**VALIDATION, "schema_version": 2}))
    with pytest.raises(api.UsageError, match="validation of record version 2; this EdgeKit reads up to 1"):
        api.load_record(path, api.Validation, "validation")
    path.write_text(json.dumps({**VALIDATION, "verdict": "maybe"}))
    with pytest.raises(api.UsageError) as e:
        api.load_record(path, api.Validation, "validation")
    assert "is not a validation: verdict:" in str(e.value) and "\n" not in str(e.value)
