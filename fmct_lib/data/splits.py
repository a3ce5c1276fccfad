"""Deterministic patient-level splits (DESIGN §3: 8:1:1 by patient, from a seed). Two ways, for two kinds of data.

- **Ingested datasets** (``stratified_splits``; every ``fmct ingest``): exact in count and stratified by label.
  A cohort of N patients gets the largest-remainder rounding of ``ratios × N`` patients per split (60 patients:
  48 / 6 / 6), and each stratum (the patients with one combination of labels, a patient's label for a task being
  the maximum over its scans, unknown where none is known) is divided in the same proportions, to within one
  patient: 10 positive patients of 60 give 8 / 1 / 1. Which patients of a stratum go where follows a keyed hash
  of the seed and the patient's identifier. The split is a function of the whole cohort, so a dataset is split
  when it is first ingested; a re-run (resumed, or accepting scans refused before) keeps every patient already
  split where it is and places only the new ones (``extend_splits``).
- **The synthetic cohort** (``assign_splits``, one patient at a time): a patient's split depends only on the seed
  and the patient's identifier (a keyed hash), never on which other patients are present. The cohort grows and
  resumes (a site may gain scans; ``fmct synth`` continues an interrupted build), and a hash never moves a
  patient to another split, which keeps re-runs and incremental generation consistent. Its price is the
  hash's binomial scatter, harmless at the cohort's size and the reason ingested (often small) cohorts do not
  use it: 60 patients can come out 55 / 3 / 2.

scikit-learn's ``StratifiedGroupKFold`` stratifies groups too, but its folds are only roughly equal in size, so it
cannot give the exact counts asked for here; the allocation below is a few lines of bookkeeping instead.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["patient_split", "assign_splits", "subsample_patients", "split_counts", "patient_strata",
           "stratified_splits", "extend_splits", "SPLITS", "POOL_SPLIT"]

SPLITS = ("train", "val", "test")
# the split value of an unlabelled pretraining pool: scans that pretraining reads and no downstream split does
POOL_SPLIT = "pretrain"


def _unit_interval(patient_id: str, seed: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_ratios(ratios) -> np.ndarray:
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    return np.asarray(ratios, dtype=float)


def patient_split(patient_id: str, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split (``train`` | ``val`` | ``test``) of one patient."""
    _check_ratios(ratios)
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


