"""Volume-to-volume retrieval, checked against a brute-force NumPy ranking and a hand-computed case."""
import re
import numpy as np
import pandas as pd
import pytest

from fmct_lib.evaluate import retrieval_comparison, retrieval_summary, retrieve_all_vs_all


def brute_force(embeddings, labels, ks=(1, 5, 10), groups=None):
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    rows = []
    for subtype in labels.columns:
        col = labels[subtype].to_numpy(float)
        known = np.flatnonzero(~np.isnan(col))
        for q in known[col[known] == 1]:
            gallery = known[groups[known] != groups[q]]
            sims = x[gallery] @ x[q]
            ranked = gallery[np.argsort(-sims, kind="stable")]
            hits = col[ranked] == 1
            R = hits.sum()
            if R == 0:
                continue
            hit_ranks = np.flatnonzero(hits) + 1
            ap = np.mean([(i + 1) / r for i, r in enumerate(hit_ranks)])
            rows.append({"subtype": subtype, "scan_id": str(q), "ap": ap,
                         **{f"p@{k}": hits[:k].sum() / k if len(hits) >= k else np.nan for k in ks}})
    return pd.DataFrame(rows)


def test_matches_brute_force_numpy():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame((rng.random((150, 3)) < 0.25).astype(float), columns=["iph", "ivh", "sdh"])
    labels.loc[rng.random(150) < 0.1, "sdh"] = np.nan  # unknown labels leave that subtype's gallery
    centres = rng.normal(size=(3, 16))
    emb = rng.normal(size=(150, 16)) + labels.fillna(0).to_numpy() @ centres
    ours = retrieve_all_vs_all(emb, labels, chunk=17).set_index(["subtype", "scan_id"])
    ref = brute_force(emb, labels).set_index(["subtype", "scan_id"])
    assert ours.index.equals(ref.index)
    for c in ["ap", "p@1", "p@5", "p@10"]:
        np.testing.assert_allclose(ours[c].to_numpy(), ref[c].to_numpy(), atol=1e-6)
    # informative embeddings retrieve better than chance (the prevalence)
    assert ours.loc["iph", "ap"].mean() > labels["iph"].mean() + 0.1


def test_patient_disjoint_retrieval_leaves_out_the_query_patients_other_scans():
    """With ``groups``, a second series of the query's patient (same findings, near-identical embedding) is no
    longer its top hit: checked against the brute-force ranking over the other patients' scans."""
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(60), 2)[:100]                   # 50 patients with two series each
    labels = pd.DataFrame((rng.random((60, 2)) < 0.2).astype(float)[patients], columns=["iph", "sah"])
    emb = rng.normal(size=(60, 8))[patients] + 0.01 * rng.normal(size=(100, 8))  # a patient's series: twins
    plain = retrieve_all_vs_all(emb, labels, ks=(1, 5)).set_index(["subtype", "scan_id"])
    disjoint = retrieve_all_vs_all(emb, labels, ks=(1, 5), groups=patients, chunk=7).set_index(["subtype", "scan_id"])
    ref = brute_force(emb, labels, ks=(1, 5), groups=patients).set_index(["subtype", "scan_id"])
    assert disjoint.index.equals(ref.index)
    for c in ["ap", "p@1", "p@5"]:
        np.testing.assert_allclose(disjoint[c].to_numpy(), ref[c].to_numpy(), atol=1e-6)
    assert (plain["p@1"] == 1).all()                                # the twin is always first with self left out
    assert disjoint["p@1"].mean() < 0.5                             # random embeddings otherwise
    with pytest.raises(ValueError, match="groups"):
        retrieve_all_vs_all(emb, labels, groups=patients[:10])


