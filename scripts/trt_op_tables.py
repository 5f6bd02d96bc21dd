"""Write or check a TensorRT parser table (edgekit/targets/trt_ops/onnx-tensorrt-<version>.json) from onnx-tensorrt's
docs/operators.md, the document it copies.

    python scripts/trt_op_tables.py operators.md --tensorrt 8.5 --commit 6d0ab7be... --write
    python scripts/trt_op_tables.py operators.md --tensorrt 8.5            # check: exit 1 on any difference

operators.md is onnx/onnx-tensorrt's, at the commit the table names (git show COMMIT:docs/operators.md). Its
"Operator Support Matrix" rows read `| Op | Y or N | supported types | restrictions |`; the opset bound comes from
its "supports operators up to Opset N" (or "opset 9 to opset N") sentence."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TABLES = Path(__file__).resolve().parents[1] / "edgekit" / "targets" / "trt_ops"


def parse(text: str) -> dict:
    supported, not_supported = {}, []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[1] not in ("Y", "N"):
            continue
        op, mark, *rest = cells
        if mark == "N":
            not_supported.append(op)
            continue
        types, restriction = [*rest, "", ""][:2]
        restriction = re.sub(r"\.?\s*<br\s*/?>\s*", ". ", restriction).strip()  # the document breaks lines in HTML
        supported[op] = [types, restriction] if restriction else [types]
    opset = re.search(r"(?:up to Opset|to opset) (\d+)", text, re.I)
    if not supported or not opset:
        raise SystemExit("error: this is not onnx-tensorrt's docs/operators.md (no support matrix, or no opset bound)")
    return {"max_opset": int(opset.group(1)), "supported": dict(sorted(supported.items())),
            "not_supported": sorted(not_supported)}  # fmt: skip


def dump(table: dict) -> str:
    """One operator a line, so that a table's diff reads like operators.md's."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in table.items() if k not in ("supported", "not_supported")]
    rows = ",\n".join(
        f"  {json.dumps(op)}: {json.dumps(v, ensure_ascii=False)}" for op, v in table["supported"].items()
    )
    body = f' "supported": {{\n{rows}\n }},\n "not_supported": {json.dumps(table["not_supported"])}'
    return "{\n" + "\n".join(head) + "\n" + body + "\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("operators_md", type=Path)
    ap.add_argument("--tensorrt", required=True, help="the TensorRT version the document describes, e.g. 8.5")
    ap.add_argument("--commit", help="with --write: the onnx-tensorrt commit the document is from")
    ap.add_argument("--write", action="store_true", help="write the table instead of checking it")
    a = ap.parse_args()
    path = TABLES / f"onnx-tensorrt-{a.tensorrt}.json"
    parsed = parse(a.operators_md.read_text())
    if a.write:
        if not a.commit:
            ap.error("--write needs --commit, the table's source")
        source = f"onnx/onnx-tensorrt docs/operators.md at commit {a.commit}"
        int64 = int(a.tensorrt.split(".")[0]) >= 9  # operators.md: TensorRT 8 casts INT64 down to INT32
        path.write_text(dump({"source": source, "tensorrt": a.tensorrt, "max_opset": parsed["max_opset"],
                              "int64_native": int64, **parsed}))  # fmt: skip
        print(f"wrote {path}")
        return 0
    shipped = json.loads(path.read_text())
    diffs = [f"{k}: shipped {shipped[k]!r}, document {parsed[k]!r}" for k in ("max_opset", "not_supported")
             if shipped[k] != parsed[k]]  # fmt: skip
    ops = sorted(set(shipped["supported"]) | set(parsed["supported"]))
    diffs += [f"{op}: shipped {shipped['supported'].get(op)}, document {parsed['supported'].get(op)}"
              for op in ops if shipped["supported"].get(op) != parsed["supported"].get(op)]  # fmt: skip
    print("\n".join(diffs) or f"{path.name} matches {a.operators_md}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
