"""Structured pruning of any fusion model: whole attention heads (heads.py), then channels with torch-pruning's
dependency graph, with a ratio per modality branch and for the fusion, or one global ratio with global ranking.

Branches come from the model's exported graph (edgekit/branches.py), not from its attribute names: each layer is
pruned by the ratio of the branch its nodes belong to, whatever the model calls it.

Order: heads first, then channels. Head removal turns each nn.MultiheadAttention into a PrunedAttention whose
projections are plain Linears; torch-pruning then never sees nn.MultiheadAttention (its 1.6.1 handler shrinks
head_dim and ties the projections to the residual stream), and those projections go into ignored_layers, which
keeps every group that touches them, a transformer's residual stream included, at full width. What is left to
prune is what is safe to prune: conv channels, a transformer's FFN hidden width and MLPs.

Left whole, and named in the result: the layers that compute the model's outputs (class scores), attention
projections (cut by whole heads only: nn.MultiheadAttention and Hugging Face BERT-layout attention; other attention
modules are not cut at all), recurrent layers (LSTM, GRU), and the zoo's per-modality scores and gates. Stem input
channels and embedding rows are never reached by a pruning group."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from ..branches import ModuleBranches, module_branches
from ..errors import EdgeKitError, UsageError
from ..io import IOSpec
from ..loading import build_model, save_model_package
from ..models import FusionModel
from ..models.fusions import AttentionFusion, GatedFusion, LateFusion
from ..schema_errors import did_you_mean
from .heads import PrunedAttention, hf_output, is_hf_attention, prune_heads

FACTORY = "edgekit.stages.prune:load_pruned_architecture"
# torch-pruning importance criteria by name: (importance factory, p of the norm that ranks heads).
IMPORTANCES: dict[str, tuple[Callable[[], Any], float]] = {
    "l1": (lambda: _tp().importance.GroupMagnitudeImportance(p=1), 1.0),
    "l2": (lambda: _tp().importance.GroupMagnitudeImportance(p=2), 2.0),
}


def _tp() -> Any:
    if importlib.util.find_spec("torch_pruning") is None:
        raise UsageError(
            "channel pruning needs torch-pruning, which is not installed", "pip install torch-pruning==1.6.1"
        )
    import torch_pruning

    return torch_pruning


@dataclass(frozen=True)
class PruneConfig:
    """`ratios`: share of channels to remove per part (a modality branch or "fusion"; parts not named keep their
    width), ranked within each layer. `global_ratio`: instead, one share for the whole model, ranked across all
    layers. `head_ratio`: share of attention heads removed per layer. `round_to`: remaining widths are multiples
    of it (never below one multiple)."""

    ratios: Mapping[str, float] = field(default_factory=dict)
    global_ratio: float | None = None
    head_ratio: float = 0.0
    round_to: int = 8
    importance: str = "l2"


@dataclass(frozen=True)
class PartReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    requested: float = 0.0  # the share of channels asked of the part
    whole_macs: int = 0  # MACs (before) in layers of the part left whole: recurrent, attention, output layers

    @property
    def achieved(self) -> float:
        """The share of the part's MACs removed."""
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "achieved_macs": round(self.achieved, 4)}

    def shortfall(self, name: str, whole: Mapping[str, str]) -> str | None:
        """Why the part removed a smaller share of its MACs than of its channels, in one line; None if it did not."""
        if not self.requested or self.achieved >= self.requested:
            return None
        share = self.whole_macs / self.macs_before if self.macs_before else 0.0
        layers = "; ".join(f"{n}: {why}" for n, why in whole.items()) or "none"
        return (f"{name}: asked {self.requested:.2f} of its channels, removed {self.achieved:.1%} of its MACs; "
                f"{share:.0%} of them are in layers left whole ({layers}); the rest are cut only as far as the "
                f"groups torch-pruning couples allow (a layer that feeds a whole one keeps its width, a residual "
                f"sum's channels go together)")  # fmt: skip


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    parts: dict[str, PartReport]  # each branch, "fusion" and "total"; MACs per sample
    heads: dict[str, tuple[int, int]]  # attention layer -> (heads before, heads after)
    intact: dict[str, str]  # layer -> why it was left whole
    branches: dict[str, str]  # branch -> its label, and how they were found under "method"
    part_of: dict[str, str] = field(default_factory=dict)  # each intact layer's part

    def as_dict(self) -> dict[str, Any]:
        return {
            "parts": {k: v.as_dict() for k, v in self.parts.items()},
            "heads": {k: list(v) for k, v in self.heads.items()},
            "intact": self.intact,
            "branches": self.branches,
            "shortfalls": self.shortfalls(),
        }

    def shortfalls(self) -> list[str]:
        """The parts that removed a smaller share of their MACs than of their channels, and why."""
        out = []
        for name, part in self.parts.items():
            whole = {n: why for n, why in self.intact.items() if self.part_of.get(n) == name}
            if line := part.shortfall(name, whole):
                out.append(line)
        return out