def test_hand_computed_case():
    # 1-D directions: q=0 sees 1 (relevant, rank 1), 3 (not, rank 2), 2 (relevant, rank 3)
    angles = np.array([0.0, 0.1, 0.5, 0.3])
    emb = np.c_[np.cos(angles), np.sin(angles)] * np.array([[1], [5], [2], [0.5]])  # norms must not matter
    labels = pd.DataFrame({"sah": [1, 1, 1, 0]})
    out = retrieve_all_vs_all(emb, labels, ks=(1, 2)).set_index("scan_id")
    assert out.loc["0", "ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert out.loc["0", "p@1"] == 1.0 and out.loc["0", "p@2"] == 0.5
    # query 2 (angle .5): ranks 3 (.3, not), 1 (.1, relevant), 0 (0, relevant)
    assert out.loc["2", "ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out.loc["0", "n_relevant"] == 2


def test_single_positive_queries_are_dropped_and_summary():
    emb = np.random.default_rng(1).normal(size=(30, 8))
    labels = pd.DataFrame({"edh": [1] + [0] * 29, "ivh": [1, 1, 1] + [0] * 27})
    per_query = retrieve_all_vs_all(emb, labels)
    assert set(per_query["subtype"]) == {"ivh"} and len(per_query) == 3
    summary = retrieval_summary(per_query, n_boot=40)
    m = summary.query("subtype == 'ivh' and metric == 'map'").iloc[0]
    assert m["value"] == pytest.approx(per_query["ap"].mean())
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert set(summary["metric"]) == {"map", "p@1", "p@5", "p@10"}
    assert "mean" in set(summary["subtype"])


def test_the_summary_cis_are_a_scan_bootstrap_by_a_plain_loop():
    """retrieval_summary's intervals against a loop over the same draws of query scans (numpy's generator, seeded as
    the summary is): each replicate's mean AP of the drawn scans per subtype, and the mean over subtypes."""
    rng = np.random.default_rng(5)
    queries = [("ich", f"s{i}") for i in range(30)] + [("sah", f"s{i}") for i in range(20, 45)]  # 10 scans in both
    per_query = pd.DataFrame([{"subtype": st, "scan_id": q, "n_relevant": 2, "ap": rng.random(),
                               "p@1": float(rng.random() < 0.3)} for st, q in queries])
    summary = retrieval_summary(per_query, n_boot=300, seed=7).set_index(["subtype", "metric"])
    scans = list(per_query["scan_id"].unique())
    draws = np.random.default_rng(7).integers(0, len(scans), (300, len(scans)))
    for column, metric in (("ap", "map"), ("p@1", "p@1")):
        reps = {}
        for st in ("ich", "sah"):
            value = dict(zip(per_query.loc[per_query.subtype == st, "scan_id"],
                             per_query.loc[per_query.subtype == st, column]))
            reps[st] = [np.mean([value[scans[j]] for j in draw if scans[j] in value]) for draw in draws]
            row = summary.loc[(st, metric)]
            assert [row.ci_low, row.ci_high] == pytest.approx(list(np.percentile(reps[st], [2.5, 97.5])), abs=1e-12)
            assert row.ci_high - row.ci_low > 0.05  # 25-30 queries of uniform values: an interval, not a point
        mean = summary.loc[("mean", metric)]
        want = np.percentile((np.array(reps["ich"]) + np.array(reps["sah"])) / 2, [2.5, 97.5])
        assert [mean.ci_low, mean.ci_high] == pytest.approx(list(want), abs=1e-12)


def test_bad_embeddings_are_rejected():
    labels = pd.DataFrame({"ivh": [1, 1, 0]})
    with pytest.raises(ValueError, match="do not match"):
        retrieve_all_vs_all(np.ones((2, 4)), labels)
    with pytest.raises(ValueError, match="NaN"):
        retrieve_all_vs_all(np.array([[1.0, np.nan], [1, 0], [0, 1]]), labels)


def _per_query(values: dict) -> pd.DataFrame:
    return pd.DataFrame([{"subtype": s, "scan_id": q, "n_relevant": 1, "ap": v} for (s, q), v in values.items()])


def test_retrieval_comparison_p_is_the_exact_sign_flip_p_and_the_mean_row_pools_subtypes():
    import itertools
    rng = np.random.default_rng(3)
    queries = [("ivh", f"s{i}") for i in range(5)] + [("sah", f"s{i}") for i in range(3, 8)]  # s3, s4 in both
    a = {q: float(rng.random()) for q in queries}
    b = {q: float(rng.random()) * 0.6 for q in queries}
    table = retrieval_comparison(_per_query(a), _per_query(b), n_perm=20000, n_boot=200, seed=0)
    scans = sorted({q for _, q in queries})
    d = {k: a[k] - b[k] for k in queries}

    def statistic(signs, subtypes):  # the mean over subtypes of each subtype's mean signed difference
        return np.mean([np.mean([signs[q] * d[(s, q)] for (s2, q) in queries if s2 == s]) for s in subtypes])

    for subtype in ("ivh", "sah", "mean"):
        subtypes = ["ivh", "sah"] if subtype == "mean" else [subtype]
        observed = statistic(dict.fromkeys(scans, 1.0), subtypes)
        flips = [dict(zip(scans, signs)) for signs in itertools.product([1.0, -1.0], repeat=len(scans))]
        exact = np.mean([abs(statistic(f, subtypes)) >= abs(observed) - 1e-12 for f in flips])  # all 2^8 patterns
        row = table.set_index("subtype").loc[subtype]
        assert row["difference"] == pytest.approx(observed, abs=1e-12)
        assert row["p_value"] == pytest.approx(exact, abs=0.01)
        assert row["ci_low"] <= observed <= row["ci_high"]
    same = retrieval_comparison(_per_query(a), _per_query(a), n_perm=200)
    assert (same["difference"] == 0).all() and (same["p_value"] == 1).all()
    with pytest.raises(ValueError, match="different queries"):
        retrieval_comparison(_per_query(a), _per_query(dict(list(b.items())[:-1])))


def test_the_mean_rows_resample_each_query_scan_once_for_all_its_subtypes():
    """Three subtypes queried by the same 60 scans with the same values: the mean over subtypes is each subtype's
    value, so its bootstrap CI must be each subtype's CI (resampled per subtype it would be ~1/sqrt(3) as wide)."""
    rng = np.random.default_rng(0)
    values = rng.random(60)
    a = {(s, f"s{i}"): v for s in ("ich", "sah", "ivh") for i, v in enumerate(values)}
    b = dict.fromkeys(a, 0.5)
    table = retrieval_comparison(_per_query(a), _per_query(b), n_boot=400, n_perm=50).set_index("subtype")
    for subtype in ("ich", "sah", "ivh"):
        assert table.loc["mean", ["ci_low", "ci_high"]].tolist() == pytest.approx(
            table.loc[subtype, ["ci_low", "ci_high"]].tolist())
    summary = retrieval_summary(_per_query(a).assign(**{"p@1": 0.0}), n_boot=400)
    mean, ich = (summary.query(f"subtype == '{s}' and metric == 'map'").iloc[0] for s in ("mean", "ich"))
    assert [mean.ci_low, mean.ci_high] == pytest.approx([ich.ci_low, ich.ci_high])
    assert mean.value == pytest.approx(values.mean()) and mean.n_queries == 180


def test_the_mean_row_ci_matches_a_brute_force_scan_bootstrap():
    """Subtypes overlapping in part: the CI of the mean difference against a plain loop that resamples scans."""
    rng = np.random.default_rng(1)
    queries = [("ich", f"s{i}") for i in range(40)] + [("sah", f"s{i}") for i in range(20, 50)]
    a = {q: float(rng.random()) for q in queries}
    b = {q: float(rng.random()) * 0.8 for q in queries}
    row = retrieval_comparison(_per_query(a), _per_query(b), n_boot=4000, n_perm=10).set_index("subtype").loc["mean"]
    scans = sorted({q for _, q in queries})
    reps = []
    for _ in range(4000):
        drawn = rng.choice(scans, size=len(scans))
        reps.append(np.mean([np.mean([a[(s, q)] - b[(s, q)] for q in drawn if (s, q) in a])
                             for s in ("ich", "sah")]))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    width = hi - lo
    assert row.ci_low == pytest.approx(lo, abs=0.1 * width) and row.ci_high == pytest.approx(hi, abs=0.1 * width)


def test_neighbour_agreement_against_brute_force():
    """The share of a scan's k nearest neighbours with its value, and its chance level, by a plain loop."""
    from fmct_lib.evaluate import neighbour_agreement
    rng = np.random.default_rng(3)
    make = rng.choice(["A", "B", "C"], size=80, p=[0.5, 0.3, 0.2])
    emb = rng.normal(size=(80, 6)) + 2.0 * (make == "A")[:, None]  # make A apart from the rest
    values = pd.Series(make, dtype=object)
    values[5] = None  # no value: left out
    observed, chance = neighbour_agreement(emb, values, k=7)
    keep = np.flatnonzero(values.notna())
    x = emb[keep] / np.linalg.norm(emb[keep], axis=1, keepdims=True)
    v = make[keep]
    shares, expected = [], []
    for i in range(len(keep)):
        sims = x @ x[i]
        sims[i] = -np.inf
        nearest = np.argsort(-sims, kind="stable")[:7]
        shares.append(np.mean(v[nearest] == v[i]))
        expected.append((np.sum(v == v[i]) - 1) / (len(v) - 1))
    assert observed == pytest.approx(np.mean(shares), abs=1e-9)
    assert chance == pytest.approx(np.mean(expected), abs=1e-12)
    assert observed > chance + 0.1  # the embedding groups by make
    with pytest.raises(ValueError, match="fewer than k"):
        neighbour_agreement(emb[:5], make[:5], k=7)


# ------------------------------------------------------------------ exact rankings and nearly collapsed embeddings
def near_collapsed(n=240, d=256, seed=4):
    """A DINO encoder whose teacher went uniform: every embedding a common direction plus a 1e-3 wobble (pairwise
    cosines 0.9999…), a little of it along the subtypes, so float32 similarities near-tie."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame((rng.random((n, 3)) < 0.25).astype(float), columns=["iph", "ivh", "sdh"])
    emb = rng.normal(size=d) + 1e-3 * (rng.normal(size=(n, d)) + 0.5 * labels.to_numpy() @ rng.normal(size=(3, d)))
    return emb.astype(np.float32), labels


def test_near_collapsed_retrieval_does_not_depend_on_the_order_of_the_rows():
    """Shuffling the gallery rows (with their ids, labels and patients) gives every query the same AP and P@K and
    the same mAP to 1e-12 (float32 faiss broke near-ties by row order: the query APs moved by up to ~0.1)."""
    emb, labels = near_collapsed()
    ids = np.array([f"scan{i}" for i in range(len(emb))])
    patients = np.arange(len(emb)) // 2
    with pytest.warns(UserWarning, match="nearly collapsed"):
        a = retrieve_all_vs_all(emb, labels, scan_ids=ids, groups=patients)
    order = np.random.default_rng(0).permutation(len(emb))
    with pytest.warns(UserWarning, match="nearly collapsed"):
        b = retrieve_all_vs_all(emb[order], labels.iloc[order].reset_index(drop=True), scan_ids=ids[order],
                                groups=patients[order], chunk=7)
    a, b = a.set_index(["subtype", "scan_id"]).sort_index(), b.set_index(["subtype", "scan_id"]).sort_index()
    assert a.index.equals(b.index) and len(a) > 100
    for c in ["n_relevant", "ap", "p@1", "p@5", "p@10"]:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=0, atol=1e-12)
    assert abs(a["ap"].mean() - b["ap"].mean()) < 1e-12


def test_near_collapsed_retrieval_equals_a_float64_brute_force_and_scikit_learn():
    """Each query's AP is scikit-learn's average_precision_score of its float64 cosines over the other patients'
    scans, and P@K the precision of the float64 top K, to 1e-12."""
    from sklearn.metrics import average_precision_score
    emb, labels = near_collapsed(seed=5)
    patients = np.arange(len(emb)) // 3
    with pytest.warns(UserWarning, match="nearly collapsed"):
        ours = retrieve_all_vs_all(emb, labels, groups=patients, ks=(1, 5)).set_index(["subtype", "scan_id"])
    x = emb.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n_checked = 0
    for subtype in labels.columns:
        y = labels[subtype].to_numpy()
        for q in np.flatnonzero(y == 1):
            others = np.flatnonzero(patients != patients[q])
            if y[others].sum() == 0:
                continue
            sims = x[others] @ x[q]
            assert len(np.unique(sims)) == len(sims)       # no float64 ties: the ranking is unique
            top = y[others][np.argsort(-sims)]
            row = ours.loc[(subtype, str(q))]
            assert row["ap"] == pytest.approx(average_precision_score(y[others], sims), abs=1e-12)
            assert row["p@1"] == top[0] and row["p@5"] == pytest.approx(top[:5].mean(), abs=1e-12)
            n_checked += 1
    assert n_checked == len(ours) > 100


def test_tied_neighbours_are_scored_as_a_group_by_hand():
    """Scans 1 and 2 have the same embedding (a tie for query 0), one relevant: scikit-learn's rule gives both the
    precision at the group's end, AP(0) = (1/2 + 2/3) / 2 = 7/12, whichever row comes first; P@1 is the expected
    1/2. A fully collapsed encoder (every embedding the same) gets the prevalence among the other scans."""
    from sklearn.metrics import average_precision_score
    angles = np.array([0.0, 0.1, 0.1, 0.25, 0.4])          # 1 and 2 identical; 3 next, 4 last from query 0
    emb = np.c_[np.cos(angles), np.sin(angles)]
    labels = pd.DataFrame({"sah": [1, 1, 0, 1, 0]})
    for rows in ([0, 1, 2, 3, 4], [0, 2, 1, 3, 4], [4, 3, 2, 1, 0]):
        out = retrieve_all_vs_all(emb[rows], labels.iloc[rows].reset_index(drop=True), ks=(1, 2, 3),
                                  scan_ids=np.array(rows)).set_index("scan_id")
        assert out.loc["0", "ap"] == pytest.approx(7 / 12, abs=1e-15)
        assert out.loc["0", ["p@1", "p@2", "p@3"]].tolist() == pytest.approx([1 / 2, 1 / 2, 2 / 3], abs=1e-15)
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert average_precision_score([1, 0, 1, 0], u[1:] @ u[0]) == pytest.approx(7 / 12)  # the same rule

    same = np.tile([[0.3, -1.2, 0.5]], (6, 1))
    labels = pd.DataFrame({"ivh": [1, 1, 0, 0, 0, 0], "sdh": [1, 1, 1, 0, 0, 0]})
    with pytest.warns(UserWarning, match="nearly collapsed"):
        out = retrieve_all_vs_all(same, labels, ks=(1, 2)).set_index(["subtype", "scan_id"])
    assert out.loc[("ivh", "0"), ["ap", "p@1", "p@2"]].tolist() == pytest.approx([1 / 5] * 3, abs=1e-15)
    assert out.loc[("sdh", "2"), ["ap", "p@1", "p@2"]].tolist() == pytest.approx([2 / 5] * 3, abs=1e-15)


def test_the_collapse_warning_fires_on_collapsed_embeddings_only():
    import warnings
    from fmct_lib.evaluate.retrieval import COLLAPSE_SPREAD, embedding_spread
    rng = np.random.default_rng(6)
    labels = pd.DataFrame({"ich": (rng.random(200) < 0.3).astype(float)})
    collapsed = rng.normal(size=64) + 1e-2 * rng.normal(size=(200, 64))     # pairwise cosines ~0.998
    with pytest.warns(UserWarning, match="nearly collapsed.*not meaningful"):
        retrieve_all_vs_all(collapsed, labels)
    assert embedding_spread(collapsed) < COLLAPSE_SPREAD
    healthy = rng.normal(size=(200, 64))
    anisotropic = 3 * rng.normal(size=64) + rng.normal(size=(200, 64))     # mean cosine ~0.9: an encoder's norm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for emb in (healthy, anisotropic):
            retrieve_all_vs_all(emb, labels)
        retrieve_all_vs_all(collapsed, labels, warn_collapse=False)
    assert embedding_spread(healthy) == pytest.approx(1, abs=0.02)
    assert 0.05 < embedding_spread(anisotropic) < 0.2


@pytest.mark.parametrize("ks, error", [([-1, 5], "-1 is not a whole number of at least 1"),
                                       ([0], "0 is not a whole number"), ([2.5], "2.5 is not a whole number"),
                                       ([True], "True is not a whole number"), ([5, 5], "a rank is named twice"),
                                       ([], "name at least one rank"), ("1,5", "a list of ranks, not text"),
                                       ([1, 200], "ranked against 119 others, so K = 200 has no precision")])
def test_ks_that_measure_nothing_are_refused_naming_ks(ks, error):
    """The audit: -1 drew p@-1 = 0.000 with CI [0, 0], K above the gallery all-NaN panels, [5, 5] an IndexError."""
    from fmct_lib.evaluate import check_ks
    with pytest.raises(ValueError, match=re.escape(error)) as refused:
        check_ks(ks, 120)
    assert str(refused.value).startswith(f"ks {ks!r}: ")


def test_ks_as_given_are_kept():
    from fmct_lib.evaluate import check_ks
    assert check_ks([10, 1, 5], 120) == [10, 1, 5] and check_ks(5) == [5] and check_ks((1.0, 119), 120) == [1, 119]
    with pytest.raises(ValueError, match="a rank is named twice"):  # retrieve_all_vs_all checks them too
        retrieve_all_vs_all(np.eye(3), pd.DataFrame({"iph": [1, 1, 0]}), ks=(1, 1))
