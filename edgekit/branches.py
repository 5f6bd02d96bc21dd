"""The modality branches of any fusion model, found in its exported ONNX graph by reachability from the inputs.

A node that depends only on inputs of one modality (and on constants) belongs to that modality's branch; a node
that depends on two or more modalities, or on the modality mask, belongs to `fusion` (the fusion block and the
head). Nothing depends on the model's attribute names: a user's `img.backbone` and the zoo's `branches.image` are
found alike. Shapes are not data: a Reshape that reads the batch size of another input stays in its branch.

A model package may override discovery with `branches:` in edgekit-model.yaml (branch name -> module prefixes),
for the rare model where reachability is wrong."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from .graphs import COMPUTE_OPS, SIZE_OPS, Node, reach
from .io import MODALITY_MASK, IOSpec
from .targets.onnx import export_onnx, module_scope

FUSION = "fusion"
_MASK = "\0mask"  # the modality mask: whatever reads it fuses modalities


@dataclass(frozen=True)
class Branches:
    """Each node's branch, how they were found, and a label per branch a user recognises."""

    of_node: Mapping[str, str]  # ONNX node name -> branch
    method: str  # "graph reachability" or "edgekit-model.yaml branches"
    labels: Mapping[str, str]  # branch -> "audio (aud.lstm)", in the IOSpec's modality order, fusion last

    def names(self) -> list[str]:
        return list(self.labels)


def input_seeds(io: IOSpec) -> dict[str, frozenset[str]]:
    """What each input carries: its modality, or the mask. An "other" input (lengths, ids of a sample) carries
    nothing and joins whatever reads it."""
    seeds = {t.name: frozenset({t.modality}) for t in io.inputs if t.modality != "other"}
    if MODALITY_MASK in io.input_names:
        seeds[MODALITY_MASK] = frozenset({_MASK})
    return seeds


def branch_of(reached: frozenset[str]) -> str | None:
    """The one rule: a node only one branch reaches is that branch's; one that several branches, the fusion or the
    modality mask reach is fusion's; None when no input reaches it."""
    if not reached:
        return None
    return next(iter(reached)) if len(reached) == 1 and _MASK not in reached else FUSION


def _reachability(model: onnx.ModelProto, io: IOSpec) -> dict[str, str]:
    nodes = list(model.graph.node)  # ONNX graphs are topologically sorted
    graph = [Node(n.name, () if n.op_type in SIZE_OPS else tuple(n.input), tuple(n.output)) for n in nodes]
    reached = reach(graph, input_seeds(io))
    of_node = {n: b for n, d in reached.items() if (b := branch_of(d))}
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    # Nodes that read no input data (positions, sizes, constants) go with the nodes that use them.
    for node in reversed([n for n in nodes if n.name not in of_node]):
        used_by = {of_node.get(c) for o in node.output for c in consumers.get(o, [])} - {None}
        of_node[node.name] = used_by.pop() if len(used_by) == 1 else FUSION
    return {n.name: of_node[n.name] for n in nodes}


def fx_branches(graph: torch.fx.Graph, io: IOSpec) -> dict[str, str]:
    """The branch of each compute node of a traced torch graph (torch.export's, whose placeholders are the IOSpec's
    inputs), by `branch_of`. Nodes no input reaches (weights, constants) are left out. A backend that quantizes
    the torch graph (PT2E) floats a branch with it: every op of the branch, not only its layers, since the adds,
    softmaxes and masks between them are quantized too."""
    nodes = [
        Node(n.name, () if "sym_size" in str(n.target) else tuple(i.name for i in n.all_input_nodes), (n.name,))
        for n in graph.nodes
        if n.op != "placeholder"
    ]
    calls = {n.name for n in graph.nodes if n.op == "call_function"}
    return {n: b for n, d in reach(nodes, input_seeds(io)).items() if n in calls and (b := branch_of(d))}


