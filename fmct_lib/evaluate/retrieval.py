"""Volume-to-volume retrieval (paper, Methods "Volume-to-volume retrieval evaluation"; Fig. 3).

Embeddings are L2-normalised and put in a faiss inner-product index (cosine similarity). For each
subtype c, every positive scan for c is a query once, ranked against the whole gallery minus itself;
an item is relevant when it is also positive for c. Per query, with R relevant items retrieved at
ranks k_1 < … < k_R, ``AP = (1/R) Σ_i P(k_i)`` and ``P@K`` is the fraction of relevant items in the top K;
mAP is the mean over queries. CIs come from bootstrapping the query scans (scan-level retrievals), one draw per
replicate shared by every subtype, so a mean over subtypes counts each scan once. Two encoders are
compared on the same queries (``retrieval_comparison``): the difference of their mAPs, its bootstrap CI over the
queries, and a two-sided paired permutation p that swaps a query scan's two results.
"""
from __future__ import annotations

import faiss
import numpy as np
import pandas as pd

from .stats import _counts, _interval, _p_value, relative_improvement

__all__ = ["retrieve_all_vs_all", "retrieval_summary", "retrieval_comparison", "neighbour_agreement"]


def retrieve_all_vs_all(embeddings: np.ndarray, labels: pd.DataFrame, ks: tuple[int, ...] = (1, 5, 10),
                        scan_ids=None, groups=None, chunk: int = 256) -> pd.DataFrame:
    """Per-query retrieval metrics: one row per (subtype, query) with ``ap`` and ``p@K``.

    ``embeddings`` (n, D); ``labels`` a DataFrame of n rows with one 0/1 column per subtype (multi-hot).
    Scans with an unknown label for a subtype are left out of that subtype's gallery and queries.
    Queries with no other positive in the gallery (R = 0) are dropped, since their AP is undefined.
    ``groups`` (n patient ids) makes the retrieval patient-disjoint: a query's ranking leaves out every scan of
    its patient, not only itself (the paper leaves out only the query, so another series of the same patient,
    with the same findings, can be its top hit).
    """
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings {x.shape} and labels ({len(labels)} rows) do not match")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    scan_ids = np.asarray(scan_ids if scan_ids is not None else np.arange(len(x))).astype(str)
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"groups ({len(groups)}) and embeddings ({len(x)} rows) do not match")
    groups = pd.factorize(pd.Series(np.asarray(groups)))[0] if groups is not None else np.arange(len(x))
    rows = []
    for subtype in labels.columns:
        column = pd.to_numeric(labels[subtype], errors="coerce").to_numpy(float)
        known = np.flatnonzero(~np.isnan(column))
        gallery = x[known].copy()
        faiss.normalize_L2(gallery)
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        relevant = column[known] == 1
        group = groups[known]
        queries = np.flatnonzero(relevant)
        n = len(known)
        for start in range(0, len(queries), chunk):
            q = queries[start:start + chunk]
            _, ranked = index.search(gallery[q], n)              # (m, n) gallery positions, best first
            kept = group[ranked] != group[q][:, None]            # the query (and its patient's scans) left out
            rank = np.cumsum(kept, axis=1)                       # rank among the kept scans
            hits = relevant[ranked] & kept
            cum_hits = np.cumsum(hits, axis=1)
            R = cum_hits[:, -1]
            with np.errstate(invalid="ignore", divide="ignore"):
                ap = (hits * cum_hits / np.maximum(rank, 1)).sum(axis=1) / R
            for j, qi in enumerate(q):
                if R[j] == 0:
                    continue
                row = {"subtype": subtype, "scan_id": scan_ids[known[qi]], "n_relevant": int(R[j]),
                       "ap": float(ap[j])}
                for k in ks:  # hits among the first k kept scans
                    row[f"p@{k}"] = (float(cum_hits[j, np.argmax(rank[j] >= k)] / k) if rank[j, -1] >= k
                                     else np.nan)
                rows.append(row)
    return pd.DataFrame(rows, columns=["subtype", "scan_id", "n_relevant", "ap", *[f"p@{k}" for k in ks]])


