"""Is a split large enough to estimate AUROC on? A warning where it has too few positives or negatives.

The threshold is ``MIN_PER_CLASS = 10`` scans of each class. Below it an AUROC carries little information: by
Hanley & McNeil's standard error (Radiology 1982), an AUROC of 0.8 measured on 10 positives has a 95% CI of
at least ±0.16 however many negatives there are (±0.20 with 10 negatives too), as wide as the gaps the paper
reports between fine-tuned and scratch models (0.852 vs 0.734 on NYU Langone, 0.904 vs 0.748 on NYU Long
Island), and a bootstrap replicate of so few positives often holds only two or three of them. Ten is therefore
a floor under which an estimate is not worth reading, not a size at which it becomes precise; the warning prints
the CI half-width to say how wide it is.

``class_count_warning`` is the sentence; ``split_warning`` counts a split's labels; ``adequacy_table`` gives one
row per task of a predictions table (the figure's data). Downstream runs record the warning of their evaluation
split (``downstream.runs``: the ``split_warning`` column of ``predictions.csv`` and ``config.json``) and issue it as
a Python warning, which a notebook prints; ``fmct ingest`` prints it for the validation and test split.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["MIN_PER_CLASS", "auroc_ci_halfwidth", "class_count_warning", "split_warning", "adequacy_table"]

MIN_PER_CLASS = 10
REFERENCE_AUROC = 0.8  # the AUROC at which the warning states the CI width (the paper's models score 0.73–0.92)


def auroc_ci_halfwidth(n_positive: int, n_negative: int, auroc: float = REFERENCE_AUROC) -> float:
    """Half-width of the normal 95% CI of an AUROC of ``auroc`` on these counts, from Hanley & McNeil's
    (1982) standard error; NaN without both classes."""
    if n_positive < 1 or n_negative < 1:
        return float("nan")
    q1, q2 = auroc / (2 - auroc), 2 * auroc ** 2 / (1 + auroc)
    variance = (auroc * (1 - auroc) + (n_positive - 1) * (q1 - auroc ** 2)
                + (n_negative - 1) * (q2 - auroc ** 2)) / (n_positive * n_negative)
    return float(1.96 * np.sqrt(variance))


def class_count_warning(n_positive: int, n_negative: int, *, where: str, task: str) -> str:
    """The warning for a split (``where``, e.g. ``"rsna test"``) with fewer than ``MIN_PER_CLASS`` positive or
    negative ``task`` scans; ``""`` where it has enough of both."""
    counts = f"{where}: {n_positive} positive and {n_negative} negative {task!r} scans"
    if not n_positive or not n_negative:
        return f"{counts}: no {'positives' if not n_positive else 'negatives'}, AUROC and its CI are undefined"
    if min(n_positive, n_negative) >= MIN_PER_CLASS:
        return ""
    lacking = " and ".join(name for name, n in (("positives", n_positive), ("negatives", n_negative))
                           if n < MIN_PER_CLASS)
    return (f"{counts}, fewer than {MIN_PER_CLASS} {lacking}: an AUROC of {REFERENCE_AUROC} measured on them has a "
            f"95% CI of about ±{auroc_ci_halfwidth(n_positive, n_negative):.2f} (Hanley & McNeil), too few for a "
            "meaningful estimate")


def split_warning(labels, *, where: str, task: str) -> str:
    """``class_count_warning`` for a split's labels of ``task`` (1/0; missing values are not counted)."""
    y = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(float)
    return class_count_warning(int((y == 1).sum()), int((y == 0).sum()), where=where, task=task)


def adequacy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per task of a predictions table (each scan counted once, however many models and seeds predicted it):
    ``task, n_positive, n_negative, warning`` (``""`` where the split has enough of both classes), the split
    named by the table's ``eval_dataset`` where it has one."""
    scans = predictions.drop_duplicates(["scan_id", "task"])
    rows = []
    for task, group in scans.groupby("task", sort=False):
        where = (", ".join(map(str, group["eval_dataset"].unique())) if "eval_dataset" in group else "evaluation")
        y = pd.to_numeric(group["label"], errors="coerce")
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        rows.append({"task": task, "n_positive": n_pos, "n_negative": n_neg,
                     "warning": class_count_warning(n_pos, n_neg, where=f"{where} evaluation split", task=task)})
    return pd.DataFrame(rows, columns=["task", "n_positive", "n_negative", "warning"])