def split_counts(n: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """How many of ``n`` items each split gets: ``ratios × n`` rounded by largest remainder (so the counts sum
    to ``n``; equal remainders go to the earlier split)."""
    quota = _check_ratios(ratios) * n
    counts = np.floor(quota + 1e-9).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def patient_strata(patient_ids: Sequence[str], labels: pd.DataFrame) -> pd.Series:
    """Each patient's stratum (index: patient id, sorted): its label on every column of ``labels`` (one row per
    scan, aligned with ``patient_ids``; 1/0, missing where unknown), a patient's label being the maximum over its
    scans, written ``task=1``, ``task=0`` or ``task=?`` and joined by commas (``""`` without label columns)."""
    patients = pd.Series(list(map(str, patient_ids)), name="patient")
    if len(labels) != len(patients):
        raise ValueError(f"{len(labels)} label rows for {len(patients)} patient ids: one row per scan expected")
    if labels.columns.empty:
        return pd.Series("", index=sorted(set(patients)), dtype=object)
    table = labels.reset_index(drop=True).apply(pd.to_numeric, errors="coerce")
    per_patient = table.groupby(patients).max()
    parts = [f"{task}=" + values.map(lambda v: "?" if pd.isna(v) else str(int(v)))
             for task, values in per_patient.items()]
    return parts[0].str.cat(parts[1:], sep=",") if len(parts) > 1 else parts[0]


def stratified_splits(patient_ids: Sequence[str], labels: pd.DataFrame, seed: int = 0,
                      ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """Split per row (every row of a patient gets the same one), exact in count and stratified by label.

    ``labels``: one row per element of ``patient_ids``, one column per task. The cohort's patients are counted
    into splits by ``split_counts``; every stratum (``patient_strata``) first gets the whole part of its quota
    (``floor(ratios × size)``), then its remaining patients, at most one per split, go to the splits still short
    of their count, the largest fractional quota first (ties by a keyed hash of the seed; where that leaves a
    stratum short, an augmenting path shifts other strata's extra patients). So each stratum's count in each
    split is within one patient of its quota. Within a stratum the patients, ordered by a keyed hash of the
    seed and their identifier, fill train, val and test in turn.
    """
    ratios_arr = _check_ratios(ratios)
    strata = patient_strata(patient_ids, labels)
    names = sorted(set(strata))
    size = np.array([(strata == s).sum() for s in names])
    quota = np.outer(size, ratios_arr)
    taken = np.floor(quota + 1e-9).astype(int)
    short_stratum = size - taken.sum(axis=1)
    short_split = split_counts(len(strata), ratios) - taken.sum(axis=0)
    extra = np.zeros_like(taken)  # the one patient more than the whole quota, per stratum and split
    cells = sorted(((i, k) for i in range(len(names)) for k in range(len(SPLITS))),
                   key=lambda c: (-(quota[c] - taken[c]), _unit_interval(f"{names[c[0]]}|{c[1]}", seed, "cell")))
    for i, k in cells:
        if short_stratum[i] and short_split[k]:
            extra[i, k], short_stratum[i], short_split[k] = 1, short_stratum[i] - 1, short_split[k] - 1
    for i in np.flatnonzero(short_stratum):  # rare: the greedy pass left a stratum short
        for _ in range(short_stratum[i]):
            _move_along_augmenting_path(extra, i, short_split)
    taken += extra
    split_of: dict[str, str] = {}
    for i, name in enumerate(names):
        members = sorted(strata.index[strata == name], key=lambda p: _unit_interval(p, seed, "stratified"))
        bounds = np.cumsum(taken[i])
        for rank, patient in enumerate(members):
            split_of[patient] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
    return [split_of[str(p)] for p in patient_ids]


def extend_splits(patient_ids: Sequence[str], labels: pd.DataFrame, kept: dict[str, str], seed: int = 0,
                  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """``stratified_splits`` for a cohort some of whose patients were split before (``kept``: patient -> split).

    Those keep their split. Each new patient (in keyed-hash order) goes to the split furthest below its stratum's
    quota at the stratum's present size, ties broken by the split furthest below the cohort's quota, then by
    ``SPLITS`` order. Without a kept patient this is ``stratified_splits`` itself.
    """
    ids = [str(p) for p in patient_ids]
    kept = {p: s for p, s in kept.items() if p in set(ids)}
    if not kept:
        return stratified_splits(ids, labels, seed, ratios)
    ratios_arr = _check_ratios(ratios)
    strata = patient_strata(ids, labels)
    bad = {s for s in kept.values() if s not in SPLITS}
    if bad:
        raise ValueError(f"kept splits must be one of {SPLITS}, got {sorted(bad)}")
    split_of = dict(kept)
    counts = {name: np.zeros(len(SPLITS)) for name in set(strata)}
    for patient, split in kept.items():
        counts[strata[patient]][SPLITS.index(split)] += 1
    size = strata.value_counts()
    cohort = sum(counts.values())
    for patient in sorted(set(strata.index) - set(kept), key=lambda p: _unit_interval(p, seed, "stratified")):
        mine = counts[strata[patient]]
        gap, cohort_gap = ratios_arr * size[strata[patient]] - mine, ratios_arr * len(strata) - cohort
        k = max(range(len(SPLITS)), key=lambda k: (gap[k], cohort_gap[k], -k))
        split_of[patient] = SPLITS[k]
        mine[k] += 1
        cohort[k] += 1
    return [split_of[p] for p in ids]


def _move_along_augmenting_path(extra: np.ndarray, stratum: int, short_split: np.ndarray) -> None:
    """Place one more patient of ``stratum`` while keeping every stratum at most one over its whole quota in each
    split: find (breadth first) a chain stratum → split → another stratum holding an extra patient there → … →
    a split still short, and shift each extra one step along it (an augmenting path of the bipartite matching
    of strata to splits; one always exists, as every split's shortfall is at most the number of strata with a
    fractional quota in it)."""
    reached_from_split: dict[int, int] = {}   # split -> the stratum it was reached from
    reached_from_stratum = {stratum: -1}       # stratum -> the split whose extra it would give up (-1: the start)
    queue = [stratum]
    while queue:
        i = queue.pop(0)
        for k in np.flatnonzero(extra[i] == 0):
            if k in reached_from_split:
                continue
            reached_from_split[k] = i
            if short_split[k]:
                short_split[k] -= 1
                while k != -1:  # walk back: each stratum on the chain takes the split ahead, gives up its own
                    i = reached_from_split[k]
                    extra[i, k] = 1
                    k = reached_from_stratum[i]
                    if k != -1:
                        extra[i, k] = 0
                return
            for j in map(int, np.flatnonzero(extra[:, k])):
                if j not in reached_from_stratum:
                    reached_from_stratum[j] = int(k)
                    queue.append(j)
    raise AssertionError("no augmenting path: the split counts and the strata cannot be reconciled")


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
