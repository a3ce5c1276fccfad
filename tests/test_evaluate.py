"""Metrics and statistics, checked against scikit-learn, SciPy and brute-force loops."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score, roc_auc_score

from fmct_lib.evaluate import (bootstrap_ci, bootstrap_replicates, fewshot_summary, paired_permutation_test,
                               label_prevalence, paired_runs, permutation_null, relative_improvement, task_metrics,
                               weighted_auroc_ap)
from fmct_lib.evaluate.stats import bootstrap_indices, normalised_ranks, permutation_swaps


def long_table(labels, scores, tasks):
    rows = []
    for i in range(labels.shape[0]):
        for t, task in enumerate(tasks):
            if not np.isnan(labels[i, t]):
                rows.append({"scan_id": f"s{i:04d}", "task": task, "label": int(labels[i, t]),
                             "probability": scores[i, t]})
    return pd.DataFrame(rows)


def synthetic_predictions(n=120, tasks=("ich", "sdh", "edema"), seed=0, signal=1.0, missing=True):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(tasks))) < 0.3).astype(float)
    scores = 1 / (1 + np.exp(-(signal * labels + rng.normal(size=labels.shape))))
    scores = np.round(scores, 2)  # ties on purpose
    if missing:
        labels[rng.random(n) < 0.2, 1] = np.nan  # a task with unknown labels for some scans
    return labels, scores


def test_weighted_metrics_equal_sklearn_with_weights_and_ties():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.4
    s = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 4, size=(5, 200)).astype(float)
    auc, ap = weighted_auroc_ap(s, y, w)
    for b in range(5):
        assert auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
        # integer weights = the expanded (resampled) sample
        expanded = np.repeat(np.arange(200), w[b].astype(int))
        assert ap[b] == pytest.approx(average_precision_score(y[expanded], s[expanded]), abs=1e-12)
        assert auc[b] == pytest.approx(roc_auc_score(y[expanded], s[expanded]), abs=1e-12)


def test_weighted_metrics_nan_without_both_classes():
    auc, ap = weighted_auroc_ap([0.1, 0.9, 0.5], [1, 0, 0], [[0, 1, 1], [1, 0, 0]])
    assert np.isnan(auc).all()
    assert np.isnan(ap[0]) and ap[1] == 1.0


def test_task_metrics_match_sklearn_and_macro_is_mean():
    labels, scores = synthetic_predictions()
    df = long_table(labels, scores, ["ich", "sdh", "edema"])
    table = task_metrics(df).set_index("task")
    for t, task in enumerate(["ich", "sdh", "edema"]):
        known = ~np.isnan(labels[:, t])
        assert table.loc[task, "auroc"] == pytest.approx(roc_auc_score(labels[known, t], scores[known, t]))
        assert table.loc[task, "ap"] == pytest.approx(average_precision_score(labels[known, t], scores[known, t]))
    assert table.loc["macro", "auroc"] == pytest.approx(table.drop("macro")["auroc"].mean())


def test_label_prevalence_counts_each_scan_once_whatever_the_models_and_seeds():
    labels, scores = synthetic_predictions(n=50, seed=3)
    one_model = long_table(labels, scores, ("ich", "sdh", "edema"))
    # three models, the last with two seeds, on the same scans, plus a fourth model that saw only the positives
    # of ich: the prevalence is that of the scans, not of the rows
    table = pd.concat([one_model.assign(model=m, seed=s) for m, s in (("a", 0), ("b", 0), ("b", 1))]
                      + [one_model[(one_model.task == "ich") & (one_model.label == 1)].assign(model="c", seed=0)])
    expected = {t: np.nanmean(labels[:, i]) for i, t in enumerate(("ich", "sdh", "edema"))}
    assert label_prevalence(table) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match=r"lacks columns \['label'\]"):
        label_prevalence(table.drop(columns="label"))


def test_bootstrap_replicates_equal_a_resampling_loop():
    labels, scores = synthetic_predictions(n=80)
    reps = bootstrap_replicates(labels, scores, n_boot=15, seed=3)
    idx = bootstrap_indices(80, 15, seed=3)
    for b in range(15):
        for t in range(3):
            y, s = labels[idx[b], t], scores[idx[b], t]
            known = ~np.isnan(y)  # scans without a label drop out of that task only
            assert reps["auroc"][b, t] == pytest.approx(roc_auc_score(y[known], s[known]), abs=1e-12)
            assert reps["ap"][b, t] == pytest.approx(average_precision_score(y[known], s[known]), abs=1e-12)


def test_bootstrap_replicates_refuse_a_missing_score_of_a_labelled_scan():
    labels, scores = synthetic_predictions(n=40)
    scores[np.flatnonzero(~np.isnan(labels[:, 0]))[0], 0] = np.nan
    with pytest.raises(ValueError, match="NaN where a label is known"):
        bootstrap_replicates(labels, scores, n_boot=5)
    unlabelled = np.isnan(labels)
    if unlabelled.any():  # a score where no label is known is not used, so NaN there is fine
        labels, scores = synthetic_predictions(n=40)
        scores[unlabelled] = np.nan
        bootstrap_replicates(labels, scores, n_boot=5)


def test_bootstrap_ci_table():
    labels, scores = synthetic_predictions()
    df = long_table(labels, scores, ["ich", "sdh", "edema"])
    table = bootstrap_ci(df, n_boot=50, seed=0)
    assert set(table["task"]) == {"ich", "sdh", "edema", "macro"} and (table["n_boot"] == 50).all()
    assert (table["ci_low"] < table["value"]).all() and (table["value"] < table["ci_high"]).all()
    # the macro replicate is the mean of the per-task replicates on the same resampled scans
    reps = bootstrap_replicates(*_wide(df), n_boot=50, seed=0)
    macro = table.query("task == 'macro' and metric == 'auroc'").iloc[0]
    assert macro["mean"] == pytest.approx(reps["auroc"].mean(axis=1).mean())
    assert macro["ci_low"] == pytest.approx(np.percentile(reps["auroc"].mean(axis=1), 2.5))


def _wide(df):
    from fmct_lib.evaluate import predictions_to_wide
    _, _, labels, scores = predictions_to_wide(df)
    return labels, scores


def test_duplicate_predictions_are_rejected():
    labels, scores = synthetic_predictions(n=20)
    df = long_table(labels, scores, ["ich", "sdh", "edema"])
    with pytest.raises(ValueError, match="more than one row"):
        bootstrap_ci(pd.concat([df, df.iloc[:1]]))


def seeded_tables(n=70, seeds=(0, 1, 2), signal=1.0, offset=0):
    """One model trained with several seeds: the same scans and labels, other scores per seed."""
    labels, _ = synthetic_predictions(n=n, seed=0)
    tables = []
    for s in seeds:
        _, scores = synthetic_predictions(n=n, seed=100 + s + offset, signal=signal)
        tables.append(long_table(labels, scores, ["ich", "sdh", "edema"]).assign(seed=s))
    return labels, pd.concat(tables, ignore_index=True)


def _sk(df, metric=roc_auc_score):
    return metric(df["label"], df["probability"]) if df["label"].nunique() == 2 else np.nan


def test_bootstrap_over_training_seeds_averages_the_seeds_on_the_same_resampled_scans():
    labels, df = seeded_tables()
    table = bootstrap_ci(df, n_boot=20, seed=5).set_index(["task", "metric"])
    assert (table["n_seeds"] == 3).all()
    per_seed = {(t, s): _sk(g) for (t, s), g in df.groupby(["task", "seed"])}
    for task in ("ich", "sdh", "edema"):
        assert table.loc[(task, "auroc"), "value"] == pytest.approx(np.mean([per_seed[(task, s)] for s in range(3)]))
    assert table.loc[("macro", "auroc"), "value"] == pytest.approx(np.mean(list(per_seed.values())))
    # brute force: resample the scans once per replicate, score every seed on that sample, average
    ids = sorted(df["scan_id"].unique())
    idx = bootstrap_indices(len(ids), 20, seed=5)
    macro = []
    for b in range(20):
        picked = pd.DataFrame({"scan_id": [ids[i] for i in idx[b]]})
        sample = picked.merge(df, on="scan_id")  # a scan drawn twice counts twice
        values = {t: np.mean([_sk(g[g.seed == s]) for s in range(3)]) for t, g in sample.groupby("task")}
        macro.append(np.mean(list(values.values())))
    assert table.loc[("macro", "auroc"), "mean"] == pytest.approx(np.mean(macro), abs=1e-12)
    assert table.loc[("macro", "auroc"), "ci_low"] == pytest.approx(np.percentile(macro, 2.5), abs=1e-12)


def test_permutation_over_training_seeds_swaps_a_scan_in_every_seed():
    _, a = seeded_tables()
    _, b = seeded_tables(signal=0.3, offset=10)
    result = paired_permutation_test(a, b, n_perm=30, seed=2).set_index(["task", "metric"])
    ids = sorted(a["scan_id"].unique())
    swaps = permutation_swaps(len(ids), 30, seed=2)
    key = ["scan_id", "task", "seed"]
    pair = a.merge(b, on=key + ["label"], suffixes=("_a", "_b"))
    for side in ("a", "b"):  # what is swapped: each model's ranks per (task, seed), divided by their count
        pair[f"probability_{side}"] = pair.groupby(["task", "seed"])[f"probability_{side}"].rank(pct=True)

    def diff(p):
        d = {}
        for (t, s), g in p.groupby(["task", "seed"]):
            d.setdefault(t, []).append(_sk(g.rename(columns={"probability_a": "probability"}))
                                       - _sk(g.rename(columns={"probability_b": "probability"})))
        return {t: np.mean(v) for t, v in d.items()}

    observed = diff(pair)
    null = []
    for q in range(30):
        swapped = pair.copy()
        flip = swapped["scan_id"].isin([ids[i] for i in np.flatnonzero(swaps[q])])
        swapped.loc[flip, ["probability_a", "probability_b"]] = swapped.loc[flip, ["probability_b", "probability_a"]].to_numpy()
        null.append(diff(swapped))
    for task in ("ich", "sdh", "edema"):
        assert result.loc[(task, "auroc"), "diff"] == pytest.approx(observed[task], abs=1e-12)
        extreme = sum(abs(n[task]) >= abs(observed[task]) - 1e-12 for n in null)
        assert result.loc[(task, "auroc"), "p_value"] == pytest.approx((1 + extreme) / 31)
    macro_obs = np.mean(list(observed.values()))
    extreme = sum(abs(np.mean(list(n.values()))) >= abs(macro_obs) - 1e-12 for n in null)
    assert result.loc[("macro", "auroc"), "p_value"] == pytest.approx((1 + extreme) / 31)


def test_permutation_p_does_not_depend_on_a_models_scale():
    """A probe's scores near 0.5 against a classifier's near 0 and 1: squashing one model's scores (a strictly
    increasing map) changes neither AUROC nor AP, and must not change p. Swapping raw probabilities did (the
    squashed model's swapped-in scores sat in the middle of the other's): 7 of these 8 p-values moved, one AP's
    from 0.04 to 0.07, one AUROC's from 0.09 to 0.06."""
    labels, scores_a = synthetic_predictions(n=70, seed=11, signal=0.6)
    _, scores_b = synthetic_predictions(n=70, seed=12, signal=0.3)
    tasks = ["ich", "sdh", "edema"]
    a, b = long_table(labels, scores_a, tasks), long_table(labels, scores_b, tasks)
    squashed = b.assign(probability=0.5 + 0.02 * (b["probability"] - 0.5))
    as_is = paired_permutation_test(a, b, n_perm=300, seed=3)
    rescaled = paired_permutation_test(a, squashed, n_perm=300, seed=3)
    assert np.allclose(as_is["diff"], rescaled["diff"], atol=1e-12)
    assert as_is["p_value"].tolist() == rescaled["p_value"].tolist()
    assert (as_is["p_value"] < 0.5).any()  # not a case where every p is 1 anyway


