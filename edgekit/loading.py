"""Bring your own model: model packages, factories and checkpoints, loaded without running untrusted pickles.

A model package is a directory holding `edgekit-model.yaml` (factory, kwargs, weights file, IOSpec,
task and labels) and the weights. The same model can be given as flags instead:
`--model pkg.module:factory --weights file --io io.yaml`."""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import torch
import yaml
from torch import nn

from .errors import UsageError
from .fsutil import atomic_dir, atomic_path
from .io import IOSpec
from .records import CompressReport, load_record
from .schema_errors import load_yaml
from .tasks import CLASSIFICATION, Task, UserMetric, get_task

MANIFEST = "edgekit-model.yaml"
WEIGHTS = "model.safetensors"


class PackageManifest(pydantic.BaseModel, extra="forbid"):
    format: str = "edgekit-model/1"
    factory: str
    kwargs: dict[str, Any] = {}
    weights: str | None = WEIGHTS
    task: str = "classification"  # a task of tasks.py: what the labels are and how outputs are scored
    metric: str | None = None  # the package's own metric, pkg.mod:fn or metrics.py:fn (tasks.UserMetric)
    labels: list[str] = []
    io: dict[str, Any]
    # branch name -> module prefixes: overrides the branches found in the graph (edgekit/branches.py)
    branches: dict[str, list[str]] = {}
    meta: dict[str, Any] = {}


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    io: IOSpec
    labels: tuple[str, ...]
    manifest: PackageManifest | None  # None when given as flags
    task: Task = CLASSIFICATION


