"""Deterministic patient-level splits (DESIGN §3: 8:1:1 by patient, from a seed). Two ways, for two kinds of data.

- **Ingested datasets** (``stratified_splits``; every ``fmct ingest``): exact in count and stratified by label.
  A cohort of N patients gets the largest-remainder rounding of ``ratios × N`` patients per split (60 patients:
  48 / 6 / 6), and every task's positive and negative patients (a patient's label for a task being the maximum
  over its scans) are divided in nearly the same proportions by iterative stratification: 10 positive patients
  of 60 give 8 / 1 / 1. Which patients go where follows a keyed hash of the seed and the patient's identifier.
  The split is a function of the whole cohort, so a dataset is split when it is first ingested; a re-run
  (resumed, or accepting scans refused before) keeps every patient already split where it is and places only
  the new ones (``extend_splits``).
- **The synthetic cohort** (``assign_splits``, one patient at a time): a patient's split depends only on the seed
  and the patient's identifier (a keyed hash), never on which other patients are present. The cohort grows and
  resumes (a site may gain scans; ``fmct synth`` continues an interrupted build), and a hash never moves a
  patient to another split, which keeps re-runs and incremental generation consistent. Its price is the
  hash's binomial scatter, harmless at the cohort's size and the reason ingested (often small) cohorts do not
  use it: 60 patients can come out 55 / 3 / 2.

scikit-learn's ``StratifiedGroupKFold`` stratifies groups too, but by one label and into folds only roughly equal
in size; scikit-multilearn's ``IterativeStratification`` takes many labels but neither patients nor exact counts.
The allocation below is the same algorithm with both, in a few lines of bookkeeping.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["patient_split", "assign_splits", "subsample_patients", "split_counts", "patient_labels",
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


def patient_labels(patient_ids: Sequence[str], labels: pd.DataFrame) -> pd.DataFrame:
    """What stratification balances: per patient (index: patient id, sorted), one boolean column per known label
    value, ``task=1`` and ``task=0`` for every column of ``labels`` (one row per scan, aligned with ``patient_ids``;
    1/0, missing where unknown). A patient's label is the maximum over its scans; a patient unknown for a task
    has neither of its columns."""
    patients = pd.Series(list(map(str, patient_ids)), name="patient")
    if len(labels) != len(patients):
        raise ValueError(f"{len(labels)} label rows for {len(patients)} patient ids: one row per scan expected")
    per_patient = labels.reset_index(drop=True).apply(pd.to_numeric, errors="coerce").astype(float).groupby(patients).max()
    per_patient = per_patient.reindex(sorted(set(patients)))
    columns = {f"{task}={value}": (values == value).to_numpy()
               for task, values in per_patient.items() for value in (1, 0)}
    return pd.DataFrame(columns, index=per_patient.index, dtype=bool)


def stratified_splits(patient_ids: Sequence[str], labels: pd.DataFrame, seed: int = 0,
                      ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """Split per row (every row of a patient gets the same one), exact in count and stratified by label.

    ``labels``: one row per element of ``patient_ids``, one column per task. Iterative stratification (Sechidis,
    Tsoumakas & Vlahavas, ECML PKDD 2011), by patient: every known label value (``patient_labels``: ``ich=1``,
    ``ich=0``, ...) wants ``ratios ×`` its patients in each split. The value with the fewest patients still
    unplaced goes first: each of its patients (ordered by a keyed hash of the seed and their identifier) goes to
    the split that wants that value most, ties to the split that wants all the patient's values most, then to
    the one with the most room left, then the earlier split;
    every value the patient holds is then wanted once less there. Patients without a known label fill the room
    that is left. A split takes no more patients than ``split_counts`` gives it, so the counts are exact. With one
    task each value is within one patient of its quota; with many (CQ500's 14 findings) every task's positives
    stay close to theirs, where dividing each combination of labels would leave most combinations with one or two
    patients and scatter the common tasks (ICH test positives 12–19 for a quota of 18 in a CQ500-like cohort).
    """
    ratios_arr = _check_ratios(ratios)
    per_patient = patient_labels(patient_ids, labels)
    order = sorted(per_patient.index, key=lambda p: _unit_interval(p, seed, "stratified"))
    held = per_patient.loc[order].to_numpy()                   # patient x label value, in placing order
    room = split_counts(len(order), ratios).astype(float)       # patients each split still takes
    wanted = np.outer(held.sum(axis=0), ratios_arr)             # label value x split
    split_of = np.full(len(order), -1)
    while (split_of < 0).any():
        unplaced = split_of < 0
        left = held[unplaced].sum(axis=0)
        values = np.flatnonzero(left)
        value = values[np.argmin(left[values])] if len(values) else None
        for i in np.flatnonzero(unplaced & (held[:, value] if value is not None else True)):
            open_splits = np.flatnonzero(room > 0)
            want = wanted[value, open_splits] if value is not None else np.zeros(len(open_splits))
            also = wanted[:, open_splits].T @ held[i]         # how much it wants the patient's values
            k = open_splits[np.lexsort((open_splits, -room[open_splits], -also, -want))[0]]
            split_of[i], room[k] = k, room[k] - 1
            wanted[:, k] -= held[i]
    split_by_patient = {p: SPLITS[k] for p, k in zip(order, split_of)}
    return [split_by_patient[str(p)] for p in patient_ids]


def extend_splits(patient_ids: Sequence[str], labels: pd.DataFrame, kept: dict[str, str], seed: int = 0,
                  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[str]:
    """``stratified_splits`` for a cohort some of whose patients were split before (``kept``: patient -> split).

    Those keep their split. Each new patient (in keyed-hash order) goes to the split furthest below the quota, at
    the cohort's present size, of its rarest label value (the one fewest patients hold), ties broken by the split
    furthest below the cohort's quota, then by ``SPLITS`` order. Without a kept patient this is
    ``stratified_splits`` itself.
    """
    ids = [str(p) for p in patient_ids]
    kept = {p: s for p, s in kept.items() if p in set(ids)}
    if not kept:
        return stratified_splits(ids, labels, seed, ratios)
    ratios_arr = _check_ratios(ratios)
    bad = {s for s in kept.values() if s not in SPLITS}
    if bad:
        raise ValueError(f"kept splits must be one of {SPLITS}, got {sorted(bad)}")
    per_patient = patient_labels(ids, labels)
    size = per_patient.sum(axis=0).to_numpy()
    have = np.zeros((per_patient.shape[1], len(SPLITS)))       # label value x split
    cohort = np.zeros(len(SPLITS))
    for patient, split in kept.items():
        have[:, SPLITS.index(split)] += per_patient.loc[patient].to_numpy()
        cohort[SPLITS.index(split)] += 1
    split_of = dict(kept)
    for patient in sorted(set(per_patient.index) - set(kept), key=lambda p: _unit_interval(p, seed, "stratified")):
        holds = per_patient.loc[patient].to_numpy()
        values = np.flatnonzero(holds)
        rarest = values[np.argmin(size[values])] if len(values) else None
        gap = ratios_arr * size[rarest] - have[rarest] if rarest is not None else np.zeros(len(SPLITS))
        cohort_gap = ratios_arr * len(per_patient) - cohort
        k = max(range(len(SPLITS)), key=lambda k: (gap[k], cohort_gap[k], -k))
        split_of[patient] = SPLITS[k]
        have[:, k] += holds
        cohort[k] += 1
    return [split_of[p] for p in ids]


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
