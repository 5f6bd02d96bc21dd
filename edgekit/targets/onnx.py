"""ONNX, the hub format: dynamo export at opset 18 with the IOSpec's symbolic dims made dynamic, then
onnxslim. Every other target starts from this file or is checked against the same source model.

The legacy exporter bakes the traced sequence length into attention reshapes, so it is not used."""

from __future__ import annotations

import contextlib
import inspect
import io as _io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import UsageError
from ..fsutil import atomic_path
from ..io import IOSpec

OPSET = 18


def dynamic_shapes(io: IOSpec) -> dict[str, dict[int, torch.export.Dim]]:
    """torch.export dims for every symbolic dim whose range is not a single size (those are static)."""
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in io.dims.items() if r.min < r.max}
    return {t.name: {i: dims[d] for i, d in enumerate(t.shape) if d in dims} for t in io.inputs}


def trace_inputs(io: IOSpec) -> dict[str, torch.Tensor]:
    """Example inputs away from the range ends of dynamic dims: a size of 1 would be specialised as a constant."""
    sizes = {d: (max(r.opt, 2) if r.min < r.max else r.opt) for d, r in io.dims.items()}
    return io.example_torch(**sizes)


def export_onnx(model: nn.Module, io: IOSpec, path: Path, slim: bool = False) -> Path:
    """Export `model` (called with keyword inputs named as in `io`) to `path`, written atomically.

    With `slim`, onnxslim folds constants and fuses patterns the dynamo exporter leaves behind."""
    model = model.eval()
    path = Path(path)
    # The exporter logs a warning per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (), str(tmp), kwargs=trace_inputs(io), dynamic_shapes=dynamic_shapes(io), dynamo=True,
                opset_version=OPSET, input_names=io.input_names, output_names=[f"{TEMP}{i}" for i in
                range(len(io.output_names))], external_data=False,
            )  # fmt: skip
        except Exception as e:
            raise export_error(model, e) from e
        raw = name_outputs(onnx.load(str(tmp)), io.output_names)
        onnx.save(slimmed(raw) if slim else raw, str(tmp))
    return path


TEMP = "edgekit_output_"


def name_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Give the graph outputs the IOSpec's names. The exporter names values after their modules, so a model's own
    value can already be called like an output ("embedding"); it is renamed first, or the graph would define the
    name twice."""
    graph = model.graph

    def rename(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if x == old else x for x in node.input]
            node.output[:] = [new if x == old else x for x in node.output]
        for v in [*graph.output, *graph.value_info]:
            if v.name == old:
                v.name = new

    for i, name in enumerate(names):
        if any(name in node.output for node in graph.node):
            rename(name, f"{name}_")
        rename(f"{TEMP}{i}", name)
    return model


def slimmed(raw: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's folded and fused graph, with module scopes kept; the graph as exported where onnxslim fails on it
    (0.1.98 recurses without end on a GRU's empty optional inputs): slimming is an optimisation, not a need."""
    import onnxslim

    try:
        return keep_scopes(raw, onnxslim.slim(raw))
    except Exception as e:  # any failure of the optimiser leaves the export as it is
        logging.getLogger("edgekit").warning("onnxslim failed (%s); the exported graph is kept unslimmed", e)
        return raw


def keep_scopes(raw: onnx.ModelProto, slimmed: onnx.ModelProto) -> onnx.ModelProto:
    """Copy each node's module scope (the exporter's `namespace` metadata, e.g. ".../branches.audio: ...")
    from the raw export onto the slimmed graph by node name: onnxslim drops metadata, and per-branch
    quantization needs to know which branch a Conv or MatMul belongs to."""
    scopes = {n.name: p.value for n in raw.graph.node for p in n.metadata_props if p.key == "namespace"}
    for node in slimmed.graph.node:
        if node.name in scopes and not any(p.key == "namespace" for p in node.metadata_props):
            node.metadata_props.add(key="namespace", value=scopes[node.name])
    return slimmed


