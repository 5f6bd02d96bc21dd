"""docs/errors.md lists every error a user can hit: each UsageError / EdgeKitError raised in edgekit/ must appear
there, found by the longest literal part of its message (placeholders are written differently in the doc)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAISED = ("UsageError", "EdgeKitError")


def message_fragments() -> list[tuple[str, str]]:
    """(where, the longest literal part of the message) for every error EdgeKit constructs."""
    found = []
    for path in sorted((ROOT / "edgekit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in RAISED and node.args):
                continue
            msg = node.args[0]
            parts = msg.values if isinstance(msg, ast.JoinedStr) else [msg]
            literal = [p.value.strip(" ():,;'\"") for p in parts if isinstance(p, ast.Constant)]
            if literal := [text for text in literal if len(text) >= 6]:
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", max(literal, key=len)))
    return found


def test_every_error_message_is_in_the_errors_doc():
    doc = (ROOT / "docs" / "errors.md").read_text()
    fragments = message_fragments()
    assert len(fragments) > 100  # the scan finds the errors at all
    missing = [f"{where}: {text!r}" for where, text in fragments if text not in doc]
    assert not missing, "add these to docs/errors.md:\n" + "\n".join(missing)