def test_normalised_ranks_equal_pandas_ranks_over_the_labelled_scans():
    labels, scores = synthetic_predictions(n=40, seed=6)  # ties (2 decimals) and unlabelled scans of one task
    ranks = normalised_ranks(scores, labels)
    for t in range(3):
        known = ~np.isnan(labels[:, t])
        expect = pd.Series(scores[known, t]).rank(pct=True).to_numpy()
        assert np.allclose(ranks[known, t], expect, atol=1e-12) and np.isnan(ranks[~known, t]).all()
        assert roc_auc_score(labels[known, t], ranks[known, t]) == pytest.approx(
            roc_auc_score(labels[known, t], scores[known, t]), abs=1e-12)
        assert average_precision_score(labels[known, t], ranks[known, t]) == pytest.approx(
            average_precision_score(labels[known, t], scores[known, t]), abs=1e-12)


def test_paired_test_over_seeds_needs_the_same_seeds():
    _, a = seeded_tables(seeds=(0, 1))
    _, b = seeded_tables(seeds=(0, 2))
    with pytest.raises(ValueError, match="different seeds"):
        paired_permutation_test(a, b, n_perm=10)


@pytest.mark.parametrize("ties", [True, False])
def test_permutation_null_equals_brute_force_loop(ties):
    labels, scores_a = synthetic_predictions(n=60, seed=4)
    _, scores_b = synthetic_predictions(n=60, seed=5, signal=0.3)
    if not ties:  # distinct values everywhere: the no-tie path
        scores_a = scores_a + np.arange(scores_a.size).reshape(scores_a.shape) * 1e-7
        scores_b = scores_b + 0.5e-7 + np.arange(scores_b.size).reshape(scores_b.shape) * 1e-7
    null = permutation_null(labels, scores_a, scores_b, n_perm=12, seed=7, chunk=5)
    swaps = permutation_swaps(60, 12, seed=7)
    for p in range(12):
        a = np.where(swaps[p][:, None], scores_b, scores_a)
        b = np.where(swaps[p][:, None], scores_a, scores_b)
        for t in range(3):
            known = ~np.isnan(labels[:, t])
            y = labels[known, t]
            expect = roc_auc_score(y, a[known, t]) - roc_auc_score(y, b[known, t])
            assert null["auroc"][1][p, t] == pytest.approx(expect, abs=1e-12)
            expect = average_precision_score(y, a[known, t]) - average_precision_score(y, b[known, t])
            assert null["ap"][1][p, t] == pytest.approx(expect, abs=1e-12)
    known = ~np.isnan(labels[:, 0])
    observed = roc_auc_score(labels[known, 0], scores_a[known, 0]) - roc_auc_score(labels[known, 0], scores_b[known, 0])
    assert null["auroc"][0][0] == pytest.approx(observed)