def module_scope(node: onnx.NodeProto) -> str | None:
    """The innermost module path of a node ("branches.text.encoder.layers.0.linear1"), if recorded."""
    ns = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    # "": Root/branches.text: TextBranch/branches.text.encoder: ...: the last segment is the aten op itself.
    paths = [
        seg.split(": ")[0] for seg in ns.split("/")[1:] if ": " in seg and not seg.split(": ")[1].startswith("aten.")
    ]
    return paths[-1] if paths else None


def to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Down-convert for runtimes whose parser stops below opset 18 (TensorRT 8.5 reads up to 17).

    onnx's converter moves ReduceMean's axes back into an attribute but leaves opset 18's
    `noop_with_empty_axes` behind, which opset 17 does not define; it is dropped (its default, 0, is
    what opset 17 does anyway). ReduceSum has taken axes as an input since opset 13 and keeps it."""
    from onnx import version_converter

    converted = version_converter.convert_version(model, opset)
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.checker.check_model(converted, full_check=True)
    return converted


def decompose_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite LayerNormalization (opset 17) as ReduceMean/Sub/Mul/Add/Sqrt/Div for parsers that lack it
    (TensorRT < 8.6). Needs axis < 0 and a graph at opset <= 17 (ReduceMean with an axes attribute)."""
    from onnx import helper, numpy_helper

    nodes: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if n.op_type != "LayerNormalization":
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        axis, eps = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))
        if axis >= 0 or len([o for o in n.output if o]) > 1:
            raise UsageError(f"cannot rewrite LayerNormalization '{n.name}' (axis {axis}, {len(n.output)} outputs)")
        axes, p = list(range(axis, 0)), f"{n.name}/ln"
        model.graph.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), f"{p}/eps"))
        nodes += [
            helper.make_node("ReduceMean", [n.input[0]], [f"{p}/mean"], axes=axes, keepdims=1),
            helper.make_node("Sub", [n.input[0], f"{p}/mean"], [f"{p}/d"]),
            helper.make_node("Mul", [f"{p}/d", f"{p}/d"], [f"{p}/d2"]),
            helper.make_node("ReduceMean", [f"{p}/d2"], [f"{p}/var"], axes=axes, keepdims=1),
            helper.make_node("Add", [f"{p}/var", f"{p}/eps"], [f"{p}/vareps"]),
            helper.make_node("Sqrt", [f"{p}/vareps"], [f"{p}/std"]),
            helper.make_node("Div", [f"{p}/d", f"{p}/std"], [f"{p}/norm"]),
        ]
        scaled = n.output[0] if len(n.input) < 3 or not n.input[2] else f"{p}/scaled"
        nodes.append(helper.make_node("Mul", [f"{p}/norm", n.input[1]], [scaled]))
        if scaled != n.output[0]:
            nodes.append(helper.make_node("Add", [scaled, n.input[2]], [n.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def lower_onnx(src: Path, dst: Path, opset: int, keep_layernorm: bool) -> list[str]:
    """Write `src` lowered to `opset` (and without LayerNormalization unless kept) to `dst`; say what changed."""
    model = to_opset(onnx.load(str(src)), opset)
    changes = [f"opset {OPSET} -> {opset}"]
    if not keep_layernorm:
        model = decompose_layernorm(model)
        changes.append("LayerNormalization decomposed")
    onnx.save(model, str(dst))
    return changes


def export_error(model: nn.Module, e: Exception) -> UsageError:
    """Name the module whose forward the exporter could not trace (data-dependent control flow etc.)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(e))
    for file, line, _ in reversed(frames):
        for name, mod in model.named_modules():
            fwd = type(mod).forward
            try:
                lines, start = inspect.getsourcelines(fwd)
                src = inspect.getsourcefile(fwd)
            except (OSError, TypeError):
                continue
            if src and Path(src).resolve() == Path(file).resolve() and start <= int(line) < start + len(lines):
                where = name or "the model itself"
                return UsageError(
                    f"ONNX export cannot trace {type(mod).__name__} ('{where}', {Path(file).name}:{line}): "
                    f"{_first_line(e)}",
                    "make its forward independent of tensor values (use torch.where/torch.cond instead of if/loops)",
                )
    return UsageError(f"ONNX export failed: {_first_line(e)}", "rerun with --debug for the exporter's trace")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
