"""Numeric precision per device: one rule for every place that runs a model.

On a CUDA GPU, bf16 autocast where the GPU supports it (Ampere and later), else fp16 with loss scaling;
``scaled_dot_product_attention`` then dispatches to its fused (flash / memory-efficient) kernels. On the CPU,
plain fp32: CPUs without bf16 units (this project's CI machines) run bf16 slower than fp32, and fp32 keeps the
demo's results bit-for-bit reproducible. Weights, optimiser states and outputs handed back stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable

import torch

__all__ = ["autocast_for", "precision_name", "infer", "check_device"]


def check_device(device: "torch.device | str") -> torch.device:
    """``device`` as a ``torch.device`` that can run here (a bare ``"cuda"`` stays bare); a name torch does not
    know, a GPU where torch sees none, or a GPU index beyond those visible is refused in one line."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: not a device name (cpu, cuda, cuda:1): {e}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible to this process; "
                             "use device='cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} asked for, but this process sees {count} GPU(s) (cuda:0 to "
                             f"cuda:{count - 1})")
    return dev


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on ``device``; None for plain fp32."""
    if device.type != "cuda":
        return None
    # bf16 units from compute capability 8 (Ampere); ``torch.cuda.is_bf16_supported()`` also says yes where bf16
    # is only emulated (V100, T4), which runs slower than fp16, and asks the current device, not this one
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast_for(device: "torch.device | str") -> tuple[Callable[[], ContextManager], bool]:
    """(a factory of the autocast context for ``device``, whether the backward pass needs a loss scaler)."""
    device = torch.device(device)
    dtype = _autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext, False
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype == torch.float16


def precision_name(device: "torch.device | str") -> str:
    """What ``autocast_for(device)`` computes in: ``float32``, ``bfloat16 autocast`` or ``float16 autocast``
    (recorded with results; part of the key of cached features, which differ between the three)."""
    dtype = _autocast_dtype(torch.device(device))
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def infer(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor],
          device: "torch.device | str") -> list[torch.Tensor]:
    """``fn`` of each batch moved to ``device``, under its autocast, each output back as fp32 on the CPU."""
    autocast, _ = autocast_for(device)
    out = []
    for x in batches:
        with autocast():
            out.append(fn(x.to(device)).float().cpu())
    return out