def test_permutation_identical_models_give_p_one():
    labels, scores = synthetic_predictions(n=50)
    df = long_table(labels, scores, ["ich", "sdh", "edema"])
    result = paired_permutation_test(df, df.copy(), n_perm=100)
    assert (result["p_value"] == 1.0).all() and (result["diff"] == 0).all()


def test_permutation_separable_case_gives_smallest_p():
    # model a ranks every positive above every negative; model b is noise
    rng = np.random.default_rng(0)
    y = np.array([1] * 20 + [0] * 20, dtype=float)[:, None]
    a = np.where(y == 1, 0.9, 0.1) + 0.01 * rng.random((40, 1))
    b = rng.random((40, 1))
    df_a, df_b = long_table(y, a, ["ich"]), long_table(y, b, ["ich"])
    result = paired_permutation_test(df_a, df_b, n_perm=200, seed=1).set_index(["task", "metric"])
    row = result.loc[("ich", "auroc")]
    assert row["a"] == 1.0 and row["diff"] > 0.3
    assert row["p_value"] == pytest.approx(1 / 201)  # (0 + 1) / (n_perm + 1): no permutation as extreme
    # a weak, noisy difference is not significant
    c = b + 0.02 * rng.random((40, 1))
    weak = paired_permutation_test(df_b, long_table(y, c, ["ich"]), n_perm=200, seed=1)
    assert (weak["p_value"] > 0.05).all()
    assert np.allclose(weak["p_value"] * 201, np.round(weak["p_value"] * 201))


