"""Roofline latency estimates for devices that are not at hand, always labelled `estimated`.

Each kernel of the model (a convolution, matmul, normalization, pooling or softmax; elementwise and layout
ops are assumed fused into their neighbours, as every edge runtime does) costs the larger of its compute
time (2 x MACs at the profile's peak for the precision) and its memory time (activations, weights and
outputs at the precision's width over the profile's bandwidth). Their sum is the *roofline* time; the estimate
adds the profile's launch overhead per kernel. The roofline is not a lower bound: runtimes fuse kernels and
caches serve what this model reads from DRAM, and measured runs come in under it. Recurrent ops (LSTM, GRU) count
their MACs over every step; their steps run one after another, so their estimate is optimistic.

An estimate is an interval, not a number: calibration.json holds the estimator's error on devices of each kind
(estimate / measured, from scripts/calibrate_estimator.py), and the interval divides the estimate by its
largest and smallest ratio. A budget passes on an estimate only when the pessimistic end fits (validate.py).

Per-kernel MACs and bytes come from the ONNX graph at the IOSpec's opt point, with every tensor's shape
taken from one onnxruntime run (exact, even where ONNX shape inference cannot resolve a dynamic Reshape).
They are recorded in each artifact's manifest at export, so an OpenVINO IR or a .pte file gets an
estimate too."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import graphs
from ..graphs import RECURRENT
from ..io import IOSpec
from . import HardwareProfile

# The layers (edgekit/graphs.py), and the integer forms onnxruntime's quantizer writes of them.
MATMULS = {*graphs.MATMULS, "MatMulInteger", "QLinearMatMul"}
CONVS = {*graphs.CONVS, "ConvInteger", "QLinearConv"}
# Kernels with no MACs worth counting that still read and write their tensors once.
MEMORY_KERNELS = {
    "Softmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Resize",
    "Gather", "TopK", "CumSum",
}  # fmt: skip
# Elementwise and layout ops, assumed fused into their neighbours. Any other op is costed as a memory-bound kernel
# and named in the estimate (`approximated`), so a model's unknown ops are never silently free.
FUSED = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "Gelu", "Sqrt", "Pow", "Exp", "Log",
    "Neg", "Abs", "Reciprocal", "Where", "Equal", "Not", "And", "Or", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Cast", "CastLike", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split",
    "Slice", "Expand", "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Range", "Tile", "Max", "Min",
    "QuantizeLinear", "DequantizeLinear", "Dropout", "HardSigmoid", "HardSwish", "LeakyRelu", "Softplus", "Mish",
    "IsNaN", "IsInf", "Trilu", "ScatterND", "ReduceSum", "Sign", "Floor", "Ceil", "Round", "Mod", "Pad",
}  # fmt: skip
BYTES = {"int8": 1, "fp16": 2, "fp32": 4}
CALIBRATION = Path(__file__).with_name("calibration.json")

Cost = tuple[str, str, int, int]  # (node, op type, MACs, tensor elements read + written)


def _shapes(model: Any, io: IOSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the graph, from one onnxruntime run with all of them as outputs."""
    import onnx
    import onnxruntime as ort

    graph = model.graph
    known = {o.name for o in graph.output}
    wanted = [t for n in graph.node for t in n.output if t and t not in known]
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, types[t], None) for t in wanted if t in types)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node's output
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {n: tuple(np.shape(v)) for n, v in zip(names, session.run(names, dict(feeds)), strict=True)}
    shapes.update({i.name: tuple(int(d) for d in i.dims) for i in graph.initializer})
    shapes.update({k: v.shape for k, v in feeds.items()})
    return shapes


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """An Einsum's MACs: the product of every index's size, summed or kept ("bhqd,bhkd->bhqk": b*h*q*k*d). An
    ellipsis counts the broadcast dims it stands for once."""
    sizes: dict[str, int] = {}
    for spec, shape in zip(equation.split("->")[0].split(","), shapes, strict=True):
        head, _, tail = spec.strip().partition("...")
        n = len(shape) - len(head) - len(tail)  # the dims an ellipsis stands for (0 without one)
        for i, d in enumerate(shape[len(head) : len(head) + n]):
            sizes[f"...{i - n}"] = max(sizes.get(f"...{i - n}", 1), d)  # aligned from the right, as broadcast
        sizes.update(zip(head + tail, (*shape[: len(head)], *shape[len(head) + n :]), strict=True))
    return math.prod(sizes.values())


