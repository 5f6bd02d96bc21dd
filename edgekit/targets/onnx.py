"""ONNX export through the dynamo exporter at opset 18, with the IOSpec's symbolic dims made dynamic.

The legacy exporter bakes the traced sequence length into attention reshapes, so it is not used."""

from __future__ import annotations

import contextlib
import io as _io
import warnings
from pathlib import Path

import torch
from torch import nn

from ..fsutil import atomic_path
from ..io import IOSpec

OPSET = 18


def dynamic_shapes(io: IOSpec) -> dict[str, dict[int, torch.export.Dim]]:
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in io.dims.items()}
    return {t.name: {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in io.inputs}


def export_onnx(model: nn.Module, io: IOSpec, path: Path, batch: int = 2) -> Path:
    """Export `model` (called with keyword inputs named as in `io`) to `path`, written atomically."""
    model = model.eval()
    # Trace away from the range ends: a size of 1 would be specialised as a constant.
    sample = io.example_torch(batch=max(batch, 2), **{d: max(r.opt, 2) for d, r in io.dims.items() if d != "batch"})
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (), str(tmp), kwargs=sample, dynamic_shapes=dynamic_shapes(io), dynamo=True,
            opset_version=OPSET, input_names=io.input_names, output_names=io.output_names, external_data=False,
        )  # fmt: skip
    return path
