"""Volume-to-volume retrieval (paper, Methods "Volume-to-volume retrieval evaluation"; Fig. 3).

Embeddings are L2-normalised and compared by cosine similarity. For each subtype c, every positive scan for c is
a query once, ranked against the whole gallery minus itself; an item is relevant when it is also positive for c.
Per query, with R relevant items retrieved at ranks k_1 < … < k_R, ``AP = (1/R) Σ_i P(k_i)`` and ``P@K`` is the
fraction of relevant items in the top K; mAP is the mean over queries. CIs come from bootstrapping the query scans
(scan-level retrievals), one draw per replicate shared by every subtype, so a mean over subtypes counts each scan
once. Two encoders are compared on the same queries (``retrieval_comparison``): the difference of their mAPs, its
bootstrap CI over the queries, and a two-sided paired permutation p that swaps a query scan's two results.

Rankings are exact and do not depend on the order of the rows (``retrieve_all_vs_all``): similarities in float64,
computed on the distinct unit vectors in a canonical order, and tied neighbours scored as scikit-learn scores ties.
A float32 inner-product index (faiss ``IndexFlatIP``, used here before) broke ties and float32 near-ties by row
order: on near-collapsed embeddings (pairwise cosines 0.99944–0.999999) the patient-disjoint mAP moved by 1e-4 when
the rows were shuffled and by 2e-4 against float64, the size of the differences then reported between encoders.
"""
from __future__ import annotations

import warnings

import faiss
import numpy as np
import pandas as pd

from ..config import is_whole_number
from .stats import _counts, _interval, _p_value, relative_improvement

__all__ = ["check_ks", "retrieve_all_vs_all", "retrieval_summary", "retrieval_comparison", "neighbour_agreement",
           "embedding_spread", "COLLAPSE_SPREAD"]

# Below this spread (``embedding_spread``: 1 - |mean unit vector|², the mean squared distance of the unit vectors to
# their centroid; about the mean of 1 - cosine over pairs) the embeddings are nearly collapsed: the typical angle
# between two scans is under sqrt(2e-3) ≈ 0.045 rad (2.6°), within an order of magnitude of how far bf16 inference
# (relative precision 2^-8 ≈ 4e-3) or any small perturbation of the encoder moves a unit vector, so which scan is a
# neighbour of which is decided by noise. Independent random directions give ~1, healthy but anisotropic encoders
# (mean cosine 0.9) ~0.1; a DINO encoder whose teacher went uniform gives ~1e-4 (cosines 0.9994–0.999999).
COLLAPSE_SPREAD = 1e-3
_BLOCK_ELEMENTS = 1 << 21  # a query block's similarity matrix holds at most this many float64 (16 MiB) per array


def embedding_spread(embeddings: np.ndarray) -> float:
    """``1 - |mean of the L2-normalised embeddings|²`` (zero vectors left out): the mean squared distance of the unit
    vectors to their centroid, ``(n-1)/n`` × the mean of ``1 - cosine`` over pairs of distinct rows. ~1 for random
    directions, 0 when every embedding points the same way; below ``COLLAPSE_SPREAD`` retrieval rankings are noise."""
    u = _unit_rows(np.asarray(embeddings, dtype=np.float64))
    u = u[np.any(u != 0, axis=1)]
    if len(u) < 2:
        return float("nan")
    return float(1.0 - np.sum(u.mean(axis=0) ** 2))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm in float64 (zero rows stay zero); each row's result depends on that row alone."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.where(norm > 0, norm, 1.0)[:, None]


def check_ks(ks, n_gallery: int | None = None) -> list[int]:
    """The ranks K of Precision@K as a list of distinct whole numbers ≥ 1 (one number alone is a list of one), each
    at most ``n_gallery - 1`` (the scans a query is ranked against) where ``n_gallery`` is given; else a one-line
    ``ValueError`` naming ``ks``."""
    usable = "; ks are distinct whole numbers of at least 1, e.g. [1, 5, 10]"
    if isinstance(ks, str):
        raise ValueError(f"ks {ks!r}: a list of ranks, not text (papermill: -y \"ks: [1, 5, 10]\")")
    listed = [ks] if isinstance(ks, (int, float, np.integer)) else list(ks)
    for k in listed:
        if not is_whole_number(k):
            raise ValueError(f"ks {ks!r}: {k!r} is not a whole number of at least 1{usable}")
    listed = [int(k) for k in listed]
    if not listed:
        raise ValueError(f"ks {ks!r}: name at least one rank{usable}")
    if len(set(listed)) < len(listed):
        raise ValueError(f"ks {ks!r}: a rank is named twice{usable}")
    if n_gallery is not None and max(listed) > n_gallery - 1:
        raise ValueError(f"ks {ks!r}: a query of the {n_gallery} scans is ranked against {n_gallery - 1} others, "
                         f"so K = {max(listed)} has no precision")
    return listed


