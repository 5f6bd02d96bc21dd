"""Static TensorRT check of an ONNX graph, run before a bundle is written (TensorRT itself is not needed).

Per node, two questions: will the device's TensorRT ONNX parser import it, and, where the device has a
DLA, can the DLA run it or will the builder put it on the GPU. The answers come from NVIDIA's documents,
kept here in their own words; the DLA answers are conservative, and the builder's own per-layer report
(dla_layers.json, written by the bundle's build_engine.py) is the final word.

Sources:
- Parser, TensorRT 8.5: onnx/onnx-tensorrt docs/operators.md at commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc
  ("TensorRT 8.5 supports operators up to Opset 17"; the later of the two 8.5 revisions, matching the 8.5 GA
  changelog, which adds Mod; the earlier one, 0f305925, still listed HardSwish, Mod and OneHot as N).
- Parser, TensorRT 10.3: no 10.3 revision of operators.md was available, so the table is the 10.15 revision
  (docs/operators.md at commit fa5aa9f61e7781d2ca8f5351d42c1f19525a6124) minus what docs/Changelog.md says
  came after 10.3 (trt_ops/tensorrt-10.3.json). The opset range is the 10.0 revision's ("opset 9 to opset 20").

The tables are data (trt_ops/*.json, each with its source and version); this module keeps only the checks.
- DLA, TensorRT 8.5: the TensorRT 8.x Developer Guide, "DLA Supported Layers and Restrictions".
- DLA, TensorRT 10.3: the DLA notes of the TensorRT 10.x API (include/NvInfer.h of NVIDIA/TensorRT) and the
  general restrictions of the current guide ("DLA does not support dynamic dimensions ...")."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UsageError

Status = Literal["ok", "unsupported", "gpu-fallback"]


# -- the parser tables: data files in trt_ops/, each naming its source and TensorRT version -----------------------
# scripts/trt_op_tables.py writes a table from an onnx-tensorrt docs/operators.md, or checks the shipped one against it.

TABLE_DIR = Path(__file__).with_name("trt_ops")


@dataclass(frozen=True)
class OpSupport:
    types: tuple[str, ...]  # the "Supported Types" column
    restriction: str = ""  # the "Restrictions" column


@dataclass(frozen=True)
class OpTable:
    """One operators.md revision: the rows marked Y with their types and restriction, and the rows marked N."""

    tensorrt: str
    source: str
    max_opset: int
    int64_native: bool  # TensorRT < 9 casts INT64 down to INT32 (operators.md, 8.5 note)
    supported: Mapping[str, OpSupport]
    not_supported: frozenset[str]


def _types(column: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in column.split(",") if t.strip())


def load_table(name: str) -> OpTable:
    d = json.loads((TABLE_DIR / name).read_text())
    rows = {op: OpSupport(_types(cols[0]), cols[1] if len(cols) > 1 else "") for op, cols in d["supported"].items()}
    return OpTable(d["tensorrt"], d["source"], d["max_opset"], d["int64_native"], rows, frozenset(d["not_supported"]))


def read_back(base: OpTable, changes: Mapping[str, Any]) -> OpTable:
    """A later revision's table as of an earlier TensorRT: less the ops its Changelog says came after, with the
    restrictions that held then, and the types that differed (tensorrt-10.3.json)."""
    rows = {op: s for op, s in base.supported.items() if op not in changes["added_after"]}
    rows |= {op: OpSupport(base.supported[op].types, r) for op, r in changes["restrictions_lifted_after"].items()}
    rows |= {op: OpSupport(_types(t["types"]), base.supported[op].restriction) for op, t in changes["types"].items()}
    return OpTable(changes["tensorrt"], f"{base.source}, less {changes['source']}", changes["max_opset"],
                   base.int64_native, rows, base.not_supported | frozenset(changes["added_after"]))  # fmt: skip


_TRT_8_5 = load_table("onnx-tensorrt-8.5.json")
_TRT_10_15 = load_table("onnx-tensorrt-10.15.json")
_TRT_10_3 = read_back(_TRT_10_15, json.loads((TABLE_DIR / "tensorrt-10.3.json").read_text()))


# -- statically checkable restrictions: each returns why the node breaks it, or None -------------------------

Check = Callable[[onnx.NodeProto, "_Graph"], "str | None"]


def _const_input(index: int, what: str) -> Check:
    def check(n: onnx.NodeProto, g: _Graph) -> str | None:
        name = n.input[index] if len(n.input) > index else ""
        return None if not name or name in g.consts else f"`{what}` is computed at run time; it must be a constant"

    return check


def _zero_point(n: onnx.NodeProto, g: _Graph) -> str | None:
    zp = n.input[2] if len(n.input) > 2 else ""
    if not zp:
        return None
    if zp not in g.consts:
        return "the zero point is computed at run time; it must be a constant zero"
    return None if not np.any(g.consts[zp]) else "the zero point is not zero (TensorRT quantizes symmetrically)"


def _pool(dilations: bool) -> Check:
    def check(n: onnx.NodeProto, g: _Graph) -> str | None:
        a = _attrs(n)
        if len(a.get("kernel_shape", ())) not in (2, 3):
            return f"{len(a.get('kernel_shape', ()))}D pooling; only 2D or 3D pooling is supported"
        if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
            return "the `Indices` output is unsupported"
        if dilations and any(d != 1 for d in a.get("dilations", ())):
            return "`dilations` must be empty or all ones"
        return None

    return check


def _lp_pool(n: onnx.NodeProto, g: _Graph) -> str | None:
    return "`dilations` must be empty or all ones" if any(d != 1 for d in _attrs(n).get("dilations", ())) else None


def _resize(antialias: bool) -> Check:
    modes = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
    nearest = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}

    def check(n: onnx.NodeProto, g: _Graph) -> str | None:
        a = _attrs(n)
        if (m := a.get("coordinate_transformation_mode", "half_pixel")) not in modes:
            return f"coordinate_transformation_mode '{m}' is unsupported"
        if (m := a.get("mode", "nearest")) not in ("nearest", "linear"):
            return f"mode '{m}' is unsupported"
        if (m := a.get("nearest_mode", "round_prefer_floor")) not in nearest:
            return f"nearest_mode '{m}' is unsupported"
        if antialias and a.get("antialias", 0):
            return "antialiasing is not supported"
        if antialias and a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            return "only the `stretch` aspect ratio policy is supported"
        return None

    return check


def _einsum(n: onnx.NodeProto, g: _Graph) -> str | None:
    return "ellipsis ('...') is not supported" if "..." in _attrs(n).get("equation", "") else None


def _instance_norm(n: onnx.NodeProto, g: _Graph) -> str | None:
    return None if all(i in g.consts for i in n.input[1:3]) else "`scale` and `B` must be initializers"


def _layer_norm(n: onnx.NodeProto, g: _Graph) -> str | None:
    return "only the first output `Y` is supported" if any(n.output[1:]) else None


def _dropout(n: onnx.NodeProto, g: _Graph) -> str | None:
    t = n.input[2] if len(n.input) > 2 else ""
    if t and (t not in g.consts or bool(np.any(g.consts[t]))):
        return "`is_training` must be an initializer and evaluate to False"
    return None


def _topk_10(n: onnx.NodeProto, g: _Graph) -> str | None:
    if _attrs(n).get("sorted", 1) != 1:
        return "`sorted` must be 1"
    k = g.consts.get(n.input[1]) if len(n.input) > 1 else None
    return "`K` must be less than 3840" if k is not None and int(np.max(k)) >= 3840 else None


def _scatter_nd(n: onnx.NodeProto, g: _Graph) -> str | None:
    r = _attrs(n).get("reduction", "none")
    return f"`reduction` '{r}' is not supported (only `none`)" if r != "none" else None


def _lstm(n: onnx.NodeProto, g: _Graph) -> str | None:
    a = _attrs(n)
    return "`input_forget` and `layout` must be 0" if a.get("input_forget", 0) or a.get("layout", 0) else None


_CHECKS_8_5: dict[str, Check] = {
    "AveragePool": _pool(dilations=False),
    "CumSum": _const_input(1, "axis"),
    "DequantizeLinear": _zero_point,
    "Einsum": _einsum,
    "InstanceNormalization": _instance_norm,
    "MaxPool": _pool(dilations=False),
    "QuantizeLinear": _zero_point,
    "Resize": _resize(antialias=False),
    "Slice": _const_input(3, "axes"),
    "Squeeze": _const_input(1, "axes"),
    "TopK": _const_input(1, "K"),
    "Unsqueeze": _const_input(1, "axes"),
}
_CHECKS_10_3: dict[str, Check] = {
    "AveragePool": _pool(dilations=True),
    "CumSum": _const_input(1, "axis"),
    "DequantizeLinear": _zero_point,
    "Dropout": _dropout,
    "Einsum": _einsum,
    "LayerNormalization": _layer_norm,
    "LpPool": _lp_pool,
    "LSTM": _lstm,
    "MaxPool": _pool(dilations=True),
    "OneHot": _const_input(2, "depth"),
    "Pad": _const_input(3, "axes"),
    "QuantizeLinear": _zero_point,
    "Resize": _resize(antialias=True),
    "ScatterND": _scatter_nd,
    "Squeeze": _const_input(1, "axes"),
    "TopK": _topk_10,
    "Unsqueeze": _const_input(1, "axes"),
    **{op: _const_input(1, "axes") for op in _TRT_10_15.supported if op.startswith("Reduce")},
}


@dataclass(frozen=True)
class ParserTable:
    """A TensorRT version's parser: its operators.md table and the restrictions checkable statically."""

    version: str  # major.minor
    table: OpTable
    checks: Mapping[str, Check]

    @property
    def ops(self) -> Mapping[str, OpSupport]:
        return self.table.supported

    @property
    def not_supported(self) -> frozenset[str]:
        return self.table.not_supported

    @property
    def max_opset(self) -> int:
        return self.table.max_opset

    @property
    def int64_native(self) -> bool:
        return self.table.int64_native

    @property
    def source(self) -> str:
        return self.table.source