def _by_prefix(model: onnx.ModelProto, prefixes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    def branch(scope: str) -> str:
        hits = [(len(p), b) for b, ps in prefixes.items() for p in ps if scope == p or scope.startswith(p + ".")]
        return max(hits)[1] if hits else FUSION

    return {n.name: branch(module_scope(n) or "") for n in model.graph.node}


def _majority(scopes: list[str], depth: int) -> str:
    prefixes = Counter(".".join(x.split(".")[:depth]) for x in scopes if x and x.count(".") + 1 >= depth)
    return prefixes.most_common(1)[0][0] if prefixes else ""


def _labels(scopes: Mapping[str, list[str]]) -> dict[str, str]:
    """Each branch with the module most of its nodes sit in, at the first depth where it is the branch's own
    ("branches.image", "aud"), so a user recognises the part of the model."""
    labels = {}
    for b, mine in scopes.items():
        module = ""
        for depth in range(1, 6):
            ours = _majority(mine, depth)
            if not ours:
                break
            if all(_majority(theirs, depth) != ours for other, theirs in scopes.items() if other != b):
                module = ours
                break
        labels[b] = f"{b} ({module})" if module and module != b else b
    return labels


def discover(model: onnx.ModelProto, io: IOSpec, override: Mapping[str, Sequence[str]] | None = None) -> Branches:
    """The branch of every node: from `override` (branch -> module prefixes) when given, else by reachability."""
    if override:
        of_node, method = _by_prefix(model, override), "edgekit-model.yaml branches"
    else:
        of_node, method = _reachability(model, io), "graph reachability"
    found = set(of_node.values())
    order = [*(m for m in io.modalities if m in found), *sorted(found - {*io.modalities, FUSION}), FUSION]
    scopes: dict[str, list[str]] = {b: [] for b in order}
    for node in model.graph.node:
        scopes[of_node[node.name]].append(module_scope(node) or "")
    return Branches(of_node, method, _labels(scopes))


@dataclass(frozen=True)
class ModuleBranches:
    """The torch side of `Branches`: each submodule's branch, and the modules that compute the model's outputs."""

    branches: Branches
    of_module: Mapping[str, str]  # module name -> branch of most of the nodes exported inside it
    output_modules: frozenset[str]  # modules of the last compute nodes before each model output

    def branch(self, name: str) -> str:
        """The branch of a module, or of its nearest ancestor that exported any node (`fusion` for none)."""
        while name:
            if name in self.of_module:
                return self.of_module[name]
            name = name.rpartition(".")[0]
        return FUSION

    def roots(self) -> dict[str, list[str]]:
        """Each modality branch's outermost modules wholly of it: a container of several branches (a ModuleDict of
        encoders, whose majority is the largest encoder's) is none's, and its children are the roots."""

        def whole(name: str, b: str) -> bool:
            return self.of_module.get(name) == b and all(
                o == b for m, o in self.of_module.items() if m.startswith(name + ".")
            )

        out: dict[str, list[str]] = {}
        for name, b in self.of_module.items():
            parent = name.rpartition(".")[0]
            if b != FUSION and whole(name, b) and not (parent and whole(parent, b)):
                out.setdefault(b, []).append(name)
        return out


def _output_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The last compute nodes on every path into a graph output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = [], set()
    todo = [o.name for o in model.graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in COMPUTE_OPS:
            found.append(node)
        else:
            todo.extend(node.input)
    return found


def module_branches(
    model: nn.Module, io: IOSpec, override: Mapping[str, Sequence[str]] | None = None
) -> ModuleBranches:
    """Branches of a torch model's modules, from its ONNX export (the exporter records each node's module)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-branches-") as tmp:
        graph = onnx.load(str(export_onnx(model, io, Path(tmp) / "model.onnx")))
    found = discover(graph, io, override)
    votes: dict[str, Counter[str]] = {}
    for node in graph.graph.node:
        scope = module_scope(node) or ""
        parts = scope.split(".") if scope else []
        for depth in range(1, len(parts) + 1):
            votes.setdefault(".".join(parts[:depth]), Counter())[found.of_node[node.name]] += 1
    of_module = {name: c.most_common(1)[0][0] for name, c in votes.items()}
    outputs = frozenset(s for n in _output_nodes(graph) if (s := module_scope(n)))
    return ModuleBranches(found, of_module, outputs)
