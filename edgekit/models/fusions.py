"""Fusion modules. Each takes the branch features (one (batch, d_m) tensor per modality, in IOSpec
order) and a modality mask (batch, M) with 1 = present, 0 = missing, and returns the fused
representation (batch, out_dim). A missing modality is an explicit zero feature plus its mask bit,
so every fusion accepts any subset of modalities and per-modality ablations are measurable."""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e4  # masked logit: finite, so an all-missing row gives uniform weights, never NaN


def _mlp(din: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU())


class EarlyFusion(nn.Module):
    """Concatenate the (masked) branch features and the mask itself, then an MLP."""

    def __init__(self, dims: list[int], hidden: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.mlp = _mlp(sum(dims) + len(dims), hidden, dropout)
        self.out_dim = hidden

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        masked = [f * mask[:, i : i + 1] for i, f in enumerate(feats)]
        return self.mlp(torch.cat([*masked, mask], dim=1))


class IntermediateFusion(nn.Module):
    """Project each branch to a shared width, h = GELU(sum_m mask_m W_m h_m + b), then an MLP."""

    def __init__(self, dims: list[int], hidden: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, hidden, bias=False) for d in dims)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.mlp = _mlp(hidden, hidden, dropout)
        self.out_dim = hidden

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        h = sum(p(f) * mask[:, i : i + 1] for i, (p, f) in enumerate(zip(self.proj, feats, strict=True)))
        return self.mlp(nn.functional.gelu(h + self.bias))


class LateFusion(nn.Module):
    """A classifier head per modality; class scores are averaged with learned weights, softmax-normalised
    over the modalities present. The fused representation is the fused score vector itself."""

    emits_scores = True

    def __init__(self, dims: list[int], hidden: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
            for d in dims
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(dims)))
        self.out_dim = n_classes

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([h(f) for h, f in zip(self.heads, feats, strict=True)], dim=1)  # (B, M, C)
        w = torch.softmax(self.weight_logits + (1 - mask) * NEG, dim=1)  # (B, M)
        return (scores * w.unsqueeze(-1)).sum(1)


class AttentionFusion(nn.Module):
    """Modality tokens (projection + modality embedding) weighted by additive attention, masked so a
    missing modality gets zero weight; the weighted sum goes through an MLP."""

    def __init__(self, dims: list[int], hidden: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.modality = nn.Embedding(len(dims), hidden)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.mlp = _mlp(hidden, hidden, dropout)
        self.out_dim = hidden

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([p(f) for p, f in zip(self.proj, feats, strict=True)], dim=1) + self.modality.weight
        alpha = torch.softmax(self.score(tokens).squeeze(-1) + (1 - mask) * NEG, dim=1)  # (B, M)
        return self.mlp((tokens * (alpha * mask).unsqueeze(-1)).sum(1))


class GatedFusion(nn.Module):
    """Project each branch, then a learned sigmoid gate per modality (computed from all projections)
    scales it: h = sum_m mask_m * g_m * p_m; then an MLP."""

    def __init__(self, dims: list[int], hidden: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.gate = nn.Linear(hidden * len(dims) + len(dims), len(dims))
        self.mlp = _mlp(hidden, hidden, dropout)
        self.out_dim = hidden

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        proj = [p(f) * mask[:, i : i + 1] for i, (p, f) in enumerate(zip(self.proj, feats, strict=True))]
        g = torch.sigmoid(self.gate(torch.cat([*proj, mask], dim=1))) * mask  # (B, M)
        return self.mlp(sum(g[:, i : i + 1] * p for i, p in enumerate(proj)))


FUSIONS: dict[str, type[nn.Module]] = {
    "early": EarlyFusion,
    "intermediate": IntermediateFusion,
    "late": LateFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
}