def import_object(spec: str, base_dir: Path | None = None, what: str = "factory") -> Callable[..., Any]:
    """Resolve 'pkg.module:function' or 'file.py:function' (a path relative to base_dir or the cwd): a package's
    `what` (its factory, or its metric)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"'{spec}' is not a {what} path", "write it as pkg.module:function or model.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name) if base_dir is None else base_dir / module_name
            if not path.is_file():
                raise UsageError(f"{what} file not found: {path}", "check the path in --model or edgekit-model.yaml")
            name = f"edgekit_user_{path.stem}_{abs(hash(path.resolve()))}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            assert mod_spec and mod_spec.loader
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as e:  # the user's module failed to import: name it and its error
        raise UsageError(
            f"{what} '{spec}' does not import: {type(e).__name__}: {e}", "check the module path and its imports"
        ) from e
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise UsageError(f"'{module_name}' has no callable '{attr}'", f"define {attr}() in it or fix the name")
    return obj


def portable_factory(spec: str, base_dir: Path) -> str:
    """A factory spec that resolves from anywhere: a `file.py:function` relative to a package, made absolute (a
    pruned package elsewhere rebuilds its base model with it)."""
    module, _, attr = spec.partition(":")
    return (
        f"{(base_dir / module).resolve()}:{attr}" if module.endswith(".py") and not Path(module).is_absolute() else spec
    )


def build_model(factory: str, kwargs: Mapping[str, Any], base_dir: Path | None = None) -> nn.Module:
    fn = import_object(factory, base_dir)
    try:
        model = fn(**kwargs)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"factory '{factory}' raised {type(e).__name__}: {e}", "fix the factory or its kwargs") from e
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"factory '{factory}' returned {type(model).__name__}, not a torch.nn.Module", "return the model instance"
        )
    return model


def load_state_dict(path: Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read weights without executing code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}", "pass an existing .safetensors or .pt file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"{path} is not a valid safetensors file ({e})", "re-save the weights") from e
    try:
        if trust_checkpoint:  # explicit opt-in (--trust-checkpoint): unpickling may run code from the file
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(
            f"{path} holds pickled objects or code, not only tensors; refused to unpickle it",
            "save model.state_dict() (ideally as safetensors), or pass --trust-checkpoint if you trust the file",
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise UsageError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} is not a state_dict of tensors", "save model.state_dict()")
    return dict(obj)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load weights strictly; on mismatch, name the first few keys that differ."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UsageError(
            f"weights {source} do not match the model: {'; '.join(problems[:3])}{more}",
            "check the factory kwargs match the checkpoint",
        )
    model.load_state_dict(state)


def read_manifest(directory: Path) -> PackageManifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise UsageError(f"{directory} is not a model package: no {MANIFEST}", "see docs/bring-your-own-model.md")
    try:  # load_yaml: a SafeLoader whose bad values (`!!int x`) fail as YAMLErrors too
        manifest = PackageManifest.model_validate(load_yaml(path.read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, pydantic.ValidationError) as e:
        first = str(e).splitlines()
        raise UsageError(f"{path} is malformed: {' '.join(first[:3])}") from e
    try:
        get_task(manifest.task)  # before any factory code runs
    except UsageError as e:
        raise UsageError(f"{path}: {e.message}", e.hint) from e
    return manifest


def run_model(path: Path) -> Path:
    """A compress run directory stands for the last model its stages produced (the float student), or the model
    it started from when it only quantized."""
    report = path / "report.json"
    if not report.is_file() or (path / MANIFEST).is_file():
        return path
    recorded = load_record(report, CompressReport, "compress report")
    stages, source = [Path(s.path) for s in recorded.stages if s.path], Path(recorded.model)
    packages = [p for p in stages if (p / MANIFEST).is_file()] or [source]  # a quantize-only run: its source
    if not (packages[-1] / MANIFEST).is_file():
        raise UsageError(f"compress run {path} has no model stage", "export its artifacts directly, or the teacher")
    return packages[-1]


def load_model(
    model: str | Path,
    weights: Path | None = None,
    io: Path | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Load a model package directory, or a factory given with --weights and --io; returns it in eval mode."""
    path = run_model(Path(model))
    # Cheap checks (spec files, paths) come before running any factory code.
    if path.is_dir():
        manifest = read_manifest(path)
        spec = IOSpec.load(io) if io else IOSpec.from_dict(manifest.io)
        wfile = weights or (path / manifest.weights if manifest.weights else None)
        net = build_model(manifest.factory, manifest.kwargs, path)
        labels, task = tuple(manifest.labels), get_task(manifest.task)
        if manifest.metric:
            task = task.with_metric(UserMetric(manifest.metric, import_object(manifest.metric, path, "metric")))
    elif ":" in str(model) and not path.exists():
        if io is None:
            raise UsageError("a factory model needs its IO spec", "pass --io io.yaml")
        manifest, spec, wfile, labels, task = None, IOSpec.load(io), weights, (), CLASSIFICATION
        net = build_model(str(model), {})
    else:
        raise UsageError(f"model not found: {model}", "pass a model package directory or pkg.module:factory")
    if wfile is not None:
        apply_state_dict(net, load_state_dict(wfile, trust_checkpoint), wfile)
    return LoadedModel(net.eval(), spec, labels, manifest, task)


def save_model_package(
    model: nn.Module,
    io: IOSpec,
    path: Path,
    *,
    factory: str,
    kwargs: Mapping[str, Any] | None = None,
    labels: list[str] | tuple[str, ...] = (),
    task: str = "classification",
    meta: Mapping[str, Any] | None = None,
    branches: Mapping[str, list[str]] | None = None,
    metric: str | None = None,
) -> Path:
    """Write safetensors weights and edgekit-model.yaml; the directory appears only when complete."""
    from safetensors.torch import save_file

    manifest = PackageManifest(
        factory=factory,
        kwargs=dict(kwargs or {}),
        task=task,
        metric=metric,
        labels=list(labels),
        io=io.to_dict(),
        branches=dict(branches or {}),
        meta=dict(meta or {}),
    )
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        with atomic_path(tmp / MANIFEST) as f:
            f.write_text(yaml.safe_dump(manifest.model_dump(), sort_keys=False))
    return path