def retrieve_all_vs_all(embeddings: np.ndarray, labels: pd.DataFrame, ks: tuple[int, ...] = (1, 5, 10),
                        scan_ids=None, groups=None, chunk: int = 256, warn_collapse: bool = True) -> pd.DataFrame:
    """Per-query retrieval metrics: one row per (subtype, query) with ``ap`` and ``p@K``.

    ``embeddings`` (n, D); ``labels`` a DataFrame of n rows with one 0/1 column per subtype (multi-hot).
    Scans with an unknown label for a subtype are left out of that subtype's gallery and queries.
    Queries with no other positive in the gallery (R = 0) are dropped, since their AP is undefined.
    ``groups`` (n patient ids) makes the retrieval patient-disjoint: a query's ranking leaves out every scan of
    its patient, not only itself (the paper leaves out only the query, so another series of the same patient,
    with the same findings, can be its top hit).

    Exact and independent of the order of the rows. Cosine similarities are computed in float64 between the
    distinct unit vectors taken in lexicographic order (``np.unique``), so neither float32 rounding nor the position
    of a row in a BLAS product can reorder two neighbours, and identical embeddings have bitwise-equal similarities.
    Exact ties (identical embeddings, a fully collapsed encoder) are scored without any order among them, as
    scikit-learn's ``average_precision_score`` scores tied scores (its precision-recall curve has one threshold per
    distinct score): the relevant items of a tie group all take the precision at the group's end,
    ``AP = (1/R) Σ_groups h_g · P(end of g)``; a fully collapsed encoder then gets the prevalence, the chance level.
    ``p@K`` is the expected precision over the orders of a tie group that straddles rank K:
    ``(H + h · (K - N) / g) / K`` with H hits in the N items above the group and h hits among its g items. Breaking
    ties by scan id instead would be order-free too, but arbitrary (ids can follow site or date); the alternative
    rules differ only where ties exist. Memory: ``chunk`` queries at a time (fewer when the gallery is large, at most
    2²¹ similarities per block), so any gallery that fits in memory as embeddings can be retrieved; time is the
    all-vs-all product, ~n² D float64 multiply-adds.

    With ``warn_collapse``, a ``UserWarning`` when ``embedding_spread`` is below ``COLLAPSE_SPREAD``: the rankings
    of nearly collapsed embeddings reflect noise, and mAP differences between such encoders are not meaningful.
    """
    ks = tuple(check_ks(ks))
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings {x.shape} and labels ({len(labels)} rows) do not match")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    scan_ids = np.asarray(scan_ids if scan_ids is not None else np.arange(len(x))).astype(str)
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"groups ({len(groups)}) and embeddings ({len(x)} rows) do not match")
    groups = pd.factorize(pd.Series(np.asarray(groups)))[0] if groups is not None else np.arange(len(x))
    columns = ["subtype", "scan_id", "n_relevant", "ap", *[f"p@{k}" for k in ks]]
    if len(x) == 0:
        return pd.DataFrame(columns=columns)
    if warn_collapse:
        spread = embedding_spread(x)
        if spread < COLLAPSE_SPREAD:
            warnings.warn(f"retrieval: the embeddings are nearly collapsed (spread 1 - |mean unit vector|² = "
                          f"{spread:.2g} < {COLLAPSE_SPREAD:g}): rankings reflect noise, and mAP differences between "
                          "such encoders are not meaningful", stacklevel=2)
    unique, vector = np.unique(_unit_rows(x), axis=0, return_inverse=True)  # canonical order; vector: row → unique
    vector = vector.reshape(-1)
    rows = []
    for subtype in labels.columns:
        column = pd.to_numeric(labels[subtype], errors="coerce").to_numpy(float)
        known = np.flatnonzero(~np.isnan(column))
        relevant = column[known] == 1
        group = groups[known]
        gallery = vector[known]                                    # the gallery's columns among the unique vectors
        queries = np.flatnonzero(relevant)                         # positions in the gallery
        if len(queries) == 0:
            continue
        # blocks of distinct query vectors, in their canonical order: each similarity row depends on content alone
        distinct = np.unique(gallery[queries])
        block = max(1, min(chunk, _BLOCK_ELEMENTS // max(len(unique), len(known))))
        per_query = {}
        for start in range(0, len(distinct), block):
            b = distinct[start:start + block]
            sims = (unique[b] @ unique.T)[:, gallery]              # (m, n) float64 cosines to the gallery
            q = queries[np.isin(gallery[queries], b)]
            ap, n_relevant, precision = _rank_metrics(sims[np.searchsorted(b, gallery[q])], relevant,
                                                      group[q][:, None] != group[None, :], ks)
            for j, qi in enumerate(q):
                per_query[qi] = (n_relevant[j], ap[j], precision[j])
        for qi in queries:                                         # the queries in the order of the rows
            n_relevant, ap, precision = per_query[qi]
            if n_relevant == 0:
                continue
            rows.append({"subtype": subtype, "scan_id": scan_ids[known[qi]], "n_relevant": int(n_relevant),
                         "ap": float(ap), **{f"p@{k}": float(p) for k, p in zip(ks, precision)}})
    return pd.DataFrame(rows, columns=columns)


def _rank_metrics(sims: np.ndarray, relevant: np.ndarray, kept: np.ndarray, ks) -> tuple:
    """AP, R and P@K of each row of ``sims`` (m, n) (float64 similarities of m queries to the n gallery items;
    ``relevant`` (n,), ``kept`` (m, n): the items each query ranks), tied similarities scored as one group: AP by
    the precision at the group's end (scikit-learn's rule), P@K by its expectation over the orders of the group."""
    m, n = sims.shape
    order = np.argsort(-sims, axis=1)                                  # within a tie group any order: it is pooled
    s = np.take_along_axis(sims, order, axis=1)
    count = np.take_along_axis(kept, order, axis=1)
    hits = count & relevant[order]
    cum_count = np.cumsum(count, axis=1)
    cum_hits = np.cumsum(hits, axis=1)
    positions = np.broadcast_to(np.arange(n), (m, n))
    last = np.ones((m, n), bool)
    last[:, :-1] = s[:, 1:] != s[:, :-1]                               # the last item of its tie group
    first = np.ones((m, n), bool)
    first[:, 1:] = last[:, :-1]
    end = np.minimum.accumulate(np.where(last, positions, n - 1)[:, ::-1], axis=1)[:, ::-1]
    begin = np.maximum.accumulate(np.where(first, positions, 0), axis=1)
    count_end = np.take_along_axis(cum_count, end, axis=1)
    hits_end = np.take_along_axis(cum_hits, end, axis=1)
    R = cum_hits[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits * hits_end / np.maximum(count_end, 1)).sum(axis=1) / R
        count_before = np.take_along_axis(cum_count - count, begin, axis=1)   # kept items above the group
        hits_before = np.take_along_axis(cum_hits - hits, begin, axis=1)
        precision = np.full((m, len(ks)), np.nan)
        for i, k in enumerate(ks):
            enough = cum_count[:, -1] >= k
            at = np.argmax(cum_count >= k, axis=1)                      # the item at kept rank k
            pick = lambda a: a[np.arange(m), at]
            g = pick(count_end) - pick(count_before)
            h = pick(hits_end) - pick(hits_before)
            expected = pick(hits_before) + h * (k - pick(count_before)) / np.maximum(g, 1)
            precision[:, i] = np.where(enough, expected / k, np.nan)
    return ap, R, precision


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
    whose value ``n_v`` scans share). Where a retrieval finds nothing, this says what the embedding groups by.
    A float32 faiss top-``k`` (fast at any size) whose ties and float32 near-ties at rank ``k`` are broken by row
    order: a description of the embedding, not a score to compare at 1e-4 (``retrieve_all_vs_all`` is exact)."""
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
