"""Patient-level splits of ingested datasets (fmct_lib.data.splits.stratified_splits): exact in count, stratified by
label, deterministic from the seed; the synthetic cohort's per-patient hash (``assign_splits``) is kept beside it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmct_lib.data.splits import (SPLITS, assign_splits, extend_splits, patient_strata, split_counts,
                                  stratified_splits)


def _counts(splits: list[str], mask=None) -> list[int]:
    """Scans per split (train, val, test), of the rows where ``mask`` holds."""
    s = pd.Series(splits)[mask if mask is not None else slice(None)]
    return [int((s == name).sum()) for name in SPLITS]


@pytest.mark.parametrize("n, expected", [
    (60, [48, 6, 6]),   # 8:1:1 exactly
    (13, [11, 1, 1]),   # 10.4 / 1.3 / 1.3: floors 10 / 1 / 1, the one left to the largest remainder (train's .4)
    (5, [4, 1, 0]),     # 4 / .5 / .5: a tie of remainders goes to the earlier split
    (0, [0, 0, 0]),
])
def test_split_counts_round_by_largest_remainder(n, expected):
    assert split_counts(n).tolist() == expected


def test_a_small_cohort_gets_exact_counts_and_stratified_positives():
    # the cohort: 60 patients; 10 positive. The per-patient hash scatters them (here 45 / 5 / 10).
    patients = [f"P{i:03d}" for i in range(60)]
    labels = pd.DataFrame({"ich": [1] * 10 + [0] * 50})
    assert _counts(assign_splits(patients, seed=0)) != [48, 6, 6]
    splits = stratified_splits(patients, labels, seed=0)
    assert _counts(splits) == [48, 6, 6]
    # quotas 8 / 1 / 1 of the positives and 40 / 5 / 5 of the negatives are whole numbers: met exactly
    assert _counts(splits, labels["ich"] == 1) == [8, 1, 1]
    assert _counts(splits, labels["ich"] == 0) == [40, 5, 5]


def test_splits_are_patient_level_and_follow_the_seed():
    # 30 patients with 1–3 scans each; a patient is positive where any of its scans is
    rng = np.random.default_rng(0)
    patients = [f"P{p}" for p in range(30) for _ in range(rng.integers(1, 4))]
    labels = pd.DataFrame({"ich": [int(p in {"P1", "P2", "P3"}) for p in patients]})
    splits = stratified_splits(patients, labels, seed=5)
    per_patient = pd.DataFrame({"p": patients, "s": splits}).groupby("p")["s"]
    assert (per_patient.nunique() == 1).all()
    assert per_patient.first().value_counts().reindex(SPLITS).tolist() == [24, 3, 3]
    assert splits == stratified_splits(patients, labels, seed=5)
    others = [stratified_splits(patients, labels, seed=seed) for seed in range(6, 10)]
    assert any(o != splits for o in others)


def test_patient_strata_combine_tasks_by_the_maximum_over_scans():
    patients = ["a", "a", "b", "c", "c"]
    labels = pd.DataFrame({"ich": [0, 1, 0, None, None], "sah": [0, 0, None, 1, 0]}, dtype="Int64")
    assert patient_strata(patients, labels).to_dict() == {"a": "ich=1,sah=0", "b": "ich=0,sah=?", "c": "ich=?,sah=1"}
    assert patient_strata(patients, labels[[]]).to_dict() == {"a": "", "b": "", "c": ""}
    with pytest.raises(ValueError, match="3 label rows for 5 patient ids"):
        patient_strata(patients, labels.head(3))


def test_a_stratum_left_short_by_the_greedy_pass_is_placed_by_an_augmenting_path():
    # 13 patients, 6 positive, 7 negative; targets 11 / 1 / 1. Quotas: positives 4.8 / .6 / .6 (floors 4 / 0 / 0),
    # negatives 5.6 / .7 / .7 (floors 5 / 0 / 0). The greedy pass gives positives their train extra (.8), then
    # negatives val and test (.7 each), which fills val and test while a positive is left over and train (still one
    # short) already has the positives' extra. The path moves the negatives' val extra to train and gives val to
    # the positive: positives 5 / 1 / 0, negatives 6 / 0 / 1, each within one patient of its quota.
    patients = [f"p{i}" for i in range(13)]
    labels = pd.DataFrame({"t": [1] * 6 + [0] * 7})
    splits = stratified_splits(patients, labels, seed=0)
    assert _counts(splits) == [11, 1, 1]
    assert _counts(splits, labels["t"] == 1) == [5, 1, 0]
    assert _counts(splits, labels["t"] == 0) == [6, 0, 1]


def test_every_stratum_is_within_one_patient_of_its_quota():
    # random cohorts: 0–3 tasks with unknown labels, other ratios too; the totals are always split_counts
    rng = np.random.default_rng(1)
    for trial in range(150):
        n, n_tasks = int(rng.integers(1, 120)), int(rng.integers(0, 4))
        labels = pd.DataFrame({f"t{j}": rng.choice([0.0, 1.0, np.nan], size=n, p=[0.6, 0.3, 0.1])
                               for j in range(n_tasks)}, index=range(n))
        ratios = tuple(rng.dirichlet([3, 1, 1])) if trial % 2 else (0.8, 0.1, 0.1)
        patients = [f"p{i}" for i in range(n)]
        splits = stratified_splits(patients, labels, seed=trial, ratios=ratios)
        assert _counts(splits) == split_counts(n, ratios).tolist()
        strata = patient_strata(patients, labels).reindex(patients).to_numpy()
        for stratum in set(strata):
            members = strata == stratum
            quota = members.sum() * np.asarray(ratios)
            assert np.abs(np.array(_counts(splits, members)) - quota).max() <= 1 + 1e-9, (trial, stratum)


def test_bad_ratios_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_splits(["a"], pd.DataFrame(index=range(1)), ratios=(0.5, 0.5, 0.5))


def test_extend_splits_keeps_earlier_patients_and_places_only_the_new():
    """A re-ingestion that gains 10 patients keeps the first 10 where they were and fills the quotas."""
    first = [f"P{i:03d}" for i in range(10)]
    labels = pd.DataFrame({"ich": [1, 0] * 5})
    kept = dict(zip(first, stratified_splits(first, labels, seed=0)))
    assert _counts(list(kept.values())) == [8, 1, 1]
    assert extend_splits(first, labels, {}, seed=0) == stratified_splits(first, labels, seed=0)
    assert extend_splits(first, labels, kept, seed=0) == list(kept.values())

    cohort = first + [f"Q{i:03d}" for i in range(10)]
    both = pd.DataFrame({"ich": [1, 0] * 10})
    splits = extend_splits(cohort, both, kept, seed=0)
    assert splits[:10] == list(kept.values())
    assert stratified_splits(cohort, both, seed=0)[:10] != splits[:10]  # a fresh split would move some of them
    # 20 patients, 10 per stratum: each stratum 8 / 1 / 1, the cohort 16 / 2 / 2
    assert _counts(splits) == [16, 2, 2]
    assert _counts(splits, both["ich"] == 1) == [8, 1, 1] and _counts(splits, both["ich"] == 0) == [8, 1, 1]


def test_extend_splits_places_a_new_patient_where_its_stratum_is_short():
    # hand-computed: stratum ich=1 holds A (train) and B (train); quota for 3 patients is 2.4 / .3 / .3, so the
    # gaps are .4 / .3 / .3 and C goes to train; a fourth, D: quota 3.2 / .4 / .4 against 3 / 0 / 0 -> val
    labels = pd.DataFrame({"ich": [1, 1, 1]})
    assert extend_splits(["A", "B", "C"], labels, {"A": "train", "B": "train"}) == ["train"] * 3
    labels = pd.DataFrame({"ich": [1, 1, 1, 1]})
    assert extend_splits(["A", "B", "C", "D"], labels, {"A": "train", "B": "train", "C": "train"})[3] == "val"
    with pytest.raises(ValueError, match="kept splits"):
        extend_splits(["A", "B"], labels.iloc[:2], {"A": "pretrain"})
