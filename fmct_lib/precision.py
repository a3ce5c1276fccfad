"""Numeric precision per device: one rule for every place that runs a model.

On a CUDA GPU, bf16 autocast where the GPU supports it (Ampere and later), else fp16 with loss scaling;
``scaled_dot_product_attention`` then dispatches to its fused (flash / memory-efficient) kernels. On the CPU,
plain fp32: CPUs without bf16 units (this project's CI machines) run bf16 slower than fp32, and fp32 keeps the
demo's results bit-for-bit reproducible. Weights, optimiser states and outputs handed back stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

__all__ = ["autocast_for", "precision_name"]


def autocast_for(device: "torch.device | str") -> tuple[Callable[[], ContextManager], bool]:
    """(a factory of the autocast context for ``device``, whether the backward pass needs a loss scaler)."""
    device = torch.device(device)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16
    return contextlib.nullcontext, False


def precision_name(device: "torch.device | str") -> str:
    """What ``autocast_for(device)`` computes in: ``float32``, ``bfloat16 autocast`` or ``float16 autocast``
    (recorded with results; part of the key of cached features, which differ between the three)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "float32"
    return f"{'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'} autocast"
