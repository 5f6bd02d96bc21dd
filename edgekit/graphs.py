"""One vocabulary for the graphs EdgeKit reads (ONNX, OpenVINO, torch.fx): which ops are the layers that carry
weights and MACs, and which inputs reach each node.

Branch discovery, the INT8 search's units, the Q/DQ schemes, the output layers and the roofline estimator all
draw their op lists from here, so they agree on what a layer is (ConvTranspose and Einsum included)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CONVS = ("Conv", "ConvTranspose")
MATMULS = ("MatMul", "Gemm", "Einsum")
RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gates per step
# The layers: ops with weights whose MACs dominate a model's time, and what quantization targets.
COMPUTE_OPS = (*CONVS, *MATMULS, *RECURRENT)
# Their outputs are sizes, not data of the tensor they read (ONNX's Shape and Size, OpenVINO's ShapeOf).
SIZE_OPS = ("Shape", "Size", "ShapeOf")


@dataclass(frozen=True)
class Node:
    """One op of any graph, as reachability sees it: the values it reads and writes."""

    name: str
    reads: tuple[str, ...]  # empty for an op that reads only sizes
    writes: tuple[str, ...]


def reach(nodes: Iterable[Node], seeds: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The seeds (labels of graph inputs, or of nodes already known) that reach each node, walking `nodes` in
    topological order. A node named in `seeds` carries its own labels onward, whatever reaches it."""
    deps = dict(seeds)
    out = {}
    for node in nodes:
        d = seeds.get(node.name)
        if d is None:
            d = frozenset().union(*(deps.get(v, frozenset()) for v in node.reads))
        out[node.name] = d
        for v in node.writes:
            deps[v] = d
    return out
