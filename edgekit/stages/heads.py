"""Whole-head removal for self-attention.

torch-pruning 1.6.1 shrinks head_dim and keeps num_heads. Here whole heads go: a head's query, key and value
rows and its out_proj columns are dropped, num_heads falls and head_dim stays. nn.MultiheadAttention cannot
hold that shape (it needs num_heads * head_dim == embed_dim), so the layer becomes a PrunedAttention, which
keeps embed_dim and therefore the residual stream around it.

Hugging Face encoders of the BERT layout (BERT, RoBERTa, MiniLM, ELECTRA...) keep their own modules: a
self-attention with `query`/`key`/`value` Linears and `num_attention_heads`, whose output projection is its
sibling `output.dense`. Their Linears are cut in place. transformers 5 dropped `prune_heads`, and its forward
infers the head count from the projection width, so nothing else has to change."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError


class PrunedAttention(nn.Module):
    """Self-attention with `num_heads` heads of `head_dim` over an `embed_dim` stream, where num_heads * head_dim
    may be less than embed_dim. Called like nn.MultiheadAttention by nn.TransformerEncoderLayer."""

    # TransformerEncoderLayer only takes its fused kernel when this is True; that kernel assumes
    # num_heads * head_dim == embed_dim, so the layer must stay on the module path.
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        # Plain Linears (not raw parameters) so that channel pruning and MAC counting see them as layers.
        self.in_proj = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias)

    # Read by TransformerEncoderLayer's fast-path checks, which expect nn.MultiheadAttention's attributes.
    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights or attn_mask is not None or is_causal:
            raise NotImplementedError("PrunedAttention does self-attention with a key padding mask only")
        x = query if self.batch_first else query.transpose(0, 1)
        b, n = x.shape[0], x.shape[1]
        q, k, v = self.in_proj(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_padding_mask is None else _attend_mask(key_padding_mask, q.dtype)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _attend_mask(key_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, keys) padding mask (True or nonzero = padding) -> additive (batch, 1, 1, keys), as MHA does."""
    if key_padding_mask.dtype == torch.bool:
        neg = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        neg = neg.masked_fill(key_padding_mask, float("-inf"))
    else:
        neg = key_padding_mask.to(dtype)
    return neg[:, None, None, :]


Attention = nn.MultiheadAttention | PrunedAttention


def head_slices(attn: Attention) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(in_proj weight, in_proj bias or None, out_proj weight, out_proj bias or None), with in_proj rows as
    (3, heads, head_dim, embed) and out_proj columns as (embed, heads, head_dim)."""
    h, d = attn.num_heads, attn.head_dim
    w_in = attn.in_proj_weight.view(3, h, d, attn.embed_dim)
    b_in = None if attn.in_proj_bias is None else attn.in_proj_bias.view(3, h, d)
    return w_in, b_in, attn.out_proj.weight.view(attn.embed_dim, h, d), attn.out_proj.bias


def head_importance(attn: Attention, p: float = 2.0) -> torch.Tensor:
    """One score per head: the p-norm of its query, key and value rows and its out_proj columns."""
    w_in, _, w_out, _ = head_slices(attn)
    per_head = torch.cat([w_in.permute(1, 0, 2, 3).flatten(1), w_out.permute(1, 0, 2).flatten(1)], dim=1)
    return per_head.detach().norm(p=p, dim=1)


@torch.no_grad()
def keep_heads(attn: Attention, keep: Sequence[int]) -> PrunedAttention:
    """A PrunedAttention holding only the heads in `keep`; with every head kept it computes what `attn` does."""
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < attn.num_heads for i in keep):
        raise ValueError(f"keep must name distinct heads in [0, {attn.num_heads}), got {list(keep)}")
    idx = torch.tensor(sorted(keep))
    w_in, b_in, w_out, b_out = head_slices(attn)
    new = PrunedAttention(attn.embed_dim, len(idx), attn.head_dim, b_in is not None, attn.dropout, attn.batch_first)
    new.in_proj.weight.copy_(w_in[:, idx].reshape(-1, attn.embed_dim))
    new.out_proj.weight.copy_(w_out[:, idx].reshape(attn.embed_dim, -1))
    if b_in is not None:
        new.in_proj.bias.copy_(b_in[:, idx].reshape(-1))
    if b_out is not None:
        new.out_proj.bias.copy_(b_out)
    return new.train(attn.training)


def n_heads_kept(num_heads: int, ratio: float) -> int:
    """The nearest whole number of heads to keep after removing `ratio` of them; at least one."""
    return max(1, int(num_heads * (1.0 - ratio) + 0.5))


def is_hf_attention(m: nn.Module) -> bool:
    """A Hugging Face self-attention of the BERT layout (see the module docstring)."""
    return isinstance(getattr(m, "num_attention_heads", None), int) and all(
        isinstance(getattr(m, k, None), nn.Linear) for k in ("query", "key", "value")
    )


def hf_output(model: nn.Module, name: str) -> nn.Linear | None:
    """The output projection of the HF self-attention `name`: its parent's `output.dense`, if that exists."""
    parent = model.get_submodule(name.rpartition(".")[0])
    dense = getattr(getattr(parent, "output", None), "dense", None)
    return dense if isinstance(dense, nn.Linear) else None


