"""A multimodal classifier: one branch per modality, one fusion module, one classifier head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .branches import AudioBranch, ImageBranch, TextBranch, VideoBranch
from .fusions import FUSIONS

# Which model inputs feed each modality's branch (names shared with the AV-digits IOSpec).
MODALITY_INPUTS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "text": ("text_ids", "text_mask"),
    "audio": ("audio",),
    "video": ("video",),
}

PRESETS: dict[str, dict[str, Any]] = {
    "teacher": {
        "image": {"width": 64, "depth": 6},
        "text": {"width": 256, "depth": 4, "heads": 8},
        "audio": {"width": 32, "depth": 4},
        "video": {"width": 48, "depth": 6},
        "hidden": 256,
    },
    "small": {
        "image": {"width": 16, "depth": 4},
        "text": {"width": 64, "depth": 2, "heads": 4},
        "audio": {"width": 16, "depth": 3},
        "video": {"width": 16, "depth": 4},
        "hidden": 64,
    },
}


class FusionModel(nn.Module):
    """forward() takes the inputs of its modalities by name plus an optional `modality_mask`
    (batch, M) in `modalities` order; a 0 drops that modality (zero feature, masked in fusion)."""

    def __init__(self, branches: Mapping[str, nn.Module], fusion: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.modalities = tuple(branches)
        self.branches = nn.ModuleDict(branches)
        self.fusion = fusion
        # Late fusion already emits fused class scores; every other fusion needs a head.
        scores = getattr(fusion, "emits_scores", False)
        self.classifier = nn.Identity() if scores else nn.Linear(fusion.out_dim, n_classes)

    def forward_features(self, modality_mask: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        feats = []
        for m in self.modalities:
            args = [inputs[name] for name in MODALITY_INPUTS[m]]
            feats.append(self.branches[m](*args))
        if modality_mask is None:
            modality_mask = torch.ones(feats[0].shape[0], len(feats), dtype=feats[0].dtype, device=feats[0].device)
        return self.fusion(feats, modality_mask)

    def forward(
        self,
        image: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"image": image, "text_ids": text_ids, "text_mask": text_mask, "audio": audio, "video": video}
        inputs = {k: v for k, v in given.items() if v is not None}
        return self.classifier(self.forward_features(modality_mask, **inputs))


def build_fusion_model(
    arch: str = "attention",
    preset: str = "teacher",
    modalities: list[str] | tuple[str, ...] = ("image", "text", "audio"),
    n_classes: int = 10,
    vocab_size: int = 64,
    max_len: int = 32,
    in_channels: int = 1,
    overrides: Mapping[str, Any] | None = None,
) -> FusionModel:
    """The zoo's factory: `edgekit.models:build_fusion_model` in a model package.

    `overrides` replaces preset entries, e.g. {"text": {"depth": 2}, "hidden": 128}."""
    if arch not in FUSIONS:
        raise UsageError(f"unknown fusion '{arch}'", f"use one of {', '.join(FUSIONS)}")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset '{preset}'", f"use one of {', '.join(PRESETS)}")
    bad = [m for m in modalities if m not in MODALITY_INPUTS]
    if bad or not modalities:
        raise UsageError(f"unsupported modalities {bad or '[]'}", f"choose from {', '.join(MODALITY_INPUTS)}")
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[preset].items()}
    for k, v in (overrides or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, Mapping) else v

    def branch(m: str) -> nn.Module:
        c = cfg[m]
        if m == "image":
            return ImageBranch(in_channels, c["width"], c["depth"])
        if m == "video":
            return VideoBranch(in_channels, c["width"], c["depth"])
        if m == "audio":
            return AudioBranch(c["width"], c["depth"])
        return TextBranch(vocab_size, c["width"], c["depth"], c["heads"], max_len)

    branches = {m: branch(m) for m in modalities}
    fusion = FUSIONS[arch]([b.out_dim for b in branches.values()], cfg["hidden"], n_classes)
    return FusionModel(branches, fusion, n_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