def test_paired_test_needs_the_same_scans():
    labels, scores = synthetic_predictions(n=30)
    df = long_table(labels, scores, ["ich", "sdh", "edema"])
    with pytest.raises(ValueError, match="same scans"):
        paired_permutation_test(df, df.iloc[3:], n_perm=10)
    flipped = df.copy()
    flipped.loc[0, "label"] = 1 - flipped.loc[0, "label"]
    with pytest.raises(ValueError, match="labels"):
        paired_permutation_test(df, flipped, n_perm=10)


def test_relative_improvement_as_the_paper_reports():
    assert round(relative_improvement(0.904, 0.748), 2) == 20.86  # NYU Long Island
    assert round(relative_improvement(0.923, 0.824), 2) == 12.01  # RSNA
    # 0.852 vs 0.734: +16.08% from the rounded values; the paper's 16.07% used unrounded macro-AUCs
    assert 16.07 <= relative_improvement(0.852, 0.734) <= 16.08
    assert relative_improvement(0.85205, 0.73416) == pytest.approx(16.06, abs=0.01)
    assert np.allclose(relative_improvement([1.0, 0.5], [0.5, 1.0]), [100.0, -50.0])
    # from 0 there is no relative change: NaN, without a RuntimeWarning leaking into a notebook
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(relative_improvement(0.4, 0.0))
        np.testing.assert_allclose(relative_improvement([0.4, 0.6], [0.0, 0.5]), [np.nan, 20.0])