def _check_ratio(what: str, r: float) -> None:
    if not 0.0 <= r < 1.0:
        raise UsageError(
            f"pruning ratio {r} for '{what}' is outside [0, 1)", "use 0 (keep all) up to, not including, 1"
        )


def check_config(parts: Sequence[str], config: PruneConfig) -> None:
    unknown = sorted(set(config.ratios) - set(parts))
    if unknown:
        guess = did_you_mean(unknown[0], parts)
        raise UsageError(f"no part named {', '.join(unknown)} to prune",
                         f"{guess + ' ' if guess else ''}the model's parts are {', '.join(parts)}")  # fmt: skip
    if config.ratios and config.global_ratio is not None:
        raise UsageError("both per-part ratios and a global ratio given", "use one of them")
    for part, r in config.ratios.items():
        _check_ratio(part, r)
    if config.global_ratio is not None:
        _check_ratio("global", config.global_ratio)
    _check_ratio("heads", config.head_ratio)
    if config.round_to < 1:
        raise UsageError(f"round_to={config.round_to} is not a positive channel count", "use 1 (no rounding) or 8, 16")
    if config.importance not in IMPORTANCES:
        raise UsageError(f"unknown importance '{config.importance}'", f"use one of {', '.join(IMPORTANCES)}")


def parts_of(mb: ModuleBranches) -> list[str]:
    return mb.branches.names()


def prune(
    model: nn.Module,
    io: IOSpec,
    config: PruneConfig,
    override: Mapping[str, Sequence[str]] | None = None,
    mb: ModuleBranches | None = None,
) -> PruneResult:
    """A pruned copy of `model` (which is left as it is) and what pruning saved per branch. `override`: the model
    package's `branches` (branch -> module prefixes), else the branches are found in the graph; `mb`: the model's
    module branches when already known."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"pruning needs a torch.nn.Module, got {type(model).__name__}")
    pruned = copy.deepcopy(model).eval()
    mb = mb or module_branches(pruned, io, override)
    check_config(parts_of(mb), config)
    before = measure(pruned, io, mb)
    own = module_macs(pruned, io)
    make_importance, p = IMPORTANCES[config.importance]
    heads = prune_heads(pruned, config.head_ratio, p)
    leaves = (nn.modules.conv._ConvNd, nn.Linear)
    ratios = {m: config.ratios[mb.branch(n)] for n, m in pruned.named_modules()
              if isinstance(m, leaves) and config.ratios.get(mb.branch(n), 0) > 0}  # fmt: skip
    keep = _protected(pruned, mb)
    if ratios or config.global_ratio:
        _prune_channels(pruned, io, ratios, config.global_ratio, config.round_to, make_importance(), mb, list(keep))
    try:
        after = measure(pruned, io, mb)
    except RuntimeError as e:
        raise EdgeKitError(f"the pruned model no longer runs: {str(e).splitlines()[0]}") from e
    # The MACs of the layers left whole, each op counted once (an attention block and its output projection nest)
    # and in the part its own module belongs to: a fusion block's per-modality projections are their branches'.
    tops = [n for n in keep if not any(n.startswith(k + ".") for k in keep)]
    whole = dict.fromkeys(before, 0)
    for name, macs in own.items():
        if any(name == n or name.startswith(n + ".") for n in tops):
            whole[mb.branch(name)] += macs
            whole["total"] += macs
    part_of = {n: mb.branch(n) for n in keep}
    requested = dict.fromkeys(before, config.global_ratio or 0.0) | dict(config.ratios)
    parts = {k: PartReport(before[k][0], after[k][0], before[k][1], after[k][1],
                           requested.get(k, 0.0) if k != "total" else 0.0, whole[k]) for k in before}  # fmt: skip
    labels = {**dict(mb.branches.labels), "method": mb.branches.method}
    return PruneResult(pruned, parts, heads, keep, labels, part_of)


def _protected(model: nn.Module, mb: ModuleBranches) -> dict[str, str]:
    """Layers whose widths carry meaning or that torch-pruning cannot cut safely, by name, with the reason.

    torch-pruning couples a per-modality score or gate with the projections it scales (a broadcast product looks
    element-wise to it), so in the zoo's attention and gated fusion the shared projection width stays whole too."""
    keep: dict[str, str] = {}
    names = {m: n for n, m in model.named_modules()}
    by_heads = {n: names[o] for n, m in model.named_modules() if is_hf_attention(m) and (o := hf_output(model, n))}
    for name, m in model.named_modules():
        if name in mb.output_modules and isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            keep[name] = "computes a model output"
        elif isinstance(m, nn.MultiheadAttention | PrunedAttention) or name in by_heads:
            keep[name] = "attention projections (whole heads are pruned instead)"
            if name in by_heads:
                keep[by_heads[name]] = "attention output projection (whole heads are pruned instead)"
        elif isinstance(m, nn.RNNBase):
            keep[name] = f"recurrent ({type(m).__name__}): not pruned"
        elif (
            "attention" in type(m).__name__.lower()
            and not any(name.startswith(k + ".") for k in keep)
            and not any(k.startswith(name + ".") for k in by_heads)  # a HF block around a head-prunable one
        ):
            keep[name] = f"attention ({type(m).__name__}): heads not pruned, its projections stay whole"
    if isinstance(model, FusionModel):
        f = model.fusion
        extra: list[nn.Module] = []
        if isinstance(f, LateFusion):
            extra += [head[-1] for head in f.heads]
        elif isinstance(f, AttentionFusion):
            extra.append(f.score[-1])
        elif isinstance(f, GatedFusion):
            extra.append(f.gate)
        keep.update({names[m]: "one value per modality" for m in extra})
    return keep