TABLES = {"8.5": ParserTable("8.5", _TRT_8_5, _CHECKS_8_5), "10.3": ParserTable("10.3", _TRT_10_3, _CHECKS_10_3)}


def table_for(trt_version: str) -> ParserTable:
    """The table for a TensorRT version, matched on major.minor ("10.3.0.30" -> "10.3")."""
    key = ".".join(str(trt_version).strip().split(".")[:2])
    if key not in TABLES:
        raise UsageError(
            f"no TensorRT operator table for version '{trt_version}'",
            f"known versions: {', '.join(TABLES)} (set the profile's software.tensorrt to one of them)",
        )
    return TABLES[key]


# -- DLA ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlaRules:
    source: str
    softmax: str | None  # why DLA SoftMax is unavailable, or None where it is
    qdq: str | None  # why a Q/DQ (explicitly quantized) graph cannot use the DLA, or None where it can


DLA_RULES: dict[str, DlaRules] = {
    "8.5": DlaRules(
        "TensorRT 8.x Developer Guide, DLA Supported Layers and Restrictions",
        "the TensorRT 8.5 DLA runs SoftMax only on Orin, not Xavier",
        "the TensorRT 8.x DLA does not support explicit quantization (Q/DQ); its INT8 comes from calibration",
    ),
    "10.3": DlaRules(
        "TensorRT 10.x API DLA notes (NvInfer.h) and the DLA guide's general restrictions",
        None,
        None,  # 10.x: IQuantizeLayer/IDequantizeLayer run on the DLA (symmetric, unless a parser flag allows more)
    ),
}
# ONNX ops and the DLA layer TensorRT imports them as. Anything else runs on the GPU.
DLA_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Max", "Min"})  # kSUM, kSUB, kPROD, kMAX, kMIN
# Leaky ReLU is in both guides' DLA lists (the 10.x API note names only ReLU, Sigmoid, TanH, Clip).
DLA_ACTIVATIONS = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu"})  # plus Clip as a clipped ReLU
DLA_BATCH_MAX, DLA_DIM_MAX = 4096, 8192  # batch = product of all dims but the last three (C, H, W)


