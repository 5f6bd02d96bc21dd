"""EdgeKit: compress, export and prove multimodal fusion models on edge hardware.

Optional backends (openvino, nncf, executorch, tensorrt) are imported only inside the functions
that need them, so `import edgekit` stays light."""

from __future__ import annotations

__version__ = "0.1.0"

from .io import DimRange, IOSpec, TensorSpec
from .loading import load_model, save_model_package

__all__ = ["DimRange", "IOSpec", "TensorSpec", "__version__", "load_model", "save_model_package"]
