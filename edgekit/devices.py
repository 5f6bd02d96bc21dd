"""Where training runs: a torch device, mixed precision, and data-parallel processes under torchrun.

Training and distillation run on any torch device; everything measured for a verdict still runs in the artifact's
own runtime. Under `torchrun` (torch.distributed: gloo on CPUs, NCCL on GPUs) distillation is data-parallel with
DistributedDataParallel; rank 0 alone writes files."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
from torch import distributed as dist

from .errors import UsageError

Amp = Literal["bf16", "fp16"]
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A stage that only rank 0 runs (pruning, INT8) can take many minutes while the others wait at a barrier.
BARRIER_TIMEOUT = timedelta(hours=6)


def resolve_device(spec: str | None) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `mps`; None: the best available (CUDA, then MPS, then the CPU). Under torchrun
    on CUDA each process takes the GPU of its LOCAL_RANK."""
    usable = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    try:
        device = torch.device(spec or next(k for k, ok in usable.items() if ok))
    except RuntimeError as e:
        raise UsageError(f"'{spec}' is not a torch device", "use cpu, cuda, cuda:N or mps") from e
    if device.type not in usable:
        raise UsageError(f"--device {spec} is not supported", "use cpu, cuda, cuda:N or mps")
    if not usable[device.type]:
        raise UsageError(f"--device {spec}: this torch has no usable {device.type.upper()} device",
                         "install a build of torch for it on such a machine, or use --device cpu")  # fmt: skip
    if device.type != "cuda":
        return device
    index = int(os.environ.get("LOCAL_RANK", "0")) if device.index is None and under_torchrun() else device.index
    if (index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices", "use cuda:0")
    return torch.device("cuda", index or 0)


def check_amp(amp: str | None, device: torch.device) -> None:
    """bf16 on CPUs, CUDA GPUs that have it and MPS; fp16 on CUDA and MPS (CPU fp16 kernels are slow or missing)."""
    if amp is None:
        return
    if amp not in AMP_DTYPES:
        raise UsageError(f"--amp {amp} is not a mixed precision", "use bf16 or fp16")
    ok = {"cpu": amp == "bf16", "mps": True, "cuda": amp == "fp16" or torch.cuda.is_bf16_supported()}
    if not ok.get(device.type, False):
        raise UsageError(f"--amp {amp} is not supported on {device.type}",
                         "use --amp bf16 on a CPU, fp16 on a GPU without bf16, or no --amp")  # fmt: skip


@dataclass(frozen=True)
class Placement:
    """A training loop's device and mixed precision."""

    device: torch.device
    amp: Amp | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def tensor(self, array: Any) -> torch.Tensor:
        return torch.as_tensor(array).to(self.device)

    def tensors(self, arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: self.tensor(v) for k, v in arrays.items()}


def placement(device: str | None = None, amp: str | None = None) -> Placement:
    resolved = resolve_device(device)
    check_amp(amp, resolved)
    return Placement(resolved, amp)  # type: ignore[arg-type]


# -- torch.distributed -------------------------------------------------------------------------------------------


def joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in this one's group; 1 outside torch.distributed."""
    return dist.get_world_size() if joined() else 1


def rank() -> int:
    return dist.get_rank() if joined() else 0


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); False when not under it."""
    if not under_torchrun() or joined():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return True


def barrier() -> None:
    if joined():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not joined():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: Sequence[float]) -> list[float]:
    if not joined():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The process group for one command under torchrun (nothing otherwise), torn down when it ends."""
    started = init_from_env(device)
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str], stdout: int | None = None) -> int:
    """Run `edgekit ARGV` in `nproc` processes under torchrun (on this machine), their output to `stdout` (a file
    descriptor; None: this process's), and return its exit status."""
    if under_torchrun():
        raise UsageError("--nproc inside torchrun", "pass --nproc or run under torchrun, not both")
    command = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "edgekit", *argv]  # fmt: skip
    # PYTHONSAFEPATH: torchrun starts each worker as `python -m edgekit`, which would import an ./edgekit folder of
    # the working directory before the installed package; -P covers only the launcher itself.
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, cpu_share(nproc))))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONSAFEPATH": "1"}
    return subprocess.run(command, env=env, stdout=stdout, check=False).returncode


def cpu_share(nproc: int) -> int:
    """Threads per process so that `nproc` processes do not oversubscribe this machine's CPUs."""
    return max(1, len(os.sched_getaffinity(0)) // nproc)