def _dla_reason(n: onnx.NodeProto, g: _Graph, rules: DlaRules) -> str | None:
    """Why the DLA cannot run this node (so TensorRT puts it on the GPU), or None if it can."""
    shapes = [g.shapes.get(t) or () for t in (*n.input, *n.output) if t]
    if any(isinstance(d, str) for s in shapes for d in s):
        return "dynamic dims: the DLA needs static shapes (profile min = opt = max)"
    for s in (g.shapes.get(t) for t in n.output):
        if s and all(isinstance(d, int) for d in s):
            if any(d > DLA_DIM_MAX for d in s[-3:]) or int(np.prod(s[:-3], dtype=np.int64)) > DLA_BATCH_MAX:
                return f"output shape {list(s)} exceeds the DLA limits (batch {DLA_BATCH_MAX}, C/H/W {DLA_DIM_MAX})"
    op, a = n.op_type, _attrs(n)
    if op in DLA_ELEMENTWISE or op in DLA_ACTIVATIONS or op in ("Abs", "BatchNormalization"):
        return None
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return rules.qdq
    if op == "Clip":
        lo, hi = (g.scalar(n.input[i]) if len(n.input) > i and n.input[i] else None for i in (1, 2))
        lo, hi = a.get("min", lo), a.get("max", hi)
        ok = lo == 0 and hi is not None and 1 <= hi <= 127
        return None if ok else "the DLA runs Clip only as a clipped ReLU: min 0, max in [1, 127]"
    if op in ("Conv", "ConvTranspose"):
        return _dla_conv(n, g, a)
    if op in ("MaxPool", "AveragePool"):
        return _dla_limits(
            a.get("kernel_shape", []),
            [("window", a.get("kernel_shape", []), 1, 8), ("stride", a.get("strides", []), 1, 16),
             ("padding", a.get("pads", []), 0, 7)],
        )  # fmt: skip
    if op in ("GlobalMaxPool", "GlobalAveragePool"):
        s = g.shapes.get(n.input[0])
        window = list(s[2:]) if s else []
        return _dla_limits(window, [("window (the whole plane)", window, 1, 8)])
    if op == "PRelu":
        slope, x = g.consts.get(n.input[1]), g.shapes.get(n.input[0])
        ok = slope is not None and (x is None or slope.ndim == len(x))
        return None if ok else "the PReLU slope must be a build-time constant of the input's rank"
    if op == "LRN":
        return None if a.get("size") in (3, 5, 7, 9) else "the DLA LRN window must be 3, 5, 7 or 9"
    if op == "Concat":
        rank = len(g.shapes.get(n.output[0]) or ())
        axis = a.get("axis", 0) % rank if rank else None
        if len([i for i in n.input if i]) < 2 or rank < 3 or axis != rank - 3:
            return "the DLA concatenates at least two inputs along the channel axis (third from last) only"
        return None
    if op == "Resize":
        return _dla_resize(n, g, a)
    if op == "Slice":
        return _dla_slice(n, g)
    if op == "Softmax":
        return rules.softmax or _dla_softmax(n, g, a)
    if op in ("Gemm", "MatMul"):
        return (
            f"{op} imports as a matrix multiply, not one of the DLA layers (convolution, pooling, activation, "
            "elementwise, scale, LRN, concat, resize, slice, softmax, unary abs)"
        )
    return f"{op} has no DLA layer ({rules.source})"


