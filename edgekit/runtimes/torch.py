"""The torch eager runner: the FP32 source model as a user runs it before deployment, the baseline that
profiles and benchmarks compare artifacts against."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..evaluation import torch_outputs
from ..io import IOSpec


class TorchRunner:
    def __init__(self, model: nn.Module, io: IOSpec, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)  # process-wide, as in any torch program
        self.run_fn = torch_outputs(model, io)
        self.name = f"torch {torch.__version__.split('+')[0]} eager"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_fn(feeds)
