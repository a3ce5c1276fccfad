"""Classification metrics: AUROC and average precision per task and macro over tasks (paper, Fig. 1e).

Two layers:

- ``auroc`` / ``average_precision`` / ``task_metrics``: the plain metrics, through scikit-learn. Where a
  metric is undefined (a one-class set: AUROC needs both classes, AP a positive) it is NaN and
  ``undefined_reason`` says why; ``task_metrics`` carries that in its ``reason`` column.
- ``weighted_auroc_ap``: the same two metrics for a whole matrix of sample weights at once, from a single
  sort of the scores. A bootstrap replicate is a vector of resampling counts, a permutation of two models
  is a 0/1 selection over their pooled scores, so both statistics in ``stats.py`` reduce to this one
  vectorised call. With integer weights it equals scikit-learn on the expanded sample (ties included).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["auroc", "average_precision", "task_metrics", "label_prevalence", "weighted_auroc_ap", "predictions_to_wide",
           "sort_groups", "group_sums", "auroc_ap_from_groups", "undefined_reason", "is_undefined",
           "macro_reason"]

MACRO = "macro"


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
    """Average precision (scikit-learn's step-wise area under the precision-recall curve); NaN without positives."""
    labels = np.asarray(labels)
    if not (labels == 1).any():
        return float("nan")
    return float(average_precision_score(labels, scores))


def undefined_reason(labels) -> str:
    """Why AUROC or AP cannot be computed on ``labels``: ``""`` where both can, ``"no scans"``, ``"no
    positives"`` (AUROC and AP undefined) or ``"no negatives"`` (AUROC undefined; AP is 1)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return "no scans"
    if not (labels == 1).any():
        return "no positives"
    return "" if (labels != 1).any() else "no negatives"


def is_undefined(reason: str, metric: str) -> bool:
    """Whether ``metric`` (``"auroc"`` or ``"ap"``) is undefined for an ``undefined_reason``."""
    return bool(reason) and (metric == "auroc" or reason != "no negatives")


def task_metrics(predictions: pd.DataFrame, by: tuple[str, ...] = ("task",)) -> pd.DataFrame:
    """AUROC and AP per group of a predictions table (columns ``probability``, ``label`` and ``by``).

    One row per group with ``auroc``, ``ap``, ``n``, ``n_pos`` and ``reason`` (``undefined_reason``: why a
    metric is NaN, ``""`` where none is); when grouping by task alone a final ``task == "macro"`` row holds
    the unweighted mean over the tasks where the metric is defined (the paper's macro-AUC), its ``reason``
    naming the tasks left out.
    """
    _check_columns(predictions, ["probability", "label", *by])
    rows = []
    for key, g in predictions.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        y, s = g["label"].to_numpy(int), g["probability"].to_numpy(float)
        rows.append({**dict(zip(by, key)), "auroc": auroc(y, s), "ap": average_precision(y, s),
                     "n": len(g), "n_pos": int(y.sum()), "reason": undefined_reason(y)})
    table = pd.DataFrame(rows)
    if tuple(by) == ("task",) and len(table):
        macro = {"task": MACRO, "auroc": table["auroc"].mean(), "ap": table["ap"].mean(),
                 "n": int(table["n"].max()), "n_pos": int(table["n_pos"].sum()),
                 "reason": macro_reason(dict(zip(table["task"], table["reason"])))}
        table = pd.concat([table, pd.DataFrame([macro])], ignore_index=True)
    return table


def label_prevalence(predictions: pd.DataFrame) -> dict[str, float]:
    """{task: fraction of positive scans} over the scans a predictions table evaluates, each scan counted once
    however many models, seeds or K-shot draws predicted it: about the AP of a random ranking (a figure's
    chance line)."""
    _check_columns(predictions, ["scan_id", "task", "label"])
    scans = predictions.drop_duplicates(["scan_id", "task"])
    labels = pd.to_numeric(scans["label"], errors="coerce")
    return {str(task): float(y.mean()) for task, y in labels.groupby(scans["task"], sort=False) if y.notna().any()}


def macro_reason(reasons: dict, metric: str | None = None) -> str:
    """The ``reason`` of a macro value from its tasks' ``undefined_reason``s ({task: reason}): which tasks
    the mean leaves out (for ``metric``, or for either metric), ``""`` where none."""
    out = {t: r for t, r in reasons.items() if r and (metric is None or is_undefined(r, metric))}
    if not out:
        return ""
    named = ", ".join(f"{t} ({r})" for t, r in out.items())
    if len(out) == len(reasons):
        return f"undefined for every task: {named}"
    return f"mean over the other tasks; undefined for {named}"


def weighted_auroc_ap(scores, labels, weights) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP of one score vector under each row of a weight matrix.

    ``scores`` and ``labels`` are (n,) (a label is positive where it is 1 or True; NaN is refused),
    ``weights`` (B, n) non-negative (a row of resampling counts is a bootstrap replicate; a 0/1 row selects a
    subset). Returns two (B,) arrays; NaN where a row has no positive (AP, AUROC) or no negative (AUROC) weight.

    Scores are sorted once (descending) and grouped by tied value. Per group g with positive weight
    ``p_g`` and negative weight ``q_g``, and cumulative ``TP_g``, ``FP_g`` down to and including g:
    ``AP = Σ_g (p_g / P) · TP_g / (TP_g + FP_g)`` (scikit-learn's definition) and
    ``AUROC = Σ_g p_g · (N − FP_g + q_g / 2) / (P · N)`` (ties count one half).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("labels contain NaN: leave the scans without a label out")
    positive = labels == 1
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if scores.ndim != 1 or positive.shape != scores.shape or weights.shape[1] != scores.shape[0]:
        raise ValueError(f"shapes do not match: scores {scores.shape}, labels {positive.shape}, "
                         f"weights {weights.shape}")
    if len(scores) == 0:
        nan = np.full(weights.shape[0], np.nan)
        return nan, nan.copy()
    order, starts = sort_groups(scores)
    y, w = positive[order], weights[:, order]
    return auroc_ap_from_groups(group_sums(w * y, starts), group_sums(w * ~y, starts))


def sort_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Descending order of ``scores`` and the start of each run of tied values (None when all differ)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, (None if len(starts) == len(s) else starts)


def group_sums(w: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
    """Sum the sorted columns of ``w`` within each group of tied scores."""
    return w if starts is None else np.add.reduceat(w, starts, axis=1)


def auroc_ap_from_groups(pos_w: np.ndarray, neg_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP from per-group positive and negative weights (B, groups), groups in descending score."""
    tp, fp = np.cumsum(pos_w, axis=1), np.cumsum(neg_w, axis=1)
    P, N = tp[:, -1], fp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos_w * tp / np.maximum(tp + fp, 1e-300)).sum(axis=1) / P
        auc = (pos_w * (N[:, None] - fp + 0.5 * neg_w)).sum(axis=1) / (P * N)
    ap[P <= 0] = np.nan
    auc[(P <= 0) | (N <= 0)] = np.nan
    return auc, ap


def predictions_to_wide(predictions: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Long predictions (one model) → ``(scan_ids, tasks, labels (n, T), scores (n, T))``; NaN where a scan
    has no prediction for a task. A (scan, task) pair may appear only once."""
    _check_columns(predictions, ["scan_id", "task", "probability", "label"])
    dup = predictions.duplicated(["scan_id", "task"])
    if dup.any():
        first = predictions.loc[dup, ["scan_id", "task"]].iloc[0].tolist()
        raise ValueError(f"predictions hold more than one row per (scan_id, task), e.g. {first}: pass one "
                         f"model's predictions (filter protocol / seed / k first)")
    labels = predictions.pivot(index="scan_id", columns="task", values="label").sort_index()
    scores = predictions.pivot(index="scan_id", columns="task", values="probability").loc[labels.index]
    scores = scores[labels.columns]
    return (list(labels.index.astype(str)), list(labels.columns), labels.to_numpy(float),
            scores.to_numpy(float))


def _check_columns(df: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"predictions table lacks columns {missing} (has {list(df.columns)})")