def _dla_limits(dims: list[int] | tuple[int, ...], limits: list[tuple[str, Any, int, int]]) -> str | None:
    if len(dims) != 2:
        return f"{len(dims)}D: the DLA runs 2D operations only"
    for what, values, lo, hi in limits:
        if any(not lo <= v <= hi for v in values):
            return f"{what} {list(values)} is outside the DLA range [{lo}, {hi}]"
    return None


def _dla_conv(n: onnx.NodeProto, g: _Graph, a: dict[str, Any]) -> str | None:
    w = g.consts.get(n.input[1]) if len(n.input) > 1 else None
    kernel = list(a.get("kernel_shape", w.shape[2:] if w is not None else []))
    pads, strides = list(a.get("pads", [])), list(a.get("strides", []))
    if n.op_type == "ConvTranspose":
        wide = sorted(kernel)[:1] == [1] and max(kernel) in (64, 96, 128)  # 1 x 64/96/128 kernels are allowed
        if len(kernel) == 2 and not (all(1 <= k <= 32 for k in kernel) or wide):
            return f"deconvolution kernel {kernel} is outside the DLA range ([1, 32], or 1 x 64/96/128)"
        if any(pads) or a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [])):
            return "the DLA runs deconvolution only without padding, groups or dilation"
        return _dla_limits(kernel, [("stride", strides, 1, 32)])
    why = _dla_limits(
        kernel,
        [("kernel", kernel, 1, 32), ("stride", strides, 1, 8), ("padding", pads, 0, 31),
         ("dilation", a.get("dilations", []), 1, 32)],
    )  # fmt: skip
    if why:
        return why
    if any(p >= kernel[i % 2] for i, p in enumerate(pads)):
        return f"padding {pads} is not smaller than the kernel {kernel}"
    if w is not None and not 1 <= w.shape[0] <= 8192:
        return f"{w.shape[0]} output maps: the DLA allows [1, 8192]"
    return None if a.get("group", 1) <= 8192 else "more than 8192 groups"


