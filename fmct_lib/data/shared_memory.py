"""Room in shared memory for the batches of DataLoader workers.

A ``DataLoader`` worker hands each batch it reads to the main process through shared memory: on Linux the
``/dev/shm`` file system. A container gets 64 MB of it unless told otherwise (``docker run --shm-size``),
while one pretraining batch of paper-size canvases (224³ int16, 22.5 MB a scan) is hundreds of MB. Without a
check the first batch kills its worker with a bus error; with it, the run stops before it starts, saying how
much it needs and how to give it. Under ``torchrun`` every process on a machine (``LOCAL_WORLD_SIZE``) has
workers of its own, and they all share that machine's ``/dev/shm``: the need is counted for all of them.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

SHARED_MEMORY = Path("/dev/shm")
PREFETCH_FACTOR = 2  # torch's default: batches each worker reads ahead


def shared_memory_free(folder: Path = SHARED_MEMORY) -> int | None:
    """Free bytes of the shared-memory file system, or None where there is none (macOS, Windows)."""
    return shutil.disk_usage(folder).free if folder.is_dir() else None


def batches_in_flight(num_workers: int) -> int:
    """Batches that live in shared memory at once: each worker's read-ahead, and the one being used."""
    return num_workers * PREFETCH_FACTOR + 1 if num_workers else 0


def item_bytes(item) -> int:
    """Bytes of one dataset item's volume (an item is a tensor, an array or a dict with ``volume``)."""
    volume = item["volume"] if isinstance(item, dict) else item
    return torch.as_tensor(volume).nbytes


def processes_on_this_machine() -> int:
    """The training processes that share this machine's ``/dev/shm``: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_room_for_batches(dataset, batch_size: int, num_workers: int, what: str,
                           processes: int | None = None) -> None:
    """Raise ``ValueError`` when the batches that ``num_workers`` workers in each of ``processes`` processes
    (default :func:`processes_on_this_machine`) read from ``dataset`` cannot all be in shared memory at once.
    ``what`` names the run in the message. Nothing is checked without workers (the main process reads) or where
    the system has no ``/dev/shm``."""
    if not num_workers or not len(dataset):
        return
    free = shared_memory_free()
    if free is None:
        return
    processes = processes or processes_on_this_machine()
    batch = item_bytes(dataset[0]) * min(batch_size, len(dataset))
    per_process = batches_in_flight(num_workers)
    need = batch * per_process * processes
    if need > free:
        fits = max(0, (free // (batch * processes) - 1) // PREFETCH_FACTOR)
        each = f" in each of the {processes} processes on this machine" if processes > 1 else ""
        raise ValueError(
            f"{what}: with --workers {num_workers}{each}, up to {per_process * processes} batches of "
            f"{_size(batch)} ({_size(need)} in all) wait in shared memory, and {SHARED_MEMORY} has {_size(free)} "
            f"free. Give it more (docker run --shm-size={math.ceil(need / 1e9)}g) or use fewer workers "
            f"(--workers {fits}; 0 reads in the main process)")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"