def graph_costs(onnx_path: Path, io: IOSpec, batch: int = 1) -> list[Cost]:
    """Per-kernel MACs and tensor elements of an ONNX model at the opt point of its IOSpec."""
    import onnx

    model = onnx.load(str(onnx_path))
    feeds = io.example_inputs(batch) if "batch" in io.dims else io.example_inputs()
    shapes = _shapes(model, io, feeds)
    costs: list[Cost] = []
    for node in model.graph.node:
        op = node.op_type
        if op in FUSED:
            continue
        ins = [shapes.get(t, ()) for t in node.input if t]
        out = shapes.get(node.output[0], ())
        elements = sum(math.prod(s) for s in ins) + math.prod(out)
        macs = 0
        if op == "ConvTranspose":  # each input element meets W [C_in, C_out / groups, k...]'s C_out / groups x k...
            macs = math.prod(ins[0]) * math.prod(ins[1][1:])
        elif op in CONVS:
            weight = ins[3] if op == "QLinearConv" else ins[1]  # [C_out, C_in / groups, k...]
            macs = math.prod(out) * math.prod(weight[1:])
        elif op == "Einsum":
            macs = einsum_macs(next(a.s.decode() for a in node.attribute if a.name == "equation"), ins)
        elif op in MATMULS:
            a = ins[0]
            transposed = op == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if transposed else a[-1]
            macs = math.prod(out) * k
        elif op in RECURRENT:  # X [seq, batch, in] (either order), W [dirs, gates*hidden, in], R [..., hidden]
            macs = math.prod(ins[0][:2]) * (math.prod(ins[1]) + math.prod(ins[2]))
        costs.append((node.name, op, int(macs), int(elements)))
    return costs


@functools.cache
def calibration(kind: str, precision: str) -> dict[str, Any] | None:
    """The estimator's error on devices of a kind ("cpu", "gpu") at a precision: the smallest and largest estimate /
    measured ratio over the points measured on a profile's own device (at any precision when this one has none),
    rounded outwards; None when there are none."""
    points = json.loads(CALIBRATION.read_text())["points"] if CALIBRATION.is_file() else []
    on_device = [p for p in points if p["kind"] == kind and p["device"] and p["measured_ms"] > 0]
    same = [p for p in on_device if p["precision"] == precision]
    if not on_device:
        return None
    ratios = [p["estimate_ms"] / p["measured_ms"] for p in same or on_device]
    return {"kind": kind, "precision": precision if same else "any", "low": math.floor(100 * min(ratios)) / 100,
            "high": math.ceil(100 * max(ratios)) / 100, "points": len(ratios), "source": CALIBRATION.name}  # fmt: skip


def estimate(costs: Sequence[Sequence[Any]], profile: HardwareProfile, precision: str, top: int = 5) -> dict[str, Any]:
    """The point estimate (`point`) and the interval the calibration gives the real latency (`interval_ms`:
    optimistic, pessimistic; None without calibration points for the profile's kind)."""
    est = point(costs, profile, precision, top)
    cal = calibration(profile.kind, precision)
    ms = est["estimate_ms"]
    interval = None if cal is None else [round(ms / cal["high"], 4), round(ms / cal["low"], 4)]
    return {**est, "interval_ms": interval, "calibration": cal}


def point(costs: Sequence[Sequence[Any]], profile: HardwareProfile, precision: str, top: int = 5) -> dict[str, Any]:
    """The roofline time and the estimate (roofline + launch overheads) in ms, and the costliest kernels."""
    peak = profile.peak_tops.get(precision) or profile.peak_tops.get("fp16") or profile.peak_tops["fp32"]
    width = BYTES.get(precision, 4)
    rows = []
    for node, op, macs, elements in costs:
        compute = 2 * macs / (peak * 1e12)
        memory = elements * width / (profile.memory_bandwidth_gbs * 1e9)
        rows.append((node, op, max(compute, memory), compute >= memory))
    roofline = sum(r[2] for r in rows)
    known = MATMULS | CONVS | MEMORY_KERNELS | set(RECURRENT)
    approximated = sorted({op for _, op, _, _ in costs if op not in known})
    overhead = len(rows) * profile.launch_overhead_us * 1e-6
    return {
        "source": "estimated",
        "method": "roofline",
        "profile": profile.name,
        "precision": precision,
        "roofline_ms": round(roofline * 1e3, 4),
        "estimate_ms": round((roofline + overhead) * 1e3, 4),
        "kernels": len(rows),
        # costed by their tensors' bytes alone: ops the estimator has no MAC count for
        **({"approximated": approximated} if approximated else {}),
        "compute_bound_kernels": sum(r[3] for r in rows),
        "macs": int(sum(c[2] for c in costs)),
        "bytes": int(sum(c[3] for c in costs) * width),
        "top": [
            {"node": n, "op": op, "ms": round(t * 1e3, 4), "bound": "compute" if cb else "memory"}
            for n, op, t, cb in sorted(rows, key=lambda r: -r[2])[:top]
        ],
    }
