"""The architecture as tests: data flows one way through the layers (read from the import graph, function-level
imports included), and everything about a format lives in its registry entry."""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from edgekit.cli.export import Precision
from edgekit.formats import FORMATS, FormatName, Int8Format, capability_markdown
from edgekit.stages.steps import STAGES

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from gen_docs import BEGIN, with_capability_table

PACKAGE = ROOT / "edgekit"
# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = (
    {"edgekit", "agent", "errors", "schema_errors", "fsutil", "noise", "graphs", "records", "io", "hardware",
     "artifact", "models", "loading", "data", "tasks", "evaluation", "stats", "timing", "devices", "training",
     "zoo"},  # types, data, torch models
    {"runtimes"},  # run a file: onnxruntime, OpenVINO, ExecuTorch, TensorRT, torch
    {"targets"},  # write a file: torch -> ONNX, lowering, ExecuTorch, TensorRT bundles
    {"branches"},  # the fusion model's branches, in the torch and the ONNX graph
    {"quant"},  # INT8 backends and the accuracy-aware search
    {"formats"},  # the registry: one Format per deployable format
    {"pipeline"},  # build -> parity -> accuracy in its runtime -> manifest: the one way an artifact is made
    {"stages"},  # the recipe's stages
    {"recipe"},
    {"profiling", "provenance"},
    {"validate"},
    {"compress"},
    {"search"},
    {"report", "tracking"},  # the records rendered as HTML, and sent to MLflow
    {"api"},  # the verbs as Python functions: the only module the CLI calls
    {"cli", "__main__"},
)  # fmt: skip
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every edgekit module `path` imports, at any depth of its code."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            candidates = [name, *(f"{name}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != me}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    assert top in RANK, f"{module} is in no layer: add it to LAYERS"
    return RANK[top]


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} -> {b}" for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not upward, "imports against the data flow:\n" + "\n".join(sorted(upward))


def test_the_cli_calls_only_the_api():
    """The CLI parses flags, calls edgekit.api and renders what it returns: no other edgekit module."""
    cli = {m: deps for m, deps in graph().items() if m == "edgekit.cli" or m.startswith("edgekit.cli.")}
    assert len(cli) > 10
    outside = {f"{m} -> {d}" for m, deps in cli.items() for d in deps
               if d != "edgekit.api" and not d.startswith("edgekit.cli") and d != "edgekit"}  # fmt: skip
    assert not outside, "the CLI calls around edgekit.api:\n" + "\n".join(sorted(outside))
    for path in (PACKAGE / "cli").glob("*.py"):  # `from .. import X` reaches edgekit.X: only X = api
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module is None:
                assert [a.name for a in node.names] == ["api"], f"{path.name}: from .. import {node.names[0].name}"


def test_the_import_graph_has_no_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join([*path[path.index(d) :], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_per_format_dispatch_outside_the_registry():
    """The issue's own check: a format or backend name compared in code outside edgekit/formats/."""
    pattern = re.compile(r"if .*format ==|elif .*backend|format != \"|\.format in \(")
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in PACKAGE.rglob("*.py")
        if "formats" not in p.relative_to(PACKAGE).parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_declares_everything(name):
    f = FORMATS[name]
    assert f.name == name and f.suffix.startswith(".") and f.summary
    assert set(f.precisions) <= {p.value for p in Precision}  # every precision is a CLI choice
    module, _, factory = f.runner.partition(":")
    assert importlib.util.find_spec(module) is not None and factory  # heavy runtimes are not imported here
    assert callable(f.build) and (f.int8 is not None) == ("int8" in f.precisions)
    assert f.runs_here or f.proxy is not None, "a format that cannot run here needs a proxy for its accuracy"


def test_cli_choices_recipe_kinds_and_docs_come_from_the_registries():
    assert [c.value for c in FormatName] == list(FORMATS)
    assert set(Int8Format.__args__) == {"auto", *(n for n, f in FORMATS.items() if f.int8)}
    assert set(STAGES) == {"prune", "distill", "quantize"}
    docs = (ROOT / "docs" / "hardware-profiles.md").read_text()
    assert BEGIN in docs and docs == with_capability_table(docs), "stale capability table: run scripts/gen_docs.py"
    assert all(f"`{name}`" in capability_markdown() for name in FORMATS)