def test_fewshot_summary_mean_and_t_interval():
    rng = np.random.default_rng(2)
    rows = []
    aucs = {}
    for k in (8, 16, None):
        for seed in range(5):
            y = np.array([0, 1] * 20)
            s = y * (0.05 * seed + (k or 64) / 400) + rng.random(40)
            rows += [{"scan_id": f"s{i}", "task": "ich", "k": k, "seed": seed, "probability": s[i], "label": y[i]}
                     for i in range(40)]
            aucs.setdefault(k, []).append(roc_auc_score(y, s))
    summary = fewshot_summary(pd.DataFrame(rows)).query("metric == 'auroc' and task == 'ich'").set_index("k")
    assert list(summary.index) == [8, 16, "all"]
    for k, key in ((8, 8), (16, 16), (None, "all")):
        v = np.array(aucs[k])
        lo, hi = sps.t.interval(0.95, df=4, loc=v.mean(), scale=sps.sem(v))
        assert summary.loc[key, "mean"] == pytest.approx(v.mean())
        assert summary.loc[key, "ci_low"] == pytest.approx(lo) and summary.loc[key, "ci_high"] == pytest.approx(hi)
        assert summary.loc[key, "n_resamples"] == 5


def test_fewshot_interval_over_two_draws_is_clipped_to_the_metric_range():
    # the audit's case: AUROC 0.2 and 1.0 over two draws; t(0.975, 1) = 12.71, sem 0.4: 0.6 ± 5.08 (-4.5 … 5.7)
    y = np.array([0, 1] * 5)
    scores = {0: np.where(y == 1, 0.4, 0.6) + np.r_[0, 0, 0, 0, 0, 0, 0, 0.3, 0, 0], 1: y + 0.0}
    rows = [{"scan_id": f"s{i}", "task": "ich", "k": 4, "seed": seed, "probability": s[i], "label": y[i]}
            for seed, s in scores.items() for i in range(10)]
    row = fewshot_summary(pd.DataFrame(rows)).query("metric == 'auroc' and task == 'ich'").iloc[0]
    aucs = [roc_auc_score(y, scores[0]), roc_auc_score(y, scores[1])]
    lo, hi = sps.t.interval(0.95, df=1, loc=np.mean(aucs), scale=sps.sem(aucs))
    assert lo < 0 and hi > 1  # what the unclipped interval was
    assert row["mean"] == pytest.approx(np.mean(aucs)) and (row.ci_low, row.ci_high) == (0.0, 1.0)


def test_fewshot_macro_is_drawn_only_where_every_task_has_its_runs():
    """A K too large for one task's positives has no run of it: the macro there is NaN with the task named, not
    the mean of the other tasks (which would jump to their level); elsewhere the mean of the tasks per resample."""
    rng = np.random.default_rng(4)
    y = np.array([0, 1] * 20)
    rows, aucs = [], {}
    for task, ks in (("ich", (8, 64, None)), ("sah", (8, None))):   # sah: too few positives for K = 64
        for k in ks:
            for seed in range(3):
                s = y * 0.3 + rng.random(40)
                aucs[(task, k, seed)] = roc_auc_score(y, s)
                rows += [{"scan_id": f"s{i}", "task": task, "k": k, "seed": seed, "probability": s[i],
                          "label": y[i]} for i in range(40)]
    macro = fewshot_summary(pd.DataFrame(rows)).query("metric == 'auroc' and task == 'macro'").set_index("k")
    assert np.isnan(macro.loc[64, "mean"]) and macro.loc[64, "reason"] == "no run of sah at this K"
    for k, key in ((8, 8), (None, "all")):
        expected = np.mean([(aucs[("ich", k, r)] + aucs[("sah", k, r)]) / 2 for r in range(3)])
        assert macro.loc[key, "mean"] == pytest.approx(expected) and macro.loc[key, "reason"] == ""