class _RecurrentStandIn(nn.Module):
    """What torch-pruning traces in place of a recurrent layer. ATen runs a GRU or LSTM step by step, splitting its
    gates with unsafe_split, and torch-pruning 1.6.1 misreads those splits (an IndexError while it groups layers).
    The stand-in maps the input to the layer's output width in one Linear and returns outputs of the layer's shapes;
    it is ignored, so the widths around the recurrent layer stay as they are, and the real layer goes back after."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn, self.dirs = [rnn], 2 if rnn.bidirectional else 1  # a list: not registered, not traced
        self.proj = nn.Linear(rnn.input_size, rnn.hidden_size * self.dirs)

    def forward(self, x: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        rnn = self.rnn[0]
        out = self.proj(x)
        last = out[:, -1] if rnn.batch_first else out[-1]
        h = last.reshape(last.shape[0], self.dirs, rnn.hidden_size).transpose(0, 1).repeat(rnn.num_layers, 1, 1)
        return out, ((h, h) if isinstance(rnn, nn.LSTM) else h)


@contextlib.contextmanager
def _recurrent_stand_ins(model: nn.Module) -> Iterator[list[nn.Module]]:
    rnns = {n: m for n, m in model.named_modules() if isinstance(m, nn.RNNBase)}
    stand_ins = {n: _RecurrentStandIn(m) for n, m in rnns.items()}
    for n, m in stand_ins.items():
        model.set_submodule(n, m)
    try:
        yield list(stand_ins.values())
    finally:
        for n, m in rnns.items():
            model.set_submodule(n, m)


def _pruner_class() -> type:
    tp = _tp()

    class Pruner(tp.pruner.MetaPruner):  # type: ignore[misc]
        # 1.6.1 floors the remaining width to a multiple of round_to, which empties a layer when fewer than
        # round_to channels would remain; keep at least one multiple, and leave layers already that narrow.
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            if current_channels <= round_to:
                return 0
            keep = max(round_to, (current_channels - n_pruned) // round_to * round_to)
            return current_channels - keep

    return Pruner


def _prune_channels(
    model: nn.Module,
    io: IOSpec,
    ratios: Mapping[nn.Module, float],
    global_ratio: float | None,
    round_to: int,
    importance: Any,
    mb: ModuleBranches,
    keep: list[str],
) -> None:
    # Parameters held by a model's own modules (a fusion bias, a class token, late fusion's modality weights), named
    # so that torch-pruning does not guess (and warn); the ones with a fixed meaning sit in protected layers.
    own = [p for m in model.modules() if not type(m).__module__.startswith("torch.")
           for p in m.parameters(recurse=False)]  # fmt: skip
    with _recurrent_stand_ins(model) as stand_ins:
        pruner = _pruner_class()(
            model,
            io.example_torch(batch=2),
            importance=importance,
            global_pruning=global_ratio is not None,
            pruning_ratio=global_ratio or 0.0,
            pruning_ratio_dict=dict(ratios) or None,
            ignored_layers=[model.get_submodule(n) for n in keep] + stand_ins,
            round_to=round_to,
            unwrapped_parameters=[(p, p.dim() - 1) for p in own],
        )
        _map_flattens(pruner.DG)
        pruner.ignored_layers += _cross_part_layers(model, pruner, mb) + _feeding(pruner, stand_ins)
        with torch.no_grad():
            pruner.step()


def _map_flattens(graph: Any) -> None:
    """Map every flatten of a 4-D tensor (Conv -> Flatten -> Linear: one channel is H*W input features). torch-pruning
    1.6.1 reads the flatten's input shape under a name torch 2 no longer uses, and its fallback maps no reshape at all
    once any Linear outputs 3-D (a transformer's, a recurrent stand-in's): the Linear would lose one input feature
    per channel pruned, and the pruned model would not run."""
    tp = _tp()
    was, graph._2d_4d = graph._2d_4d, True
    try:
        for node in graph.module2node.values():
            sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
            if node.type == tp.ops.OPTYPE.RESHAPE and sizes is not None and len(sizes) == 4:
                tp.dependency.index_mapping.update_reshape_index_mapping(graph, node)
    finally:
        graph._2d_4d = was


def _feeding(pruner: Any, stand_ins: list[nn.Module]) -> list[nn.Module]:
    """Layers of groups that reach a recurrent layer's input: torch-pruning would cut its input width (only an
    ignored layer's output width stops a group), and the real layer, put back, would not take the input."""
    frozen = {m for s in stand_ins for m in s.modules()}
    out: list[nn.Module] = []
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):  # fmt: skip
        if any(d.target.module in frozen for d, _ in group):
            out += [d.target.module for d, _ in group if pruner.DG.is_out_channel_pruning_fn(d.handler)]
    return out


