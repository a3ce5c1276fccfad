"""Statistics as the paper's Methods ("Statistical analysis").

- 95% CIs by bootstrapping the held-out set (100×): scans are resampled with replacement, jointly for
  all tasks, and the CI is the 2.5–97.5 percentile interval of the replicate metrics.
- P values by a two-sided paired permutation test (1,000×): for every scan the two models' predictions
  are swapped with probability ½ (the same swap for all tasks of a scan), and
  ``p = (1 + #{|Δ_perm| ≥ |Δ_obs|}) / (1 + n_perm)``. What is swapped is each model's *ranks* (per task and
  training seed, over the labelled scans, divided by their count; ties averaged), as in Venkatraman & Begg's
  paired test of ROC curves (Biometrika 1996): AUROC and AP are rank statistics, so every observed value stays
  as it is, while two models whose scores live on different scales (a fine-tuned classifier near 0 and 1, a
  probe near 0.5) become exchangeable under the null. Swapping raw probabilities mixed the scales: with one
  model squashed to ×0.1 around 0.5 it rejected 2.7% of true nulls at 0.05 and lost a third of its power;
  ranks reject 5.0% (``tools/permutation_calibration.py``, docs/experiments.md).
- Relative improvement ``100 · (new − old) / old`` (macro-AUC 0.904 vs 0.748 → +20.86%).
- Few-shot: mean over the training-set resamples and a Student-t 95% CI across them.
- Undefined metrics (a task whose held-out scans are all of one class: AUROC, and AP without positives) are
  NaN with a ``reason`` column saying why (``metrics.undefined_reason``); a macro value is the mean over the
  tasks where the metric is defined, its ``reason`` naming those left out.
- Several training seeds of one model (a ``seed`` column with more than one value, e.g. Fig. 1e on the
  demo profile, where one short fine-tuning run is mostly optimisation luck): the model's metric is the
  mean over its seeds. A bootstrap replicate resamples the scans once and averages the seeds' metrics on
  them; a permutation swaps a scan's two predictions in every seed at once, and the statistic is the
  seed-averaged difference. Seeds are paired by value between the two models of a test.

Everything is vectorised: the bootstrap through ``metrics.weighted_auroc_ap`` (resampling counts as
weights, one sort per task), the permutation test through ``_PooledPair`` (one sort of the two models'
pooled scores per task, then cumulative sums). ``bench/downstream.py`` times one bootstrap +
permutation evaluation on 10,000 scans × 10 tasks.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .metrics import (MACRO, is_undefined, macro_reason, predictions_to_wide, sort_groups, task_metrics,
                      undefined_reason, weighted_auroc_ap)

__all__ = [
    "bootstrap_indices", "bootstrap_replicates", "bootstrap_ci", "permutation_swaps", "permutation_null",
    "paired_permutation_test", "paired_comparison", "relative_improvement", "fewshot_summary", "paired_runs",
    "mean_ci", "holm_adjust", "without_macro", "normalised_ranks",
]
METRICS = ("auroc", "ap")
_SEED_MARK = " @ seed "  # joins task and training seed into one column key (_wide_by_seed)


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement: replicate b is the sample ``x[idx[b]]``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of the n items occurs in each replicate, (n_boot, n)."""
    n_boot = indices.shape[0]
    flat = (indices + np.arange(n_boot)[:, None] * n).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def bootstrap_replicates(labels: np.ndarray, scores: np.ndarray, n_boot: int = 100,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Per-task AUROC and AP on each bootstrap replicate of the scans → ``{"auroc": (B, T), "ap": (B, T)}``.

    ``labels``/``scores`` are (n, T) with NaN where a scan has no label for a task; replicate b resamples
    the scans ``bootstrap_indices(n, n_boot, seed)[b]`` for every task at once.
    """
    labels, scores = _as_matrix(labels), _as_matrix(scores)
    if np.isnan(scores[~np.isnan(labels)]).any():
        raise ValueError("scores contain NaN where a label is known: a model's prediction is missing")
    counts = _counts(bootstrap_indices(labels.shape[0], n_boot, seed), labels.shape[0])
    out = {m: np.empty((n_boot, labels.shape[1])) for m in METRICS}
    for t in range(labels.shape[1]):
        known = ~np.isnan(labels[:, t])
        out["auroc"][:, t], out["ap"][:, t] = weighted_auroc_ap(
            scores[known, t], labels[known, t] == 1, counts[:, known])
    return out


def _n_seeds(predictions: pd.DataFrame) -> int:
    """How many training seeds the predictions of one model hold (1 without a ``seed`` column)."""
    return int(predictions["seed"].nunique()) if "seed" in predictions.columns else 1


def _wide_by_seed(predictions: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``predictions_to_wide`` with one column per (task, training seed) where the ``seed`` column holds
    several values → ``(scan_ids, tasks, labels, scores, owner)``; column j belongs to ``tasks[owner[j]]``."""
    if _n_seeds(predictions) <= 1:
        ids, tasks, labels, scores = predictions_to_wide(predictions)
        return ids, tasks, labels, scores, np.arange(len(tasks))
    keyed = predictions.assign(task=predictions["task"].astype(str) + _SEED_MARK + predictions["seed"].astype(str))
    ids, columns, labels, scores = predictions_to_wide(keyed)
    column_tasks = [c.split(_SEED_MARK)[0] for c in columns]
    tasks = sorted(set(column_tasks))
    return ids, tasks, labels, scores, np.array([tasks.index(t) for t in column_tasks])


def _seed_mean(x: np.ndarray, owner: np.ndarray, n_tasks: int) -> np.ndarray:
    """(..., columns) → (..., tasks): the mean over each task's seed columns (NaN where all are: undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an undefined task: all NaN, reported by its reason
        return np.stack([np.nanmean(x[..., owner == t], axis=-1) for t in range(n_tasks)], axis=-1)


def _reasons(predictions: pd.DataFrame) -> dict[str, str]:
    """{task: ``undefined_reason`` of its held-out labels}."""
    return {str(t): undefined_reason(g.to_numpy()) for t, g in predictions.groupby("task")["label"]}


def _reason(reasons: dict[str, str], task: str, metric: str) -> str:
    """Why ``metric`` of ``task`` (or of the macro) is undefined or leaves tasks out; ``""`` where nothing is."""
    if task == MACRO:
        return macro_reason(reasons, metric)
    return reasons[task] if is_undefined(reasons[task], metric) else ""


def _point_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """``task_metrics`` (per task and macro), averaged over training seeds where there are several."""
    if _n_seeds(predictions) <= 1:
        return task_metrics(predictions).set_index("task")
    per_task = task_metrics(predictions, by=("task", "seed")).groupby("task")[list(METRICS)].mean()
    return pd.concat([per_task, per_task.mean().to_frame(MACRO).T])


def _replicates(predictions: pd.DataFrame, n_boot: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{metric: {task or ``macro``: (n_boot,) replicate values}}: each task's metric on every bootstrap replicate
    of the scans (its seeds averaged), the macro the mean over the tasks the point value averages (those defined
    on the held-out set). A replicate that draws no positive (or negative) of such a task has no macro (NaN, left
    out of the interval): averaging the other tasks there would mix means over different tasks in one interval."""
    _, tasks, labels, scores, owner = _wide_by_seed(predictions)
    reps = {m: _seed_mean(r, owner, len(tasks)) for m, r in bootstrap_replicates(labels, scores, n_boot, seed).items()}
    reasons = _reasons(predictions)
    out = {}
    for m in METRICS:
        defined = [i for i, t in enumerate(tasks) if not is_undefined(reasons[str(t)], m)]
        macro = reps[m][:, defined].mean(axis=1) if defined else np.full(n_boot if tasks else 0, np.nan)
        out[m] = {**{t: reps[m][:, i] for i, t in enumerate(tasks)}, MACRO: macro}
    return out


def _interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    """The ``alpha``–``100 − alpha`` percentile interval of the finite replicates (NaN where there are none)."""
    if not np.isfinite(replicates).any():
        return np.nan, np.nan
    lo, hi = np.nanpercentile(replicates, [alpha, 100 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(predictions: pd.DataFrame, n_boot: int = 100, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Metrics of one model with bootstrap CIs: one row per task and a ``macro`` row.

    Columns ``task, metric, value`` (on the full held-out set), ``mean`` (over replicates, what the paper
    reports), ``ci_low, ci_high`` (percentile interval), ``n_boot``, ``n_seeds``, ``reason`` (why a value is
    undefined, or which tasks a macro leaves out; ``""`` where nothing is) and ``split_warning`` (the
    evaluation split has too few positives or negatives for a meaningful estimate: ``adequacy``; a macro row
    names its tasks that have one; ``""`` where none), so a figure's data carry it. The macro replicate is
    the mean of the per-task replicates, so its CI reflects the joint resampling of scans. ``seed`` is the
    bootstrap's; a model trained with several seeds (``predictions.seed``) is reported as their mean.
    """
    from .adequacy import adequacy_table
    point, reasons = _point_metrics(predictions), _reasons(predictions)
    warned = {str(r.task): r.warning for r in adequacy_table(predictions).itertuples() if r.warning}
    warned[MACRO] = f"tasks with too few positives or negatives: {', '.join(sorted(warned))}" if warned else ""
    alpha = 100 * (1 - ci) / 2
    rows = []
    for metric, columns in _replicates(predictions, n_boot, seed).items():
        for task, r in columns.items():
            lo, hi = _interval(r, alpha)
            rows.append({"task": task, "metric": metric, "value": point.loc[task, metric],
                         "mean": np.nanmean(r) if np.isfinite(r).any() else np.nan,
                         "ci_low": lo, "ci_high": hi, "n_boot": n_boot, "n_seeds": _n_seeds(predictions),
                         "reason": _reason(reasons, task, metric), "split_warning": warned.get(str(task), "")})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------- permutation
def permutation_swaps(n: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """(n_perm, n) booleans: True where a scan's two predictions trade places in that permutation."""
    return np.random.default_rng(seed).random((n_perm, n)) < 0.5


def permutation_null(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_perm: int = 1000,
                     seed: int = 0, chunk: int = 100) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Observed per-task differences ``metric(a) − metric(b)`` and their permutation null distribution.

    Returns ``{metric: (observed (T,), null (n_perm, T))}``. Each task pools the two models' scores once
    (2n values, sorted once); a permuted model a′ is a 0/1 selection over the pool and b′ its complement,
    so both metrics come from cumulative sums without re-sorting (``_PooledPair``). Chunks of ``chunk``
    permutations bound the memory.
    """
    labels, scores_a, scores_b = _as_matrix(labels), _as_matrix(scores_a), _as_matrix(scores_b)
    if not labels.shape == scores_a.shape == scores_b.shape:
        raise ValueError(f"shapes differ: labels {labels.shape}, a {scores_a.shape}, b {scores_b.shape}")
    n, n_tasks = labels.shape
    swaps = permutation_swaps(n, n_perm, seed)
    out = {m: (np.empty(n_tasks), np.empty((n_perm, n_tasks))) for m in METRICS}
    for t in range(n_tasks):
        known = ~np.isnan(labels[:, t])
        pooled = _PooledPair(scores_a[known, t], scores_b[known, t], labels[known, t] == 1)
        observed = pooled.differences(np.zeros((1, int(known.sum())), bool))
        out["auroc"][0][t], out["ap"][0][t] = observed[0][0], observed[1][0]
        for start in range(0, n_perm, chunk):
            d_auc, d_ap = pooled.differences(swaps[start:start + chunk][:, known])
            out["auroc"][1][start:start + chunk, t], out["ap"][1][start:start + chunk, t] = d_auc, d_ap
    return out


class _PooledPair:
    """Two models' scores on the same m scans, pooled (2m values) and sorted once.

    A permuted model a′ takes, per scan, a's or b's score; b′ takes the other one. With the pool sorted
    descending and grouped by tied value, a′ is a 0/1 weight row over the pool and b′ its complement, so
    the per-group sums that AUROC and AP need (``metrics.auroc_ap_from_groups``) reduce to one cumulative
    sum over the pool, read at the positive entries only:

    for a positive entry in group g, ``TP_g`` and ``TP_g + FP_g`` are cumulative weights at the group's
    last entry, and the negative weight inside the group is what remains of the group's weight.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, positive: np.ndarray):
        self.m = m = len(a)
        order, starts = sort_groups(np.r_[a, b])
        L = 2 * m
        self.ties = starts is not None
        starts = np.arange(L) if starts is None else starts
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, L]))
        is_pos = np.r_[positive, positive][order]
        self.from_b, self.scan = order >= m, order % m
        self.pos = np.flatnonzero(is_pos)                    # positive entries, in sorted order
        g = group[self.pos]
        self.group_end = np.r_[starts[1:], L][g] - 1         # last pool entry of each positive's group
        self.group_before = starts[g] - 1                    # last pool entry before the group (−1: none)
        # within the positive entries: the last one of the same group, and the last one before the group
        last_pos = np.r_[np.flatnonzero(np.diff(g)), len(g) - 1]
        self.last_pos_in_group = np.repeat(last_pos, np.diff(np.r_[-1, last_pos]))
        first_pos = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
        self.last_pos_before = np.repeat(first_pos, np.diff(np.r_[first_pos, len(g)])) - 1

    def _metrics(self, cw_end, cw_before, w_pos) -> tuple[np.ndarray, np.ndarray]:
        """AUROC and AP from cumulative pool weights at the positives' group ends and at their groups'
        starts − 1, and the positives' own weights; all (n_pos, B) — pool entries along axis 0."""
        tp = np.cumsum(w_pos, axis=0)
        if self.ties:
            tp_end = tp[self.last_pos_in_group]
            tp_before = np.where(self.last_pos_before[:, None] >= 0, tp[np.maximum(self.last_pos_before, 0)], 0.0)
            neg_in_group = (cw_end - cw_before) - (tp_end - tp_before)
        else:  # every positive is its own group
            tp_end, neg_in_group = tp, 0.0
        P = tp[-1]
        N = self.m - P  # a′ and b′ each hold exactly one score per scan
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (w_pos * tp_end / np.maximum(cw_end, 1e-300)).sum(axis=0) / P
            auc = (w_pos * (N - (cw_end - tp_end) + 0.5 * neg_in_group)).sum(axis=0) / (P * N)
        ap[P <= 0] = np.nan
        auc[(P <= 0) | (N <= 0)] = np.nan
        return auc, ap

    def differences(self, swap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``metric(a′) − metric(b′)`` for each row of ``swap`` (B, m): True where the scan's scores trade
        (NaN for both metrics without a positive scan)."""
        if not len(self.pos):
            return np.full(len(swap), np.nan), np.full(len(swap), np.nan)
        w_a = swap.T[self.scan] == self.from_b[:, None]          # (2m, B): a′ holds a's copy unless swapped
        cw_a = np.cumsum(w_a, axis=0, dtype=np.int32)
        end, before = self.group_end[:, None], self.group_before[:, None]
        cw_a_end = cw_a[self.group_end].astype(np.float64)
        cw_a_before = (np.where(before >= 0, cw_a[np.maximum(self.group_before, 0)], 0).astype(np.float64)
                       if self.ties else None)
        # b′ holds every other pool entry: its cumulative weight at entry j is (j + 1) − a′'s
        cw_b_end = (end + 1) - cw_a_end
        cw_b_before = np.where(before >= 0, (before + 1) - cw_a_before, 0.0) if self.ties else None
        w_pos_a = w_a[self.pos].astype(np.float64)
        auc_a, ap_a = self._metrics(cw_a_end, cw_a_before, w_pos_a)
        auc_b, ap_b = self._metrics(cw_b_end, cw_b_before, 1.0 - w_pos_a)
        return auc_a - auc_b, ap_a - ap_b


def normalised_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each column's scores on its labelled scans (``labels`` not NaN) as ranks divided by their count, ties
    averaged (``scipy.stats.rankdata``), in (0, 1]; NaN where the label is. Every AUROC and AP is unchanged
    (a strictly increasing map that keeps ties), and two models' columns share one scale."""
    scores = np.where(np.isnan(_as_matrix(labels)), np.nan, _as_matrix(scores))
    ranks = sps.rankdata(scores, axis=0, nan_policy="omit")
    return ranks / np.maximum((~np.isnan(scores)).sum(axis=0), 1)


def _p_value(observed: float, null: np.ndarray) -> float:
    """Two-sided permutation p value with the +1 correction; a tiny tolerance absorbs float round-off."""
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    extreme = np.abs(null) >= np.abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(null)))


