"""A figure's comparisons, written beside it: ours (difference, 95% bootstrap CI, paired permutation p) and
the paper's where it gives the same comparison.

``evaluate.paired_comparison`` computes a comparison of two models on the same scans; ``with_paper`` adds the
paper's numbers for the same pair (``paper_values.csv``: the two models' values, the relative improvement and
the P value it reports, each with its printed relation), and ``save_comparison`` writes ``<figures>/<name>_comparison.csv``
with ``p_holm``: each p-value adjusted by Holm's method over the figure's tests of the same metric, for a reader who
asks which of a figure's many tests survive as a family (the paper reports unadjusted P values; so do the
conclusions).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate import holm_adjust
from ..io import atomic_write_csv
from ..paths import figures_root

__all__ = ["with_paper", "with_holm", "save_comparison"]


def with_paper(comparison: pd.DataFrame, paper: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """``comparison`` (rows with ``model_a``, ``model_b``, ``task``, ``metric``, and ``k`` for few-shot) with the
    paper's numbers for the same pair, task, metric and K where ``paper`` (rows of ``paper_values.csv``) holds
    them, as printed: ``paper_a``, ``paper_b`` (the two models' values), ``paper_relative_pct`` (its relative
    gain of a over b: macro-AUROC for ``auroc`` rows, macro-AP for ``ap``) and ``paper_p`` (its P value for the
    pair), each with a ``…_relation`` column (``=``, ``>`` or ``<``: RSNA's per-task "> 0.90" is not 0.90, nor
    "P < 0.001" 0.001). ``names`` maps our model names to the paper's (e.g. ``{"in-domain fine-tuned":
    "finetune"}``). A paper row without K matches only comparison rows without one. Empty elsewhere."""
    names = names or {}
    printed = {(r.task, r.metric, r.model, None if pd.isna(r.k) else str(r.k)): (r.value, r.relation)
               for r in paper.itertuples(index=False)}
    out = comparison.copy()
    columns = [f"paper_{c}{s}" for c in ("a", "b", "relative_pct", "p") for s in ("", "_relation")]
    if out.empty:
        return out.assign(**{c: None for c in columns})

    def lookup(row):
        a, b = names.get(row["model_a"], row["model_a"]), names.get(row["model_b"], row["model_b"])
        k = row.get("k")
        k = None if k is None or pd.isna(k) or k == "all" else str(k)
        prefix = "ap_" if row["metric"] == "ap" else ""
        found = [printed.get((row["task"], row["metric"], a, k)), printed.get((row["task"], row["metric"], b, k)),
                 printed.get((row["task"], f"{prefix}relative_improvement_pct", f"{a}_vs_{b}", k)),
                 printed.get((row["task"], f"{prefix}p_value", f"{a}_vs_{b}", k))]
        return pd.Series([x for value in found for x in (value or (None, None))], index=columns)

    return pd.concat([out, out.apply(lookup, axis=1)], axis=1)


def save_comparison(name: str, comparison: pd.DataFrame, root: Path | str | None = None) -> Path:
    """Write ``<root>/<name>_comparison.csv`` (root: the figures root), atomically, with ``p_holm`` (``with_holm``);
    returns its path."""
    path = Path(root or figures_root()) / f"{name}_comparison.csv"
    atomic_write_csv(with_holm(comparison), path)
    return path


def with_holm(comparison: pd.DataFrame) -> pd.DataFrame:
    """``comparison`` with ``p_holm`` after ``p_value``: Holm's adjustment within each ``metric`` (the family: a
    figure's tests of one metric, every task, macro, pair and K); NaN where ``p_value`` is."""
    out = comparison.drop(columns="p_holm", errors="ignore").reset_index(drop=True)
    if "p_value" not in out:
        return out
    holm = pd.Series(np.nan, index=out.index)
    for _, family in (out.groupby("metric", sort=False) if "metric" in out else [(None, out)]):
        holm[family.index] = holm_adjust(pd.to_numeric(family["p_value"], errors="coerce"))
    out.insert(out.columns.get_loc("p_value") + 1, "p_holm", holm)
    return out
