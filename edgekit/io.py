"""IO specs for multi-input models: the one description that drives example inputs, feed checks,
ONNX dynamic axes, TensorRT optimisation profiles, calibration feeds and latency inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import UsageError
from .fsutil import write_text
from .schema_errors import load_yaml, show

DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}
MODALITIES = ("image", "text", "audio", "video", "other")
INT64 = 2**63  # sizes past int64 fit no runtime (ONNX stores dims as int64)
MODALITY_MASK = "modality_mask"  # optional input: (batch, n_modalities) 1 = present, 0 = missing


@dataclass(frozen=True)
class DimRange:
    """The range a symbolic dimension may take; `opt` is where runtimes tune and latency is measured."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max < INT64:
            sizes = "/".join(show(x) for x in (self.min, self.opt, self.max))  # show(): str() fails past 4300 digits
            raise UsageError(f"dim range needs 1 <= min <= opt <= max < 2**63, got {sizes}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    modality: str = "other"
    # [low, high) for example values: token ids use [0, vocab), masks [1, 2).
    value_range: tuple[float, float] | None = None
    # What the input holds when its modality is missing, for models without a modality_mask (data/adapter.py).
    absent: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(
                f"tensor '{self.name}' has unknown dtype '{self.dtype}'", f"use one of {', '.join(DTYPES)}"
            )
        if self.modality not in MODALITIES:
            raise UsageError(
                f"tensor '{self.name}' has unknown modality '{self.modality}'", f"use one of {', '.join(MODALITIES)}"
            )

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.modality != "other":
            d["modality"] = self.modality
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        if self.absent is not None:
            d["absent"] = self.absent
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        fields = {"name", "dtype", "shape", "modality", "value_range", "absent"}
        if not isinstance(d, Mapping) or set(d) - fields or "name" not in d or "shape" not in d:
            hint = "each tensor needs name, dtype and shape (modality optional)"
            raise UsageError(f"tensor spec {show(d, 200)} is malformed", hint)
        # Names are printed in messages (one line each) and compared as strings; sizes are counted, not coerced.
        name, shape = d["name"], d["shape"]
        if not isinstance(name, str) or not name.isprintable():
            raise UsageError(f"tensor spec has name {show(name)}", "give each tensor a one-line string name")
        if not isinstance(shape, list | tuple) or not all(_is_dim(x) for x in shape):
            raise UsageError(
                f"tensor '{name}' has shape {show(shape)}", "write it as a list of sizes (>= 0) and dim names"
            )
        return cls(
            name=name,
            dtype=_word(d.get("dtype", "float32")),
            shape=tuple(shape),
            modality=_word(d.get("modality", "other")),
            value_range=_value_range(name, d.get("value_range")),
            absent=_absent(name, d.get("absent")),
        )


def _absent(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise UsageError(f"tensor '{name}' has absent {show(value)}", "give the value a missing input holds, a number")
    return float(value)


def _word(value: Any) -> str:
    """A dtype or modality as given, or its repr where it is not a one-line string (which then matches none)."""
    return value if isinstance(value, str) and value.isprintable() else show(value)


def _is_dim(x: Any) -> bool:
    if isinstance(x, str):
        return x.isprintable()
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < INT64


def _value_range(name: str, vr: Any) -> tuple[float, float] | None:
    """[low, high) as two finite floats: example inputs are drawn from it, and a text input's high is its vocab."""
    if vr is None:
        return None
    numbers = isinstance(vr, list | tuple) and len(vr) == 2 and all(type(v) in (int, float) for v in vr)
    try:
        low, high = (float(vr[0]), float(vr[1])) if numbers else (math.nan, math.nan)
    except OverflowError:  # an int past float's range
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UsageError(f"tensor '{name}' has value_range {show(vr)}", "write it as [low, high] with low < high")
    return low, high


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, DimRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in (*self.inputs, *self.outputs):
            for d in t.shape:
                if isinstance(d, str) and d not in self.dims:
                    raise UsageError(
                        f"tensor '{t.name}' uses dim '{d}' with no range", f"add '{d}: {{min, opt, max}}' under dims"
                    )
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise UsageError(f"IO spec repeats a tensor name: {names}")

    # -- queries ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Data modalities in input order (each once); 'other' inputs such as the mask are not one."""
        seen: list[str] = []
        for t in self.inputs:
            if t.modality != "other" and t.modality not in seen:
                seen.append(t.modality)
        return tuple(seen)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise UsageError(f"no input named '{name}'", f"inputs are {', '.join(self.input_names)}")

    def has_modality_mask(self) -> bool:
        return MODALITY_MASK in self.input_names

    # -- shapes ------------------------------------------------------------------------------------
    def concrete_shape(self, t: TensorSpec, point: str = "opt", **overrides: int) -> tuple[int, ...]:
        out = []
        for d in t.shape:
            if isinstance(d, int):
                out.append(d)
            elif d in overrides:
                out.append(int(overrides[d]))
            else:
                out.append(getattr(self.dims[d], point))
        return tuple(out)

    def example_inputs(self, batch: int = 1, point: str = "opt", seed: int = 0, **dims: int) -> dict[str, np.ndarray]:
        """Inputs of the right names, dtypes and shapes. Random values: for shape checks only."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = self.concrete_shape(t, point, batch=batch, **dims)
            if t.name == MODALITY_MASK:
                feeds[t.name] = np.ones(shape, t.np_dtype)
            elif t.np_dtype.kind in "iub":
                lo, hi = t.value_range or (0, 2)
                feeds[t.name] = rng.integers(int(lo), int(hi), size=shape).astype(t.np_dtype)
            else:
                lo, hi = t.value_range or (-1.0, 1.0)
                feeds[t.name] = rng.uniform(lo, hi, size=shape).astype(t.np_dtype)
        return feeds

    def example_torch(self, batch: int = 1, **kw: int) -> dict[str, Any]:
        import torch

        return {k: torch.from_numpy(v) for k, v in self.example_inputs(batch, **kw).items()}

    def validate_feeds(self, feeds: Mapping[str, Any]) -> None:
        """Raise a UsageError naming the first input that is missing or has the wrong dtype, rank or size."""
        bound: dict[str, tuple[int, str]] = {}
        for t in self.inputs:
            if t.name not in feeds:
                raise UsageError(f"feed is missing input '{t.name}'", f"the model needs {', '.join(self.input_names)}")
            arr = feeds[t.name]
            if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):  # a Python True has no shape, yet is "bool"
                raise UsageError(
                    f"input '{t.name}' is a {type(arr).__name__}, not an array", f"the spec says {t.dtype}"
                )
            dtype = str(arr.dtype).removeprefix("torch.")
            if dtype != t.dtype:
                raise UsageError(f"input '{t.name}' has dtype {dtype}", f"the spec says {t.dtype}")
            shape = tuple(arr.shape)
            if len(shape) != len(t.shape):
                raise UsageError(f"input '{t.name}' has rank {len(shape)} (shape {shape})", f"the spec says {t.shape}")
            for size, d in zip(shape, t.shape, strict=True):
                if isinstance(d, int):
                    if size != d:
                        raise UsageError(f"input '{t.name}' has shape {shape}", f"the spec says {t.shape}")
                    continue
                r = self.dims[d]
                if not r.min <= size <= r.max:
                    raise UsageError(
                        f"input '{t.name}' has {d}={size}, outside [{r.min}, {r.max}]", "resize it or widen the spec"
                    )
                if d in bound and bound[d][0] != size:
                    raise UsageError(
                        f"input '{t.name}' has {d}={size} but '{bound[d][1]}' has {d}={bound[d][0]}",
                        "shared dims must agree",
                    )
                bound[d] = (size, t.name)
        extra = set(feeds) - set(self.input_names)
        if extra:
            raise UsageError(
                f"feed has unknown input(s) {sorted(extra)}", f"the model takes {', '.join(self.input_names)}"
            )

    def fit_batch(self, n: int) -> int:
        """The batch size nearest `n` that the spec's `batch` dim allows (`n` itself where it has none): evaluation,
        distillation and probes run batches the model was declared for."""
        r = self.dims.get("batch")
        return n if r is None else min(max(n, r.min), r.max)

    def static(self) -> IOSpec:
        """The same spec with every symbolic dim fixed at its opt size (for static-shape deployments)."""
        return IOSpec(self.inputs, self.outputs, {d: DimRange(r.opt, r.opt, r.opt) for d, r in self.dims.items()})

    # -- serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "dims": {k: {"min": v.min, "opt": v.opt, "max": v.max} for k, v in self.dims.items()},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IOSpec:
        inputs, outputs = (d.get("inputs"), d.get("outputs")) if isinstance(d, Mapping) else (None, None)
        if not isinstance(inputs, list | tuple) or not isinstance(outputs, list | tuple):
            raise UsageError("IO spec needs 'inputs' and 'outputs' lists", "see docs/user-guide.md#io-spec")
        try:
            dims = {
                str(k): DimRange(int(v["min"]), int(v["opt"]), int(v["max"])) for k, v in (d.get("dims") or {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # not a mapping; int(inf)
            raise UsageError(
                f"IO spec dims are malformed ({e})", "write each as name: {min: 1, opt: 8, max: 32}"
            ) from e
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in inputs),
            outputs=tuple(TensorSpec.from_dict(t) for t in outputs),
            dims=dims,
        )

    def save(self, path: Path) -> None:
        write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> IOSpec:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"IO spec file not found: {path}", "pass an existing YAML file with --io")
        try:
            data = load_yaml(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"IO spec {path} cannot be read: {e}") from e
        except yaml.YAMLError as e:
            raise UsageError(f"IO spec {path} is not valid YAML: {str(e).splitlines()[0]}") from e
        return cls.from_dict(data)