def retrieval_summary(per_query: pd.DataFrame, n_boot: int = 100, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """mAP and mean P@K per subtype with a bootstrap CI, plus a ``mean`` row over subtypes with its own CI.

    The bootstrap resamples the query scans, once per replicate for every subtype (``_scan_weights``), so the
    ``mean`` row's CI counts a scan that queries several subtypes once, as the scan-level CIs of the paper do.
    Columns ``subtype, metric (map | p@K), value, ci_low, ci_high, n_queries``.
    """
    metrics = ["ap"] + [c for c in per_query.columns if c.startswith("p@")]
    scans = pd.Index(per_query["scan_id"].unique())
    weights = _scan_weights(len(scans), n_boot, np.random.default_rng(seed))
    alpha = 100 * (1 - ci) / 2
    rows, replicates = [], {m: [] for m in metrics}
    for subtype, g in per_query.groupby("subtype", sort=False):
        w = weights[:, scans.get_indexer(g["scan_id"])]
        for metric in metrics:
            v = g[metric].to_numpy(float)
            reps = _weighted_mean(v, w)
            replicates[metric].append(reps)
            lo, hi = _interval(reps, alpha)
            rows.append({"subtype": subtype, "metric": "map" if metric == "ap" else metric,
                         "value": float(np.nanmean(v)), "ci_low": lo, "ci_high": hi, "n_queries": len(g)})
    for metric in metrics if rows else ():  # the mean over subtypes, under the same replicates
        name = "map" if metric == "ap" else metric
        lo, hi = _interval(np.mean(replicates[metric], axis=0), alpha)
        rows.append({"subtype": "mean", "metric": name, "ci_low": lo, "ci_high": hi, "n_queries": len(per_query),
                     "value": float(np.mean([r["value"] for r in rows if r["metric"] == name]))})
    return pd.DataFrame(rows, columns=["subtype", "metric", "value", "ci_low", "ci_high", "n_queries"])


def _scan_weights(n_scans: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The bootstrap of the query scans: (n_boot, n_scans) counts of each scan in each replicate, used for every
    subtype the scan queries."""
    return _counts(rng.integers(0, n_scans, size=(n_boot, n_scans)), n_scans)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each replicate's mean of ``values`` (n,) under its resampling counts ``weights`` (n_boot, n), NaN values
    left out; NaN in a replicate that drew none of them."""
    finite = np.isfinite(values)
    w = weights[:, finite]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values[finite]) / total


def retrieval_comparison(per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, metric: str = "ap",
                         n_boot: int = 100, n_perm: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Encoder a against encoder b on the same queries (``retrieve_all_vs_all`` tables of one gallery).

    Per subtype: the two means of ``metric`` (``ap``: mAP), their difference, its bootstrap CI (the query scans
    resampled, the same draw for both encoders and for every subtype), and the two-sided paired permutation p: each query scan's two results
    trade places with probability ½ (a scan that queries several subtypes trades in all of them at once),
    ``p = (1 + #{|null| ≥ |observed|}) / (1 + n_perm)``. A ``mean`` row is the mean over subtypes under the same
    resampling and permutations. Columns ``subtype, metric, a, b, difference, relative_pct, ci_low, ci_high,
    p_value, n_queries, n_boot, n_perm``.
    """
    keys = ["subtype", "scan_id"]
    a, b = (t.set_index(keys)[metric] for t in (per_query_a, per_query_b))
    if set(a.index) != set(b.index):
        raise ValueError(f"the two retrievals have different queries ({len(a)} vs {len(b)}): compare encoders on "
                         "the same gallery and labels")
    b = b.reindex(a.index)
    scans = pd.Index(a.index.get_level_values("scan_id").unique())
    rng = np.random.default_rng(seed)
    signs = np.where(rng.random((n_perm, len(scans))) < 0.5, -1.0, 1.0)  # per scan, shared across subtypes
    alpha = 100 * (1 - ci) / 2
    weights = _scan_weights(len(scans), n_boot, rng)
    rows, boot_diffs, null_diffs = [], [], []
    for subtype in a.index.get_level_values("subtype").unique():
        va, vb = a.loc[subtype].to_numpy(float), b.loc[subtype].to_numpy(float)
        d = va - vb
        columns = scans.get_indexer(a.loc[subtype].index)
        boot = _weighted_mean(d, weights[:, columns])
        null = (signs[:, columns] * d).mean(axis=1)
        boot_diffs.append(boot)
        null_diffs.append(null)
        rows.append(_comparison_row(subtype, metric, va.mean(), vb.mean(), boot, null, alpha, len(d), n_boot, n_perm))
    if rows:
        mean_a = float(np.mean([r["a"] for r in rows]))
        mean_b = float(np.mean([r["b"] for r in rows]))
        rows.append(_comparison_row("mean", metric, mean_a, mean_b, np.mean(boot_diffs, axis=0),
                                    np.mean(null_diffs, axis=0), alpha, len(a), n_boot, n_perm))
    return pd.DataFrame(rows)


def _comparison_row(subtype, metric, a, b, boot, null, alpha, n_queries, n_boot, n_perm) -> dict:
    diff = a - b
    lo, hi = _interval(boot, alpha)
    return {"subtype": subtype, "metric": "map" if metric == "ap" else metric, "a": float(a), "b": float(b),
            "difference": float(diff), "relative_pct": relative_improvement(a, b) if b else np.nan,
            "ci_low": lo, "ci_high": hi, "p_value": _p_value(diff, null), "n_queries": int(n_queries),
            "n_boot": n_boot, "n_perm": n_perm}


def neighbour_agreement(embeddings: np.ndarray, values, k: int = 10) -> tuple[float, float]:
    """What a scan's nearest neighbours have in common with it: the fraction of its ``k`` nearest (cosine, itself
    left out) that share its value in ``values`` (a scanner make, a slice thickness, a label), averaged over the
    scans with a value, and the same fraction for ``k`` others drawn at random (``(n_v - 1) / (n - 1)`` for a scan
    whose value ``n_v`` scans share). Where a retrieval finds nothing, this says what the embedding groups by."""
    values = pd.Series(np.asarray(values, dtype=object))
    keep = values.notna().to_numpy()
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32)[keep])
    v = values[keep].astype(str).to_numpy()
    n = len(v)
    if n <= k:
        raise ValueError(f"{n} scans with a value: fewer than k + 1 = {k + 1}")
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ranked = index.search(x, k + 1)
    others = np.array([[j for j in row if j != i][:k] for i, row in enumerate(ranked)])  # itself left out
    observed = float((v[others] == v[:, None]).mean())
    share = pd.Series(v).map(pd.Series(v).value_counts()).to_numpy()
    chance = float(((share - 1) / (n - 1)).mean())
    return observed, chance
