"""Patient-level splits of ingested datasets (fmct_lib.data.splits.stratified_splits): exact in count, stratified by
label, deterministic from the seed; the synthetic cohort's per-patient hash (``assign_splits``) is kept beside it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmct_lib.data.splits import (SPLITS, assign_splits, extend_splits, patient_labels, split_counts,
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


def test_patient_labels_hold_each_known_value_by_the_maximum_over_scans():
    patients = ["a", "a", "b", "c", "c"]
    labels = pd.DataFrame({"ich": [0, 1, 0, None, None], "sah": [0, 0, None, 1, 0]}, dtype="Int64")
    held = patient_labels(patients, labels)
    assert list(held.columns) == ["ich=1", "ich=0", "sah=1", "sah=0"] and list(held.index) == ["a", "b", "c"]
    assert held.astype(int).to_numpy().tolist() == [[1, 0, 0, 1],   # a: ich positive on one scan, sah negative
                                                    [0, 1, 0, 0],   # b: sah unknown
                                                    [0, 0, 1, 0]]   # c: ich unknown, sah positive on one scan
    assert patient_labels(patients, labels[[]]).shape == (3, 0)
    with pytest.raises(ValueError, match="3 label rows for 5 patient ids"):
        patient_labels(patients, labels.head(3))


def test_a_split_without_room_takes_no_more_patients():
    # 13 patients, 6 positive, 7 negative; targets 11 / 1 / 1. The positives, the rarer value, go first, each to the
    # split that wants them most: quotas 4.8 / .6 / .6, so five to train (wanted .8 -> -.2), then val (.6; a tie
    # with test goes to the earlier split). The negatives want 5.6 / .7 / .7, but val is full: six to train, the
    # last to test. Positives 5 / 1 / 0, negatives 6 / 0 / 1, each within one patient of its quota.
    patients = [f"p{i}" for i in range(13)]
    labels = pd.DataFrame({"t": [1] * 6 + [0] * 7})
    splits = stratified_splits(patients, labels, seed=0)
    assert _counts(splits) == [11, 1, 1]
    assert _counts(splits, labels["t"] == 1) == [5, 1, 0]
    assert _counts(splits, labels["t"] == 0) == [6, 0, 1]


def test_one_task_keeps_each_value_within_one_patient_of_its_quota():
    # random cohorts with unknown labels, other ratios too; the totals are always split_counts
    rng = np.random.default_rng(1)
    for trial in range(150):
        n = int(rng.integers(1, 120))
        labels = pd.DataFrame({"t": rng.choice([0.0, 1.0, np.nan], size=n, p=[0.6, 0.3, 0.1])})
        ratios = tuple(rng.dirichlet([3, 1, 1])) if trial % 2 else (0.8, 0.1, 0.1)
        splits = stratified_splits([f"p{i}" for i in range(n)], labels, seed=trial, ratios=ratios)
        assert _counts(splits) == split_counts(n, ratios).tolist()
        for value in (0, 1):
            members = labels["t"] == value
            quota = members.sum() * np.asarray(ratios)
            assert np.abs(np.array(_counts(splits, members)) - quota).max() <= 1 + 1e-9, (trial, value)


def cq500_like(n=491, seed=0) -> pd.DataFrame:
    """14 findings of CQ500's prevalences: ICH in 42% of patients, its five subtypes only with it, eight others."""
    rng = np.random.default_rng(seed)
    ich = rng.random(n) < 0.42
    findings = {"ich": ich}
    for task, given_ich in [("iph", 0.65), ("ivh", 0.14), ("sdh", 0.26), ("edh", 0.06), ("sah", 0.29)]:
        findings[task] = ich & (rng.random(n) < given_ich)
    for task, p in [("fracture", 0.08), ("calvarial", 0.07), ("mass_effect", 0.26), ("midline_shift", 0.13),
                    ("left", 0.3), ("right", 0.3), ("chronic", 0.05), ("other", 0.2)]:
        findings[task] = rng.random(n) < p
    return pd.DataFrame(findings).astype(int)


def test_many_tasks_keep_every_tasks_positives_near_their_quota():
    # 14 findings make 190 combinations of labels in 491 patients, most held by one or two: what dividing each
    # combination could not balance (ICH test positives 12-19 for a quota of 18.4 over 20 seeds)
    labels = cq500_like()
    patients = [f"p{i}" for i in range(len(labels))]
    for seed in range(5):
        splits = stratified_splits(patients, labels, seed=seed)
        assert _counts(splits) == [393, 49, 49]
        for task in labels:
            positives = labels[task] == 1
            quota = positives.sum() * np.array([0.8, 0.1, 0.1])
            assert np.abs(np.array(_counts(splits, positives))[1:] - quota[1:]).max() <= 3, (seed, task)


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
    # 20 patients, 10 per value: each value 8 / 1 / 1, the cohort 16 / 2 / 2
    assert _counts(splits) == [16, 2, 2]
    assert _counts(splits, both["ich"] == 1) == [8, 1, 1] and _counts(splits, both["ich"] == 0) == [8, 1, 1]


def test_extend_splits_places_a_new_patient_where_its_rarest_value_is_short():
    # hand-computed: value ich=1 is held by A (train) and B (train); quota for 3 patients is 2.4 / .3 / .3, so the
    # gaps are .4 / .3 / .3 and C goes to train; a fourth, D: quota 3.2 / .4 / .4 against 3 / 0 / 0 -> val
    labels = pd.DataFrame({"ich": [1, 1, 1]})
    assert extend_splits(["A", "B", "C"], labels, {"A": "train", "B": "train"}) == ["train"] * 3
    labels = pd.DataFrame({"ich": [1, 1, 1, 1]})
    assert extend_splits(["A", "B", "C", "D"], labels, {"A": "train", "B": "train", "C": "train"})[3] == "val"
    with pytest.raises(ValueError, match="kept splits"):
        extend_splits(["A", "B"], labels.iloc[:2], {"A": "pretrain"})
