"""ExecuTorch .pte for phones: torch.export with the IOSpec's dynamic dims, INT8 through PT2E with the
XNNPACK quantizer, then every op XNNPACK supports lowered to its delegate.

What stays outside the delegate runs on ExecuTorch's portable kernels, which are far slower, so the manifest
records how many nodes were delegated and which ops were not. Lowering can also narrow a dynamic dim: torch's
fake convolution guards the batch below 16 while it picks a CPU conv backend, and the program's memory is then
planned for at most 15 samples. The manifest records the planned bounds; the runner splits larger batches."""

from __future__ import annotations

import functools
import linecache
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifact import Artifact, versions
from ..data.calibration import CalibrationSet
from ..errors import EdgeKitError, UsageError
from ..fsutil import atomic_dir
from ..io import IOSpec
from ..runtimes import require
from .onnx import dynamic_shapes, trace_inputs

PTE = "model.pte"
DELEGATE = "XnnpackBackend"


def export_pte(
    model: nn.Module,
    io: IOSpec,
    out_dir: Path,
    precision: str,
    calib: CalibrationSet | None,
    parent: str,
    meta: dict[str, Any],
    float_modules: Sequence[str] = (),
    branch_roots: Callable[[], Mapping[str, Sequence[str]]] | None = None,
    float_ops: Callable[[torch.fx.Graph], Collection[str]] | None = None,
) -> Artifact:
    """Write `out_dir` (model.pte + manifest.json) atomically and return its artifact. INT8 leaves the ops inside
    `float_modules` (module paths, e.g. "branches.text") and the nodes `float_ops` names in the traced graph (a
    floated branch's every op: branches.fx_branches) in float: the accuracy-aware loop's exclusions. When PT2E
    fails, `branch_roots` (branch -> its outermost modules) names where: the branch whose modules, kept in float,
    let it through; that branch then stays float (recorded as `quantization.fallback`)."""
    require("executorch", "executorch", "exporting an ExecuTorch .pte")
    if precision not in ("fp32", "int8"):
        raise UsageError(f"ExecuTorch export has no {precision} precision", "use fp32 or int8")
    if precision == "int8" and calib is None:
        raise UsageError("INT8 ExecuTorch export needs a calibration set", "pass calib=calibration_set(...)")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = model.eval()
    sample, shapes = trace_inputs(io), dynamic_shapes(io)
    quantization: dict[str, Any] = {}
    with warnings.catch_warnings():  # torch's pytree deprecations, raised inside export and lowering
        warnings.simplefilter("ignore", FutureWarning)
        if precision == "int8" and calib is not None:
            quantize = functools.partial(_quantize, model, io, sample, shapes, calib, float_ops)
            model, quantization = _with_fallback(quantize, tuple(float_modules), branch_roots)
        exported = torch.export.export(model, (), kwargs=sample, dynamic_shapes=shapes)
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    final = program.exported_program()
    order = _input_order(exported)
    meta = {
        **meta,
        "delegate": DELEGATE,
        "delegation": _delegation(final.graph_module),
        "dynamic_dims": _dynamic_bounds(io, final, order),
        "input_order": order,
        "quantization": quantization,
        "versions": versions("torch", "onnx", "executorch", "torchao"),
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / PTE).write_bytes(program.buffer)
        Artifact("executorch", precision, tmp, PTE, io, parent, meta).write_manifest()
    return Artifact("executorch", precision, out_dir, PTE, io, parent, meta)