def _cross_part_layers(model: nn.Module, pruner: Any, mb: ModuleBranches) -> list[nn.Module]:
    """Layers of groups whose output channels span several branches. torch-pruning 1.6.1 drops a concat's offsets
    when one of its inputs has no autograd history (early fusion concatenates the modality mask) and then couples
    every concat input channel by channel: image channel 3 with text channel 3. Such a group is not a real
    dependency, and pruning it would cut unrelated channels or break shapes, so it is left whole."""
    part = {m: mb.branch(n) for n, m in model.named_modules() if n}
    out: list[nn.Module] = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        outs = [d.target.module for d, _ in group if pruner.DG.is_out_channel_pruning_fn(d.handler)]
        if len({part[m] for m in outs if m in part}) > 1:
            out += [m for m in outs if m in part]
    return out


# -- measuring ------------------------------------------------------------------------------------------
# MACs are torch's own FlopCounterMode's FLOPs / 2: every matmul, convolution and attention product, whether a
# module or a functional call computes it (a Hugging Face encoder's attention, a fusion's own einsum), from the
# tensors' actual shapes, so removed channels and heads show. Element-wise ops are not counted, as the MACs that
# dominate edge inference are. Two gaps are filled here: onnxruntime-style CPU flash attention has no formula in
# torch, and an LSTM's fused kernel shows no matmuls at all, so recurrent layers use their own formula.

_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, out_shape=None, **__: (
        flop_counter.sdpa_flop_count(q, k, v)
    )
}