def _dla_resize(n: onnx.NodeProto, g: _Graph, a: dict[str, Any]) -> str | None:
    scales = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    linear = a.get("mode", "nearest") == "linear"
    hi = 4 if linear else 32
    if scales is None or scales.size != 4 or list(scales[:2]) != [1, 1]:
        return "the DLA resizes with 4 constant scales whose first two are 1"
    if any(s != int(s) or not 1 <= s <= hi for s in scales[2:]):
        return f"the DLA resize scales must be integers in [1, {hi}] ({'bilinear' if linear else 'nearest'})"
    return None


def _dla_slice(n: onnx.NodeProto, g: _Graph) -> str | None:
    s = g.shapes.get(n.input[0])
    if not all(i in g.consts for i in n.input[1:] if i):
        return "the DLA slices with static parameters only"
    axes = g.consts.get(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    if s is None or len(s) != 4 or (axes is not None and 0 in [int(x) % 4 for x in axes]):
        return "the DLA slices 4-D inputs along C, H and W only"
    return None


def _dla_softmax(n: onnx.NodeProto, g: _Graph, a: dict[str, Any]) -> str | None:
    s = g.shapes.get(n.input[0])
    if not s:
        return "input shape unknown"
    axis = a.get("axis", -1) % len(s)
    if axis < len(s) - 3:
        return "the softmax axis must be a channel or spatial dimension (one of the last three)"
    others = [d for i, d in enumerate(s[-3:], start=len(s) - 3) if i != axis]
    limit = 8192 if all(d == 1 for d in others) else 1024
    return None if s[axis] <= limit else f"the softmax axis has {s[axis]} elements; the DLA allows {limit} here"


# -- the graph, as the checks see it ----------------------------------------------------------------------------


class _Graph:
    """Constants, shapes and dtypes of every tensor, from ONNX shape inference (input shapes optionally pinned)."""

    def __init__(self, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None) -> None:
        if shapes:  # pin the inputs and let inference redo every other shape (exporters leave symbolic ones)
            model = copy.deepcopy(model)
            del model.graph.value_info[:]
            for vi in model.graph.input:
                for d, size in zip(vi.type.tensor_type.shape.dim, shapes.get(vi.name, ()), strict=False):
                    d.Clear()
                    d.dim_value = int(size)
            for vi in model.graph.output:
                vi.type.tensor_type.ClearField("shape")
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            pass  # the checks work without shapes; the shape-based DLA rules then say so
        # The graph's own symbolic dims stay names; ones inference made up ("unk__3") are just unknown (None).
        symbolic = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int | str | None, ...]] = {}
        self.dtypes: dict[str, int] = {}
        for sub in _graphs(model.graph):
            self.consts.update((t.name, numpy_helper.to_array(t)) for t in sub.initializer)
            for n in sub.node:
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                    self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            for vi in (*sub.input, *sub.value_info, *sub.output):
                tt = vi.type.tensor_type
                self.dtypes[vi.name] = tt.elem_type
                if tt.HasField("shape"):
                    self.shapes[vi.name] = tuple(_dim(d, symbolic) for d in tt.shape.dim)
        self.functions = {(f.domain, f.name) for f in model.functions}
        self.folded = self._folded(model.graph)

    def _folded(self, g: onnx.GraphProto) -> set[str]:
        """Nodes (by first output) TensorRT evaluates at build time: constant inputs, and with static input
        shapes, shape arithmetic. They never reach the DLA or the GPU."""
        static = all(isinstance(d, int) for t in g.input for d in self.shapes.get(t.name, (None,)))
        known, out = set(self.consts), set()
        for n in g.node:
            inputs = [i for i in n.input if i]
            if (n.op_type in ("Shape", "Size") and static) or (inputs and all(i in known for i in inputs)):
                known.update(n.output)
                out.add(n.output[0])
        return out

    def scalar(self, name: str) -> float | None:
        v = self.consts.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for n in graph.node:
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _graphs(sub)


