"""The fusion zoo: the branch and fusion designs users bring, at teacher and small sizes."""

from .fusion_model import MODALITY_INPUTS, PRESETS, FusionModel, build_fusion_model, count_params
from .fusions import FUSIONS

__all__ = ["FUSIONS", "MODALITY_INPUTS", "PRESETS", "FusionModel", "build_fusion_model", "count_params"]