def _rnn_macs(m: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence) -> int:
    """Per step and direction: gates x (input + hidden) x hidden, over every layer."""
    tokens = x.data.shape[0] if isinstance(x, nn.utils.rnn.PackedSequence) else x.shape[0] * x.shape[1]
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    ins = [m.input_size] + [m.hidden_size * (2 if m.bidirectional else 1)] * (m.num_layers - 1)
    return tokens * (2 if m.bidirectional else 1) * sum(gates * (i + m.hidden_size) * m.hidden_size for i in ins)


def _exclusive(inclusive: Mapping[str, int]) -> dict[str, int]:
    """Each module's MACs without its submodules' (the counter charges an op to every module on the call stack,
    and a container that is never called, a ModuleList, has no entry: its children's MACs are its caller's)."""
    out = dict(inclusive)
    for name, macs in inclusive.items():
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in inclusive:
                out[parent] -= macs
                break
    return out


def module_macs(model: nn.Module, io: IOSpec) -> dict[str, int]:
    """MACs per sample at the IOSpec's opt shapes of each module's own ops (not its submodules'), by module name
    ("" is the model's own forward); a recurrent layer's by its formula."""
    rnns = {n: m for n, m in model.named_modules() if isinstance(m, nn.RNNBase)}
    rnn_macs = dict.fromkeys(rnns, 0)

    def count(name: str) -> Callable[..., None]:
        def hook(m: nn.RNNBase, args: tuple[Any, ...], _: Any) -> None:
            rnn_macs[name] += _rnn_macs(m, args[0])

        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in rnns.items()]
    # The fused transformer kernel has no FLOP formula; the path through its submodules has.
    fast, training = torch.backends.mha.get_fastpath_enabled(), model.training
    torch.backends.mha.set_fastpath_enabled(False)
    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=_CPU_SDPA)
    try:
        with torch.no_grad(), counter:
            model.eval()(**io.example_torch(batch=1))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        model.train(training)
        for h in handles:
            h.remove()
    root = type(model).__name__  # the counter names modules "<root class>.<path>"
    inclusive = {("" if k == root else k.removeprefix(root + ".")): sum(v.values()) // 2
                 for k, v in counter.get_flop_counts().items() if k == root or k.startswith(root + ".")}  # fmt: skip
    # A GRU's decomposed matmuls are replaced by its formula.
    own = {n: m for n, m in _exclusive(inclusive).items() if not any(n == r or n.startswith(r + ".") for r in rnns)}
    return {**own, **rnn_macs}


def measure(model: nn.Module, io: IOSpec, mb: ModuleBranches | None = None) -> dict[str, tuple[int, int]]:
    """(params, MACs per sample at the IOSpec's opt shapes) for each branch, the fusion and in total. `mb`: the
    model's module branches, found from its graph when not given."""
    mb = mb or module_branches(model, io)
    parts = parts_of(mb)
    params = dict.fromkeys(parts, 0)
    for name, p in model.named_parameters():
        params[mb.branch(name.rpartition(".")[0])] += p.numel()
    macs = dict.fromkeys(parts, 0)
    for name, n in module_macs(model, io).items():
        macs[mb.branch(name)] += n
    report = {k: (params[k], macs[k]) for k in parts}
    report["total"] = (sum(params.values()), sum(macs.values()))
    return report


# -- saving -----------------------------------------------------------------------------------------------
# A model package rebuilds its model from a factory and kwargs, then loads weights strictly (no pickled modules).
# The kwargs of a pruned model: the factory and kwargs of the model it was pruned from (its base), the heads of each
# head-pruned attention layer, and the width attributes and tensor shapes of every layer that differs from the base.

# The attributes torch-pruning changes when it resizes a layer; nothing else may be set from a manifest.
WIDTH_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "normalized_shape",
    "embedding_dim",
)  # fmt: skip


def _layer_spec(m: nn.Module) -> dict[str, Any]:
    attrs = {
        a: list(v) if isinstance(v, tuple) else v
        for a in WIDTH_ATTRS
        if isinstance(v := getattr(m, a, None), int | tuple)
    }
    shapes = {n: list(t.shape) for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]}
    return {"attrs": attrs, "shapes": shapes} if shapes else {}