def _dim(d: onnx.TensorShapeProto.Dimension, symbolic: set[str]) -> int | str | None:
    if d.HasField("dim_value"):
        return d.dim_value
    return d.dim_param if d.dim_param in symbolic else None


def _attrs(n: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in n.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# -- the check ----------------------------------------------------------------------------------------------------

DTYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE",
}  # fmt: skip


@dataclass(frozen=True)
class NodeCheck:
    name: str
    op_type: str
    status: Status
    reason: str = ""  # why it would not parse, or why the DLA cannot run it
    notes: tuple[str, ...] = ()  # what the tables say that does not block: casts, restrictions not checkable here


@dataclass(frozen=True)
class OpReport:
    trt_version: str  # the table used (major.minor)
    requested: str  # the version asked for, e.g. the profile's "10.3.0"
    dla: bool
    opset: int
    nodes: tuple[NodeCheck, ...]
    model_issues: tuple[str, ...] = ()  # whole-model blockers, e.g. an opset newer than the parser's
    model_notes: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # input shapes pinned for the check
    sources: tuple[str, ...] = ()

    @property
    def unsupported(self) -> tuple[NodeCheck, ...]:
        return tuple(n for n in self.nodes if n.status == "unsupported")

    @property
    def gpu_fallback(self) -> tuple[NodeCheck, ...]:
        return tuple(n for n in self.nodes if n.status == "gpu-fallback")

    @property
    def parses(self) -> bool:
        return not self.unsupported and not self.model_issues

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(n.op_type for n in self.nodes).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt": self.trt_version,
            "requested": self.requested,
            "dla": self.dla,
            "opset": self.opset,
            "parses": self.parses,
            "counts": dict(Counter(n.status for n in self.nodes)),
            "ops": self.op_counts(),
            "model_issues": list(self.model_issues),
            "model_notes": list(self.model_notes),
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "sources": list(self.sources),
            "nodes": [
                {"name": n.name, "op": n.op_type, "status": n.status, "reason": n.reason, "notes": list(n.notes)}
                for n in self.nodes
            ],
        }


ROW_HEADER = ("node", "op", "status", "detail")


def report_rows(report: OpReport, problems_only: bool = False) -> list[tuple[str, str, str, str]]:
    """One row per node (node, op, status, reason or notes); with `problems_only`, only the non-ok ones."""
    return [
        (n.name, n.op_type, n.status, n.reason or "; ".join(n.notes))
        for n in report.nodes
        if not problems_only or n.status != "ok"
    ]


