"""ExecuTorch runner for .pte artifacts, through ExecuTorch's Python runtime (the same C++ runtime and
XNNPACK delegate an app links).

The program takes its inputs positionally, in the order torch.export flattened them (the manifest's
`input_order`). Its memory is planned for the largest batch it allows, so larger batches run in slices of
that size; a static batch pads its last slice by repeating the final sample."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import numpy as np
import torch

from ..agent import usable_cpus
from ..artifact import Artifact
from ..errors import UsageError
from ..noise import native_output_quiet


class ExecuTorchRunner:
    def __init__(self, artifact: Artifact, threads: int | None = None, device: str | None = None) -> None:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        if device not in (None, "cpu"):
            raise UsageError(f"ExecuTorch runs .pte files on the CPU here, not on '{device}'", "use device 'cpu'")
        try:
            with native_output_quiet():  # its C++ log: cpuinfo's probes, the thread pool's size
                # XNNPACK's thread pool is process-wide, and sized by default for more CPUs than this process may use
                _unsafe_reset_threadpool(threads or usable_cpus())
                self.method = Runtime.get().load_program(artifact.path).load_method("forward")
        except RuntimeError as e:
            raise UsageError(
                f"ExecuTorch cannot load {artifact.path}: {str(e).splitlines()[0]}",
                "re-export the artifact, or rerun with the executorch it was exported for",
            ) from e
        io = artifact.io
        self.order: list[str] = list(artifact.meta.get("input_order", io.input_names))
        self.outputs = io.output_names
        self.axis = {t.name: t.shape.index("batch") for t in (*io.inputs, *io.outputs) if "batch" in t.shape}
        self.static_batch = "batch" not in artifact.meta.get("dynamic_dims", {})
        # The most samples one call takes: the planned capacity of a dynamic batch, or the static batch.
        self.max_batch = 0
        for i, name in enumerate(self.order):
            if name in self.axis:
                self.max_batch = self.method.metadata.input_tensor_meta(i).sizes()[self.axis[name]]
                break
        self.name = f"executorch {importlib.metadata.version('executorch')}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batched = [feeds[k].shape[a] for k, a in self.axis.items() if k in feeds]
        n = batched[0] if batched and self.max_batch else 0
        if n == self.max_batch or (n < self.max_batch and not self.static_batch):
            return self._call(feeds)
        parts = [self._slice(feeds, start, min(start + self.max_batch, n)) for start in range(0, n, self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts], axis=self.axis.get(k, 0)) for k in self.outputs}

    def _slice(self, feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) in one call; a static batch is filled up by repeating the last sample."""
        idx = np.arange(start, stop)
        if self.static_batch:
            idx = np.pad(idx, (0, self.max_batch - len(idx)), mode="edge")
        out = self._call({k: np.take(v, idx, axis=self.axis[k]) if k in self.axis else v for k, v in feeds.items()})
        return {k: np.take(v, np.arange(stop - start), axis=self.axis.get(k, 0)) for k, v in out.items()}

    def _call(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.method.execute([torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.order])
        return {k: v.numpy() for k, v in zip(self.outputs, values, strict=True)}