def architecture(model: nn.Module, base: Mapping[str, Any]) -> dict[str, Any]:
    """The kwargs of load_pruned_architecture that rebuild `model`'s modules with its shapes (not its weights), from
    `base` ({"factory": ..., "kwargs": ...}: what built the model before it was pruned)."""
    heads = {n: {"num_heads": a.num_heads, "head_dim": a.head_dim}
             for n, a in model.named_modules() if isinstance(a, PrunedAttention)}  # fmt: skip
    heads |= {n: {"num_heads": a.num_attention_heads, "head_dim": a.attention_head_size}
              for n, a in model.named_modules()
              if is_hf_attention(a) and a.all_head_size != a.query.in_features}  # fmt: skip
    built = dict(_with_heads(build_model(base["factory"], base["kwargs"]), heads).named_modules())
    layers = {
        n: spec
        for n, m in model.named_modules()
        if (spec := _layer_spec(m)) and (n not in built or spec != _layer_spec(built[n]))
    }
    return {"base": {"factory": base["factory"], "kwargs": dict(base["kwargs"])}, "heads": heads, "layers": layers}


def _with_heads(model: nn.Module, heads: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """The base model with its attention layers cut to `heads`; a Hugging Face layer's Linears are resized by the
    recorded layer widths afterwards, here it only takes its head count."""
    for name, h in heads.items():
        attn = model.get_submodule(name)
        if is_hf_attention(attn):
            attn.num_attention_heads = int(h["num_heads"])
            attn.all_head_size = int(h["num_heads"]) * attn.attention_head_size
            continue
        if not isinstance(attn, nn.MultiheadAttention):
            raise UsageError(f"'{name}' is not an attention layer of the base model", "the package kwargs are damaged")
        bias = attn.in_proj_bias is not None
        new = PrunedAttention(
            attn.embed_dim, int(h["num_heads"]), int(h["head_dim"]), bias, attn.dropout, attn.batch_first
        )
        model.set_submodule(name, new)
    return model


def _resize(m: nn.Module, name: str, spec: Mapping[str, Any]) -> None:
    bad = sorted(set(spec.get("attrs", {})) - set(WIDTH_ATTRS))
    if bad:
        raise UsageError(
            f"layer '{name}' sets {', '.join(bad)}, which are not widths", "the package kwargs are damaged"
        )
    for attr, v in spec.get("attrs", {}).items():
        setattr(m, attr, tuple(v) if isinstance(v, list) else int(v))
    for tname, shape in spec.get("shapes", {}).items():
        old = getattr(m, tname, None)
        if not isinstance(old, torch.Tensor):
            raise UsageError(f"layer '{name}' has no tensor '{tname}'", "the package kwargs are damaged")
        new = torch.zeros([int(s) for s in shape], dtype=old.dtype)
        setattr(m, tname, nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new)


def load_pruned_architecture(
    base: Mapping[str, Any], heads: Mapping[str, Mapping[str, int]], layers: Mapping[str, Mapping[str, Any]]
) -> nn.Module:
    """The package factory of pruned models: the base model, its attention layers cut to the recorded heads and its
    layers resized to the recorded widths; the package's weights are loaded afterwards."""
    model = _with_heads(build_model(base["factory"], base["kwargs"]), heads)
    for name, spec in layers.items():
        try:
            m = model.get_submodule(name)
        except AttributeError as e:
            raise UsageError(f"the base model has no layer '{name}'", "the package kwargs are damaged") from e
        _resize(m, name, spec)
    return model


def save_pruned(
    model: nn.Module,
    io: IOSpec,
    path: Path,
    base: Mapping[str, Any],
    labels: list[str] | tuple[str, ...] = (),
    meta: Mapping[str, Any] | None = None,
    branches: Mapping[str, list[str]] | None = None,
    task: str = "classification",
    metric: str | None = None,
) -> Path:
    """Write `model` (as pruned by prune() from the model `base` builds) as a model package that
    edgekit.loading.load_model rebuilds."""
    kwargs = architecture(model, base)
    rebuilt = load_pruned_architecture(**kwargs).state_dict()
    wrong = [k for k, v in model.state_dict().items() if k not in rebuilt or rebuilt[k].shape != v.shape]
    if wrong or len(rebuilt) != len(model.state_dict()):
        raise EdgeKitError(f"the pruned architecture does not rebuild: {', '.join(wrong[:3]) or 'extra tensors'}")
    return save_model_package(model, io, path, factory=FACTORY, kwargs=kwargs, labels=labels, meta=meta,
                              branches=branches, task=task, metric=metric)  # fmt: skip