def _hf_importance(attn: nn.Module, out: nn.Linear, p: float) -> torch.Tensor:
    h, d = attn.num_attention_heads, attn.attention_head_size
    rows = [getattr(attn, k).weight.view(h, d, -1).flatten(1) for k in ("query", "key", "value")]
    cols = out.weight.view(out.out_features, h, d).permute(1, 0, 2).flatten(1)
    return torch.cat([*rows, cols], dim=1).detach().norm(p=p, dim=1)


@torch.no_grad()
def _hf_keep(attn: nn.Module, out: nn.Linear, keep: Sequence[int]) -> None:
    d = attn.attention_head_size
    idx = torch.cat([torch.arange(i * d, (i + 1) * d) for i in sorted(keep)])
    for k in ("query", "key", "value"):
        lin = getattr(attn, k)
        lin.weight = nn.Parameter(lin.weight[idx].clone())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias[idx].clone())
        lin.out_features = len(idx)
    out.weight = nn.Parameter(out.weight[:, idx].clone())
    out.in_features = len(idx)
    attn.num_attention_heads, attn.all_head_size = len(keep), len(idx)


def has_heads(model: nn.Module) -> bool:
    """Whether `model` has an attention layer whose heads `prune_heads` can remove."""
    return any(is_hf_attention(m) or isinstance(m, nn.MultiheadAttention | PrunedAttention) for m in model.modules())


def prune_heads(model: nn.Module, ratio: float, p: float = 2.0) -> dict[str, tuple[int, int]]:
    """Remove the least important heads (ranked per layer) of every attention layer of `model`: an
    nn.MultiheadAttention becomes a PrunedAttention, a Hugging Face one is cut in place. Returns {layer name:
    (heads before, heads after)} for every layer whose heads can be removed."""
    report: dict[str, tuple[int, int]] = {}
    for name, attn in list(model.named_modules()):
        if is_hf_attention(attn) and (out := hf_output(model, name)) is not None:
            kept = n_heads_kept(attn.num_attention_heads, ratio)
            report[name] = (attn.num_attention_heads, kept)
            if kept < attn.num_attention_heads:
                _hf_keep(attn, out, _hf_importance(attn, out, p).argsort(descending=True)[:kept].tolist())
            continue
        if not isinstance(attn, nn.MultiheadAttention | PrunedAttention):
            continue
        # What nn.TransformerEncoderLayer builds: packed q/k/v of one width, no extra key/value rows.
        if isinstance(attn, nn.MultiheadAttention) and (
            not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
        ):
            raise UsageError(
                f"attention layer '{name}' has kdim/vdim or extra key/value rows",
                "head removal needs plain self-attention",
            )
        kept = n_heads_kept(attn.num_heads, ratio)
        report[name] = (attn.num_heads, kept)
        if kept < attn.num_heads:
            order = head_importance(attn, p).argsort(descending=True)
            model.set_submodule(name, keep_heads(attn, order[:kept].tolist()))
    return report
