"""A figure's comparisons, written beside it: ours (difference, 95% bootstrap CI, paired permutation p) and
the paper's where it gives the same comparison.

``evaluate.paired_comparison`` computes a comparison of two models on the same scans; ``with_paper`` adds the
paper's numbers for the same pair (``paper_values.csv``: the two models' values and the relative improvement
it reports), and ``save_comparison`` writes ``<figures>/<name>_comparison.csv``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_write_csv
from ..paths import figures_root

__all__ = ["with_paper", "save_comparison"]


def with_paper(comparison: pd.DataFrame, paper: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """``comparison`` (rows with ``model_a``, ``model_b``, ``task``, ``metric``) with the paper's ``paper_a``,
    ``paper_b`` and ``paper_relative_pct`` where ``paper`` (rows of ``paper_values.csv``) holds them; ``names``
    maps our model names to the paper's (e.g. ``{"in-domain fine-tuned": "finetune"}``). Empty elsewhere."""
    names = names or {}
    values = {(r.task, r.metric, r.model): r.value for r in paper.itertuples(index=False)}
    out = comparison.copy()
    if out.empty:
        return out.assign(paper_a=None, paper_b=None, paper_relative_pct=None)

    def paper_value(row, side):
        return values.get((row["task"], row["metric"], names.get(row[side], row[side])))

    out["paper_a"] = out.apply(lambda r: paper_value(r, "model_a"), axis=1)
    out["paper_b"] = out.apply(lambda r: paper_value(r, "model_b"), axis=1)
    out["paper_relative_pct"] = out.apply(lambda r: values.get(
        (r["task"], "relative_improvement_pct",
         f"{names.get(r['model_a'], r['model_a'])}_vs_{names.get(r['model_b'], r['model_b'])}"))
        if r["metric"] == "auroc" else None, axis=1)
    return out


def save_comparison(name: str, comparison: pd.DataFrame, root: Path | str | None = None) -> Path:
    """Write ``<root>/<name>_comparison.csv`` (root: the figures root), atomically; returns its path."""
    path = Path(root or figures_root()) / f"{name}_comparison.csv"
    atomic_write_csv(comparison, path)
    return path