def check_onnx(
    model: onnx.ModelProto,
    trt_version: str,
    dla: bool,
    precision: str = "fp16",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> OpReport:
    """Check every node against the TensorRT `trt_version` ONNX parser and, with `dla`, against the DLA.

    `shapes` pins the graph inputs (the DLA needs static shapes; with dynamic dims every layer that sees
    them is reported as a GPU fallback). `precision` matters only for the DLA, which runs FP16 and INT8."""
    table = table_for(trt_version)
    rules = DLA_RULES[table.version]
    g = _Graph(model, shapes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    issues, notes = [], []
    if opset > table.max_opset:
        issues.append(
            f"the model is opset {opset}; the TensorRT {table.version} parser is documented up to opset "
            f"{table.max_opset} (operators whose signature changed since would be misread)"
        )
    if not table.int64_native and onnx.TensorProto.INT64 in g.dtypes.values():
        notes.append("INT64 tensors are cast down to INT32 (values clamped to +-INT_MAX); int64 inputs bind as int32")
    if onnx.TensorProto.DOUBLE in g.dtypes.values():
        notes.append("DOUBLE tensors are cast down to FLOAT")
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n, _ in _walk(model.graph, ""))
    dla_off = "the DLA runs FP16 and INT8 only" if precision == "fp32" else rules.qdq if qdq else None
    checks = [_check_node(n, prefix, g, table, rules if dla else None, dla_off) for n, prefix in _walk(model.graph, "")]
    sources = (table.source, *([rules.source] if dla else []))
    return OpReport(
        table.version, str(trt_version), dla, opset, tuple(checks), tuple(issues), tuple(notes),
        {k: tuple(v) for k, v in (shapes or {}).items()}, sources,
    )  # fmt: skip


def _walk(graph: onnx.GraphProto, prefix: str) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node, including those of If/Loop/Scan bodies (named parent/child)."""
    for n in graph.node:
        yield n, prefix
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _walk(sub, f"{prefix}{n.name}/")


def _check_node(
    n: onnx.NodeProto, prefix: str, g: _Graph, table: ParserTable, dla: DlaRules | None, dla_off: str | None
) -> NodeCheck:
    name, op, domain = prefix + (n.name or n.output[0]), n.op_type, n.domain or ""

    def done(status: Status, reason: str = "", notes: tuple[str, ...] = ()) -> NodeCheck:
        return NodeCheck(name, op, status, reason, notes)

    if (domain, op) in g.functions:
        if table.version == "8.5":
            return done("unsupported", "ONNX local functions need TensorRT 9.0 or newer (onnx-tensorrt changelog)")
        return done("ok", notes=("a local function: TensorRT imports its body, which is not checked here",))
    if domain not in ("", "ai.onnx"):
        return done("unsupported", f"custom domain '{domain}': TensorRT {table.version} needs a plugin for {op}")
    support = table.ops.get(op)
    if support is None:
        where = "marked unsupported (N) in" if op in table.not_supported else "not in"
        return done("unsupported", f"{op} is {where} the TensorRT {table.version} ONNX operator table")
    check = table.checks.get(op)
    if check and (why := check(n, g)):
        return done("unsupported", why)
    notes = []
    if support.restriction and not check:
        notes.append(f"not checked here: {support.restriction}")
    dtype = DTYPE_NAMES.get(g.dtypes.get(n.input[0], 0), "") if n.input and n.input[0] else ""
    if dtype == "INT64" and not table.int64_native:
        dtype = "INT32"
    if dtype and dtype != "DOUBLE" and support.types and dtype not in support.types:
        notes.append(f"computes in {dtype}; the table lists {', '.join(support.types)}")
    if dla is not None and not (n.output and n.output[0] in g.folded):
        if why := dla_off or _dla_reason(n, g, dla):
            return done("gpu-fallback", why, tuple(notes))
    return done("ok", notes=tuple(notes))
