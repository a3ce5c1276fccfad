"""Schedules over global optimiser steps (paper, Methods; DINO's and MAE's conventions).

Every schedule is a pure function of the step, so resuming needs only the step counter.
"""
from __future__ import annotations

import math

__all__ = ["warmup_cosine", "cosine_momentum", "teacher_temperature"]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then half a cosine down to ``final``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA teacher momentum: ``1 − (1 − base)(cos(π t / T) + 1) / 2``, from ``base`` at step 0 to 1 at T."""
    return 1 - (1 - base) * (math.cos(math.pi * min(1.0, step / max(1, total_steps))) + 1) / 2


def teacher_temperature(step: int, warmup_steps: int, warmup_temp: float, final_temp: float) -> float:
    """DINO teacher temperature: linear from ``warmup_temp`` to ``final_temp`` over the warm-up, then constant."""
    if step >= warmup_steps:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * step / warmup_steps
