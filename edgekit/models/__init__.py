"""The fusion zoo: the branch and fusion designs users bring, at teacher and small sizes."""

from .fusion_model import MODALITY_INPUTS, PRESETS, FusionModel, build_fusion_model, count_params
from .fusions import FUSIONS

# The factory a zoo model package names in its manifest.
FACTORY = "edgekit.models:build_fusion_model"

__all__ = ["FACTORY", "FUSIONS", "MODALITY_INPUTS", "PRESETS", "FusionModel", "build_fusion_model", "count_params"]