def _with_fallback(
    quantize: Callable[[tuple[str, ...]], tuple[nn.Module, dict[str, Any]]],
    float_modules: tuple[str, ...],
    branch_roots: Callable[[], Mapping[str, Sequence[str]]] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    # PT2E fails inside the graph it traced, with an error (an IndexError, a shape guard) that names no module. Any
    # exception from torch/torchao is caught: it is reported with the module of the node it was raised at, and the
    # branch whose modules, kept in float, let PT2E through.
    try:
        return quantize(float_modules)
    except Exception as e:
        cause = str(e) if isinstance(e, _PT2EFailure) else f"{type(e).__name__}: {_first_line(e)}"
        for branch, roots in (branch_roots() if branch_roots else {}).items():
            try:
                quantized, info = quantize((*float_modules, *roots))
            except Exception:
                continue
            info["fallback"] = {"branch": branch, "modules": list(roots), "error": cause}
            return quantized, info
        raise EdgeKitError(
            f"ExecuTorch INT8 (PT2E with the XNNPACK quantizer) failed: {cause}",
            "export fp32 for ExecuTorch, or keep the failing module in float (float_modules)",
        ) from e


class _PT2EFailure(Exception):
    """A failure while the prepared graph ran, with the module of the node that raised it."""


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _raised_in(e: BaseException, gm: torch.fx.GraphModule) -> str | None:
    """The module (path and class) of the graph node whose line of the generated forward raised `e`."""
    nodes = {n.name: n for n in gm.graph.nodes}
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith("<eval_with_key>"):  # fx registers its generated code with linecache
            node = nodes.get(linecache.getline(code.co_filename, tb.tb_lineno).split("=")[0].strip())
            stack = list(node.meta.get("nn_module_stack", {}).values()) if node else []
            if stack:
                path, cls = stack[-1]
                return f"{path} ({str(getattr(cls, '__name__', cls)).rpartition('.')[2]}), node {node.name}"
        tb = tb.tb_next
    return None


def _integer_constants(gm: torch.fx.GraphModule) -> None:
    """torchao 0.18's prepare_pt2e turns every scalar operand into a float32 tensor constant, also where the
    other operand is an integer tensor (`arange(n) + 0` in a Hugging Face attention mask): the result turns float
    and indexing with it fails. Give such constants back the dtype of the result they feed."""
    for node in gm.graph.nodes:
        if node.op != "get_attr" or not isinstance(t := getattr(gm, node.target, None), torch.Tensor):
            continue
        dtypes = {v.dtype for u in node.users if isinstance(v := u.meta.get("val"), torch.Tensor)}
        if t.is_floating_point() and len(dtypes) == 1 and not (dtype := dtypes.pop()).is_floating_point:
            setattr(gm, node.target, t.to(dtype))


def _quantize(
    model: nn.Module,
    io: IOSpec,
    sample: dict[str, torch.Tensor],
    shapes: dict,
    calib: CalibrationSet,
    float_ops: Callable[[torch.fx.Graph], Collection[str]] | None,
    float_modules: tuple[str, ...],
) -> tuple[nn.Module, dict[str, Any]]:
    """PT2E static INT8: symmetric per-channel weights, per-tensor activations observed on every sample."""
    require("torchao", "executorch", "INT8 ExecuTorch export")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    traced = torch.export.export(model, (), kwargs=sample, dynamic_shapes=shapes).module()
    floated = set(float_ops(traced.graph)) if float_ops else set()
    if float_modules or floated:  # set_module_name(name, None) is refused in 1.5.1; a node filter does the same
        quantizer.set_filter_function(lambda node: not (node.name in floated or _inside(node, float_modules)))
    prepared = prepare_pt2e(traced, quantizer)
    _integer_constants(prepared)
    try:
        with torch.no_grad():
            for feeds in calib.feeds:
                prepared(**{name: torch.from_numpy(feeds[name]) for name in io.input_names})
    except Exception as e:
        where = _raised_in(e, prepared)
        raise _PT2EFailure(f"{type(e).__name__}: {_first_line(e)}" + (f" in {where}" if where else "")) from e
    info = {
        "backend": "torchao pt2e + XNNPACKQuantizer",
        "scheme": "static int8: symmetric per-channel weights, per-tensor activations (histogram observer)",
        "calibration": calib.describe(),
        "float_modules": list(float_modules),
    }
    return convert_pt2e(prepared), info


def _inside(node: torch.fx.Node, modules: tuple[str, ...]) -> bool:
    """Whether an exported graph node was traced inside one of `modules` (by its nn_module_stack paths)."""
    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    return any(p == m or p.startswith(m + ".") for p in paths for m in modules)


def _input_order(program: torch.export.ExportedProgram) -> list[str]:
    """Input names in the order the program takes them: torch.export flattens the keyword inputs."""
    spec = program.call_spec.in_spec
    _, kwargs = torch.utils._pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    return sorted(kwargs, key=kwargs.__getitem__)


def _dynamic_bounds(io: IOSpec, program: torch.export.ExportedProgram, order: list[str]) -> dict[str, list[int]]:
    """[min, max] of each dim the .pte leaves dynamic. The max is the size its memory is planned for, which
    lowering can set below the IOSpec's; the min is the IOSpec's, as sizes below the 2 that export traces
    with run correctly (the runtime checks only the planned capacity). A dim that lowering specialised to the
    traced size (a GRU's decomposition does so to the batch) is left out: the program runs at that size only, so
    the runner pads a smaller batch to it."""
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    bounds: dict[str, list[int]] = {}
    fixed: dict[str, int] = {}
    for name, placeholder in zip(order, program.graph_signature.user_inputs, strict=True):
        node = nodes[placeholder]
        for d, size, planned in zip(io.input(name).shape, node.meta["val"].shape, node.meta["spec"].shape, strict=True):
            if not (isinstance(d, str) and isinstance(size, torch.SymInt)):
                continue
            if not _varies(size, program):
                fixed[d] = planned
                continue
            upper = min(planned, bounds[d][1]) if d in bounds else planned
            bounds[d] = [io.dims[d].min, upper]
    for d, size in fixed.items():
        if d != "batch" and io.dims[d].min < io.dims[d].max:  # the runner pads batches, not other dims
            raise EdgeKitError(
                f"ExecuTorch lowering fixed dim '{d}' at {size} (the IO spec lets it range over "
                f"{io.dims[d].min}..{io.dims[d].max})",
                f"set the spec's {d} to {size} or export with static shapes",
            )
        bounds.pop(d, None)
    for d, (_, upper) in bounds.items():
        if d != "batch" and upper < io.dims[d].max:  # the runner can split batches, not other dims
            raise EdgeKitError(
                f"ExecuTorch lowering narrowed dim '{d}' to at most {upper} (the IO spec says {io.dims[d].max})",
                f"lower the spec's {d} max to {upper} or export with static shapes",
            )
    return bounds


def _varies(size: torch.SymInt, program: torch.export.ExportedProgram) -> bool:
    """Whether a symbolic input size still ranges after lowering, or was replaced by the size it was traced at."""
    expr = size.node.expr
    bound = program.range_constraints.get(expr)
    return not expr.is_number and (bound is None or bound.lower < bound.upper)


def _delegation(gm: torch.fx.GraphModule) -> dict[str, Any]:
    """Nodes inside XNNPACK subgraphs versus the kernels left to the portable runtime (by op) in the final
    program. Memory views, allocations and symbolic-size arithmetic are bookkeeping, not kernels."""
    delegated, subgraphs, portable = 0, 0, Counter[str]()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            subgraphs += 1
            sub = getattr(gm, node.target).original_module.graph
            delegated += sum(n.op == "call_function" for n in sub.nodes)
        elif node.op == "call_function" and hasattr(node.target, "_schema"):
            name = str(getattr(node.target, "__name__", node.target))
            if not name.startswith(("sym_", "executorch_prim.")):
                portable[name] += 1
    kernels = xnnpack_ops()
    by_count = sorted(portable.items(), key=lambda x: (-x[1], x[0]))
    return {
        "subgraphs": subgraphs,
        "delegated_nodes": delegated,
        "portable_nodes": sum(portable.values()),
        "portable_ops": dict(sorted(portable.items())),
        # per op left out, most nodes first: whether XNNPACK has a kernel for it at all (from its partitioner's own
        # configs), so that a user knows whether a rewrite could move it
        "portable": [{"op": op, "nodes": n, "why": PORTABLE_WHY[_base(op) in kernels]} for op, n in by_count],
    }


PORTABLE_WHY = {
    True: "XNNPACK has this op, but its partitioner refused these nodes (their dtype, rank or shape is outside what "
    "its kernel takes): an input layout it takes would move them",
    False: "XNNPACK has no kernel for this op: only rewriting it into ops XNNPACK has would move it",
}


def _base(op: str) -> str:
    """`mean.out` -> `mean`; `slice_copy.Tensor_out` -> `slice_copy`: an op without its overload."""
    return op.split(".")[0]


@functools.cache
def xnnpack_ops() -> frozenset[str]:
    """The ops the installed ExecuTorch's XNNPACK partitioner has a config (a kernel) for."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    return frozenset(_base(str(c.target_name)) for c in ALL_PARTITIONER_CONFIGS)