def paired_permutation_test(predictions_a: pd.DataFrame, predictions_b: pd.DataFrame, n_perm: int = 1000,
                            seed: int = 0) -> pd.DataFrame:
    """Two-sided paired permutation test of model a against model b on the same scans, swapping each scan's
    two normalised ranks (``normalised_ranks``: the models' scales do not enter the null).

    Rows per task and ``macro`` (the mean of the per-task differences under the same permutation), per
    metric: ``task, metric, a, b, diff, p_value, n_perm, reason`` (as in ``bootstrap_ci``). The two tables must
    cover the same (scan_id, task) pairs with the same labels, and the same training seeds where they hold several
    (each model's metric is then its mean over seeds, and a permutation swaps a scan in every seed).
    """
    seeds = [sorted(map(str, df["seed"].unique())) if "seed" in df.columns else [] for df in (predictions_a, predictions_b)]
    if max(len(s) for s in seeds) > 1 and seeds[0] != seeds[1]:
        raise ValueError(f"the two models were trained with different seeds ({seeds[0]} vs {seeds[1]}); "
                         "a paired test over seeds needs the same ones")
    ids_a, tasks, labels, scores_a, owner = _wide_by_seed(predictions_a)
    ids_b, tasks_b, labels_b, scores_b, owner_b = _wide_by_seed(predictions_b)
    if ids_a != ids_b or tasks != tasks_b or not np.array_equal(owner, owner_b):
        raise ValueError("the two prediction tables do not cover the same scans and tasks; a paired test "
                         "needs both models evaluated on the same (scan_id, task) pairs")
    if not np.array_equal(np.isnan(labels), np.isnan(labels_b)) or \
            not np.array_equal(np.nan_to_num(labels), np.nan_to_num(labels_b)):
        raise ValueError("the two prediction tables disagree on the labels of the same scans")
    if np.isnan(scores_a[~np.isnan(labels)]).any() or np.isnan(scores_b[~np.isnan(labels)]).any():
        raise ValueError("a model lacks predictions for some labelled (scan_id, task) pairs")
    ranks_a, ranks_b = normalised_ranks(scores_a, labels), normalised_ranks(scores_b, labels)
    null = {m: (_seed_mean(o, owner, len(tasks)), _seed_mean(p, owner, len(tasks)))
            for m, (o, p) in permutation_null(labels, ranks_a, ranks_b, n_perm, seed).items()}
    metric_a, metric_b = _point_metrics(predictions_a), _point_metrics(predictions_b)
    reasons = _reasons(predictions_a)
    rows = []
    for metric, (observed, perm) in null.items():
        for i, task in enumerate(tasks):
            rows.append({"task": task, "metric": metric, "a": metric_a.loc[task, metric],
                         "b": metric_b.loc[task, metric], "diff": observed[i],
                         "p_value": _p_value(observed[i], perm[:, i]), "n_perm": n_perm,
                         "reason": _reason(reasons, task, metric)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every task undefined: NaN, said by the reason
            diff, null_macro = np.nanmean(observed), np.nanmean(perm, axis=1)
        rows.append({"task": MACRO, "metric": metric, "a": metric_a.loc[MACRO, metric],
                     "b": metric_b.loc[MACRO, metric], "diff": diff, "p_value": _p_value(diff, null_macro),
                     "n_perm": n_perm, "reason": _reason(reasons, MACRO, metric)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------- summaries
def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm 1979; controls the family-wise error rate):
    the i-th smallest of m becomes ``max_{j ≤ i} min(1, (m − j + 1) p_(j))``. NaN stays NaN and does not count
    towards m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def relative_improvement(new, old):
    """Relative improvement in percent, ``100 · (new − old) / old`` (the paper's "+16.07% macro-AUC"); NaN where
    ``old`` is 0 (no relative change from nothing)."""
    new, old = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(old == 0, np.nan, 100.0 * (new - old) / np.where(old == 0, 1.0, old))
    return float(result) if result.ndim == 0 else result


def mean_ci(values, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of a few repeated measurements (few-shot resamples)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) == 1:
        return mean, float("nan"), float("nan")
    half = sps.t.ppf(0.5 + ci / 2, df=len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def fewshot_summary(predictions: pd.DataFrame, ci: float = 0.95) -> pd.DataFrame:
    """Few-shot curves: per (task, k) the mean and t-CI of AUROC and AP across resamples (``seed``).

    ``predictions`` holds columns ``task, k, seed, probability, label`` (k empty/NaN for the all-data
    runs, reported as ``k = "all"``). A ``macro`` task averages the tasks within each resample first, and only
    where every task of ``predictions`` has that run: a K too large for a task's positives has no run of it
    (``ProtocolSkipped``), and a mean over the other tasks would not be the same curve; there the macro is NaN
    and its ``reason`` names the tasks missing.
    Columns: ``task, k, metric, mean, ci_low, ci_high, n_resamples, reason`` (as in ``bootstrap_ci``). The t-interval
    is clipped to the metrics' range [0, 1]: over few draws it leaves it (two draws: the mean ± 6.4 of their
    spread), and a bound outside [0, 1] says nothing more than the bound itself.
    """
    reasons = _reasons(predictions)
    per_run = task_metrics(_with_k_labels(predictions), by=("k", "seed", "task"))
    tasks = set(per_run["task"])
    missing = {k: sorted(tasks - set(g.task)) for k, g in per_run.groupby("k", sort=False)}
    macro = per_run.groupby(["k", "seed"], as_index=False)[list(METRICS)].mean().assign(task=MACRO)
    macro.loc[[bool(missing[k]) for k in macro["k"]], list(METRICS)] = np.nan
    per_run = pd.concat([per_run, macro], ignore_index=True)
    rows = []
    for (task, k), g in per_run.groupby(["task", "k"], sort=False):
        for metric in METRICS:
            mean, lo, hi = mean_ci(g[metric], ci)
            lo, hi = max(lo, 0.0), min(hi, 1.0)  # NaN stays NaN: max/min with a NaN first argument return it
            reason = (f"no run of {', '.join(missing[k])} at this K" if task == MACRO and missing[k]
                      else _reason(reasons, task, metric))
            rows.append({"task": task, "k": k, "metric": metric, "mean": mean, "ci_low": lo, "ci_high": hi,
                         "n_resamples": int(g[metric].notna().sum()), "reason": reason})
    out = pd.DataFrame(rows)
    out["k_order"] = [np.inf if k == "all" else k for k in out["k"]]
    return out.sort_values(["task", "metric", "k_order"], ignore_index=True).drop(columns="k_order")


def paired_runs(a: pd.DataFrame, b: pd.DataFrame, metric: str = "auroc",
                by: tuple[str, ...] = ("task", "k", "seed")) -> pd.DataFrame:
    """One row per run made both ways (same task, K and resample seed, so the same K-shot draw): the
    ``metric`` of ``a`` and of ``b`` side by side, and ``a_wins`` where ``a`` is strictly higher.

    Runs of one side without a partner are dropped. The runs share one test set, so they are not
    independent samples: read the count of wins as a description, not as a test.
    """
    def per_run(df):
        return task_metrics(_with_k_labels(df), by=by)[[*by, metric]]
    out = per_run(a).merge(per_run(b), on=list(by), suffixes=("_a", "_b"))
    out["a_wins"] = out[f"{metric}_a"] > out[f"{metric}_b"]
    return out


def _with_k_labels(predictions: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``k`` as an int, or ``"all"`` for the all-data runs (k empty/NaN)."""
    df = predictions.copy()
    df["k"] = df["k"].apply(lambda v: "all" if pd.isna(v) or v == "" else int(v))
    return df


def _as_matrix(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


# ----------------------------------------------------------------------------------------- comparison
def paired_comparison(predictions_a: pd.DataFrame, predictions_b: pd.DataFrame, n_boot: int = 100,
                      n_perm: int = 1000, seed: int = 0, ci: float = 0.95,
                      tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Model a against model b on the same scans, as a figure's comparison table (paper, Methods, "Statistical
    analysis"): per task, ``macro`` and metric, ``a, b, difference`` (a − b), ``relative_pct`` (``100 (a − b) / b``,
    as the paper reports), ``ci_low, ci_high`` (the 95% bootstrap interval of the difference: both models on
    the same resampled scans in each replicate), ``p_value`` (two-sided paired permutation test), ``n_boot``,
    ``n_perm`` and ``reason`` (as in ``bootstrap_ci``). The tables must cover the same (scan_id, task) pairs,
    as ``paired_permutation_test`` requires. ``tasks``: the tasks the comparison is about, where the tables may
    lack some (a K-shot run a task's positives are too few for): the macro is then undefined, its ``reason``
    naming the tasks missing, as a mean over the others would not be the same comparison as the other rows'."""
    tests = paired_permutation_test(predictions_a, predictions_b, n_perm=n_perm, seed=seed)
    reps_a, reps_b = _replicates(predictions_a, n_boot, seed), _replicates(predictions_b, n_boot, seed)
    alpha = 100 * (1 - ci) / 2
    rows = []
    for r in tests.itertuples(index=False):
        lo, hi = _interval(reps_a[r.metric][r.task] - reps_b[r.metric][r.task], alpha)
        rows.append({"task": r.task, "metric": r.metric, "a": r.a, "b": r.b, "difference": r.a - r.b,
                     "relative_pct": relative_improvement(r.a, r.b), "ci_low": lo, "ci_high": hi,
                     "p_value": r.p_value, "n_boot": n_boot, "n_perm": n_perm, "reason": r.reason})
    out = pd.DataFrame(rows)
    missing = sorted(set(tasks or ()) - set(out["task"]))
    if missing:
        out = without_macro(out, ["a", "b", "difference", "relative_pct", "ci_low", "ci_high", "p_value"],
                            f"no run of {', '.join(missing)}: a macro over the other tasks would not be the same "
                            "comparison")
    return out


def without_macro(table: pd.DataFrame, columns: list[str], reason: str) -> pd.DataFrame:
    """``table`` (rows per task and ``macro``) with its macro rows' ``columns`` NaN and their ``reason`` set: where
    the table lacks a task the other tables it is compared with hold, a mean over its other tasks would not be the
    same macro."""
    out = table.copy()
    macro = out["task"] == MACRO
    out.loc[macro, columns] = np.nan
    out.loc[macro, "reason"] = reason
    return out