def test_paired_runs_matches_runs_by_task_k_and_seed():
    rng = np.random.default_rng(5)
    y = np.array([0, 1] * 15)

    def runs(shift, seeds, ks):
        rows, aucs = [], {}
        for k in ks:
            for seed in seeds:
                s = y * shift * (seed + 1) + rng.random(len(y))
                aucs[(k, seed)] = roc_auc_score(y, s)
                rows += [{"task": "ich", "k": k, "seed": seed, "probability": p, "label": t} for p, t in zip(s, y)]
        return pd.DataFrame(rows), aucs

    a, auc_a = runs(0.3, seeds=[0, 1, 2], ks=[8, None])
    b, auc_b = runs(0.1, seeds=[0, 1], ks=[8, 32])       # seed 2, K=32 and the all-data run have no partner
    table = paired_runs(a, b).set_index(["k", "seed"])
    assert sorted(table.index) == [(8, 0), (8, 1)]
    for seed in (0, 1):
        row = table.loc[(8, seed)]
        assert row["auroc_a"] == pytest.approx(auc_a[(8, seed)]) and row["auroc_b"] == pytest.approx(auc_b[(8, seed)])
        assert row["a_wins"] == (auc_a[(8, seed)] > auc_b[(8, seed)])


def test_paired_comparison_bootstraps_the_difference_on_the_same_scans():
    """The difference's CI equals a brute-force loop that resamples the scans once for both models (scikit-learn
    AUROC on each replicate), and the p-value is the paired permutation test's."""
    from fmct_lib.evaluate import paired_comparison
    labels, scores_a = synthetic_predictions(n=90, seed=1, signal=1.5, missing=False)
    _, scores_b = synthetic_predictions(n=90, seed=2, signal=0.3, missing=False)
    tasks = ("ich", "sdh", "edema")
    a, b = long_table(labels, scores_a, tasks), long_table(labels, scores_b, tasks)
    table = paired_comparison(a, b, n_boot=40, n_perm=200, seed=5).set_index(["task", "metric"])
    idx = bootstrap_indices(90, 40, seed=5)
    diffs = np.array([[roc_auc_score(labels[i, t], scores_a[i, t]) - roc_auc_score(labels[i, t], scores_b[i, t])
                       for t in range(3)] for i in idx])
    for t, task in enumerate(tasks):
        row = table.loc[(task, "auroc")]
        lo, hi = np.percentile(diffs[:, t], [2.5, 97.5])
        assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), abs=1e-12)
        full = roc_auc_score(labels[:, t], scores_a[:, t]) - roc_auc_score(labels[:, t], scores_b[:, t])
        assert row.difference == pytest.approx(full, abs=1e-12)
        assert row.relative_pct == pytest.approx(100 * full / roc_auc_score(labels[:, t], scores_b[:, t]))
    macro = table.loc[("macro", "auroc")]
    assert (macro.ci_low, macro.ci_high) == pytest.approx(tuple(np.percentile(diffs.mean(axis=1), [2.5, 97.5])))
    expected_p = paired_permutation_test(a, b, n_perm=200, seed=5).set_index(["task", "metric"])["p_value"]
    assert table["p_value"].to_dict() == expected_p.to_dict()
    assert macro.difference > 0 and macro.ci_low > 0 and macro.p_value < 0.05  # a is the better model here


