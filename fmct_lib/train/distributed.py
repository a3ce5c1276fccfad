"""One entry point for one CPU, one GPU, many GPUs or many nodes (DESIGN §4).

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` set), the
process joins a ``torch.distributed`` group — NCCL on GPUs, gloo on CPUs — and the trainer wraps the
model in ``DistributedDataParallel``. Launched plainly, it runs as a group of one without any collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..precision import check_device

__all__ = ["DistInfo", "setup", "teardown", "all_reduce_mean", "all_gather_rows", "barrier"]

# How long a process waits at a collective for the others. Rank 0 alone scores the validation monitor at step 0
# and after every epoch (train/monitor.py: up to 2,600 scans, 58 GB of paper-size canvases read from the cache)
# while the other processes wait at their next collective; NCCL's default of 10 minutes could end a healthy run
# on slow storage. A process that fails still ends the run at once: torchrun stops the others.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(device, local_rank: int) -> torch.device:
    """``device`` as given, else this process's GPU, else the CPU; a bare ``"cuda"`` is this process's GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group named by the environment (if any) and choose this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev)


def teardown() -> None:
    """Leave the process group, if this process joined one (the end of a command-line run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity for a single process)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def mean_over_processes(values: dict[str, float], device) -> dict[str, float]:
    """Each logged number's mean over processes (one all-reduce on ``device``; as it is for a single process): a
    term a process computes on its own rows, logged by rank 0 beside the loss, which is such a mean."""
    if not values or not dist.is_initialized():
        return dict(values)
    means = all_reduce_mean(torch.tensor(list(values.values()), dtype=torch.float64, device=device))
    return dict(zip(values, means.tolist()))


def all_gather_rows(values: torch.Tensor) -> torch.Tensor:
    """The rows of ``values`` of every process, in rank order (``values`` for a single process); the processes
    may hold different numbers of rows. Not differentiable: for statistics of a global batch."""
    if not dist.is_initialized():
        return values
    values = values.detach().contiguous()
    count = torch.tensor([values.shape[0]], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = values.new_zeros((max(counts), *values.shape[1:]))
    padded[:values.shape[0]] = values
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
