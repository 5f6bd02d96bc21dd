"""A model as the verbs take it: a package directory (or a compress run), or an `nn.Module` with its IOSpec, held
in memory. Export, validate and evaluate need only the module; compress and search save a package per stage, so
they rebuild the model from its factory, and check up front that the factory does rebuild it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..compress import IN_MEMORY
from ..errors import EdgeKitError, UsageError
from ..io import IOSpec
from ..loading import LoadedModel, PackageManifest, apply_state_dict, build_model, load_model
from ..tasks import get_task

ModelLike = str | Path | LoadedModel


def model(
    module: nn.Module,
    io: IOSpec | Mapping[str, Any] | Path,
    *,
    task: str = "classification",
    labels: Sequence[str] = (),
    branches: Mapping[str, list[str]] | None = None,
    factory: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """An in-memory model with its IO spec (an IOSpec, its dict, or an io.yaml). `branches` overrides the branches
    found in the graph, as a package's `branches:` does. `factory` (`pkg.module:function`, called with `kwargs`)
    is what compress and search rebuild it with; default: its class, called without arguments."""
    spec = io if isinstance(io, IOSpec) else IOSpec.from_dict(io) if isinstance(io, Mapping) else IOSpec.load(io)
    cls = type(module)
    manifest = PackageManifest(
        factory=factory or f"{cls.__module__}:{cls.__qualname__}",
        kwargs=dict(kwargs or {}),
        task=task,
        labels=list(labels),
        io=spec.to_dict(),
        branches=dict(branches or {}),
    )
    return LoadedModel(module.eval(), spec, tuple(labels), manifest, get_task(task))


def as_loaded(given: ModelLike) -> LoadedModel:
    return given if isinstance(given, LoadedModel) else load_model(given)


def model_name(given: ModelLike) -> str:
    """How records name the model: its path, or `in-memory`."""
    return IN_MEMORY if isinstance(given, LoadedModel) else str(given)


def check_rebuilds(given: LoadedModel) -> None:
    """Compress and search save each stage as a package that its factory rebuilds: refuse, before any work, an
    in-memory model whose factory does not rebuild it with its own weights."""
    assert given.manifest is not None
    factory = given.manifest.factory
    try:
        rebuilt = build_model(factory, given.manifest.kwargs)
        apply_state_dict(rebuilt, given.model.state_dict(), "of the in-memory model")
    except (EdgeKitError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"compress saves each stage as a package rebuilt by the model's factory, and {factory} "
                         f"does not rebuild it ({(str(e).splitlines() or [''])[0]})",
                         "pass factory='pkg.module:function' and its kwargs to "
                         "edgekit.api.model") from e  # fmt: skip