def test_paired_comparison_leaves_a_macro_over_fewer_tasks_undefined():
    """A K-shot comparison at a K one task has no run of (too few positives): its macro would be the other tasks'
    alone, which the macro rows at other K are not; with ``tasks`` named it is NaN and says which task is missing,
    while the per-task rows stand as they are."""
    from fmct_lib.evaluate import paired_comparison
    labels, scores_a = synthetic_predictions(n=60, seed=1, signal=1.5, missing=False)
    _, scores_b = synthetic_predictions(n=60, seed=2, signal=0.3, missing=False)
    a, b = (long_table(labels[:, :2], s[:, :2], ("ich", "sdh")) for s in (scores_a, scores_b))
    whole = paired_comparison(a, b, n_boot=20, n_perm=50, seed=0)
    short = paired_comparison(a, b, n_boot=20, n_perm=50, seed=0, tasks=["ich", "sdh", "edema"])
    per_task = short["task"] != "macro"
    pd.testing.assert_frame_equal(short[per_task], whole[per_task])
    macro = short[~per_task]
    assert len(macro) == 2 and macro[["a", "b", "difference", "ci_low", "ci_high", "p_value"]].isna().all().all()
    assert (macro["reason"] == "no run of edema: a macro over the other tasks would not be the same comparison").all()
    assert whole.loc[whole.task == "macro", "difference"].notna().all()  # every task named present: as before
    pd.testing.assert_frame_equal(paired_comparison(a, b, n_boot=20, n_perm=50, seed=0, tasks=["sdh", "ich"]), whole)


def test_a_replicate_that_draws_no_positive_of_a_rare_task_has_no_macro():
    """The macro's interval averages the same tasks in every replicate as its point value does: a replicate
    without a positive of the rare task (2 of 100 scans) is left out, never averaged over the other tasks."""
    rng = np.random.default_rng(0)
    labels = (rng.random((100, 3)) < 0.4).astype(float)
    labels[:, 2] = 0.0
    labels[[3, 60], 2] = 1.0                                   # "rare": two positives
    scores = np.where(labels == 1, 0.7, 0.3) + 0.25 * rng.random((100, 3))  # the common tasks: AUROC 1
    scores[:, 2] = rng.random(100)
    scores[[3, 60], 2] = [0.2, 0.5]                             # the rare task: AUROC about 0.35
    df = long_table(labels, scores, ["common1", "common2", "rare"])
    table = bootstrap_ci(df, n_boot=100, seed=0).set_index(["task", "metric"])
    # brute force: resample the scans, score each task with scikit-learn, average where every task is defined
    idx = bootstrap_indices(100, 100, seed=0)
    per_replicate = np.array([[_sk(pd.DataFrame({"label": labels[i, t], "probability": scores[i, t]}))
                               for t in range(3)] for i in idx])
    complete = ~np.isnan(per_replicate).any(axis=1)
    assert 0 < (~complete).sum() < 50                           # some replicates miss both positives
    macro = per_replicate[complete].mean(axis=1)
    row = table.loc[("macro", "auroc")]
    assert row["mean"] == pytest.approx(macro.mean(), abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(macro, [2.5, 97.5])), abs=1e-12)
    assert row["ci_high"] < 0.99  # the old macro (1.0 where "rare" had no positive) reached 1.0


def test_weighted_auroc_counts_a_label_positive_where_it_is_1_and_refuses_nan():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2])
    signed = np.array([1, -1, 1, -1, -1])  # -1/1 labels: -1 is negative, not positive
    auroc, ap = weighted_auroc_ap(scores, signed, np.ones((1, 5)))
    assert auroc[0] == pytest.approx(roc_auc_score(signed == 1, scores))
    assert ap[0] == pytest.approx(average_precision_score(signed == 1, scores))
    with pytest.raises(ValueError, match="labels contain NaN"):
        weighted_auroc_ap(scores, np.array([1, 0, np.nan, 0, 1]), np.ones((1, 5)))


def test_swapping_ranks_holds_the_level_and_the_power_where_raw_probabilities_lose_them():
    """tools/permutation_calibration.py, small: two models with the same signal, one squashed to ×0.1 around 0.5.
    Swapping ranks rejects ~5% under the null (400 test sets: 95% of binomial draws at 0.05 fall in 0.03–0.07), and
    with a real difference it rejects clearly more often than swapping the raw probabilities (0.32 vs 0.24 here)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "permutation_calibration.py"
    spec = importlib.util.spec_from_file_location("permutation_calibration", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    null = tool.rejection_rates(400, 159, 0.2, effect=0.0, squash=0.1, n_perm=200)
    assert 0.03 <= null["normalised ranks"] <= 0.07, null
    power = tool.rejection_rates(200, 159, 0.2, effect=0.5, squash=0.1, n_perm=200)
    assert power["normalised ranks"] >= power["raw probabilities"] + 0.05, power
