"""Deterministic patient-level splits (DESIGN §3: 8:1:1 by patient, from a seed).

A patient's split depends only on the seed and the patient's identifier (a keyed hash), never on which
other patients are present. Adding scans or patients later therefore never moves an existing patient
to another split, which keeps re-runs and incremental ingestion consistent.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["patient_split", "assign_splits", "subsample_patients", "SPLITS", "POOL_SPLIT"]

SPLITS = ("train", "val", "test")
# the split value of an unlabelled pretraining pool: scans that pretraining reads and no downstream split does
POOL_SPLIT = "pretrain"


def _unit_interval(patient_id: str, seed: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def patient_split(patient_id: str, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split (``train`` | ``val`` | ``test``) of one patient."""
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    u = _unit_interval(str(patient_id), seed, "split")
    edges = np.cumsum(ratios)
    return SPLITS[int(np.searchsorted(edges, u, side="right").clip(max=2))]


def assign_splits(patient_ids: Iterable[str], seed: int = 0,
                  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """Split per row: every row of the same patient gets the same split."""
    cache: dict[str, str] = {}
    out = []
    for pid in patient_ids:
        pid = str(pid)
        if pid not in cache:
            cache[pid] = patient_split(pid, seed, ratios)
        out.append(cache[pid])
    return out


def subsample_patients(patient_ids: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """A patient-level subsample (the pretraining fraction of the scaling study, Fig. 4).

    Nested: with the same seed, the 10% subset is contained in the 30% subset, which is contained in 100%.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    unique = sorted(set(map(str, patient_ids)))
    ranked = sorted(unique, key=lambda p: _unit_interval(p, seed, "fraction"))
    n = max(1, int(round(fraction * len(ranked))))
    return set(ranked[:n])
