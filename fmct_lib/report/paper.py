"""The paper's reported values, each with its source and a verbatim quote (``paper_values.csv``).

Zhu et al., Nat. Biomed. Eng. 2026: the macro-AUCs of Fig. 1e–g, the few-shot claim of Fig. 2 and the
retrieval gains of Fig. 3. They are always shown as the paper's, with the paper's dataset named: on the
synthetic cohort they are a reference point, not a target.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["PAPER_VALUES_PATH", "PAPER_DATASET_NAMES", "load_paper_values", "paper_values_for"]

PAPER_VALUES_PATH = Path(__file__).with_name("paper_values.csv")
PAPER_DATASET_NAMES = {
    "nyu_langone": "NYU Langone", "nyu_long_island": "NYU Long Island", "rsna": "RSNA", "cq500": "CQ500",
}


def load_paper_values(path: Path | str | None = None) -> pd.DataFrame:
    """The paper-reported numbers with their source (figure, section, verbatim quote)."""
    path = Path(path) if path else PAPER_VALUES_PATH
    df = pd.read_csv(path, dtype={"k": "Int64"})
    required = {"figure", "dataset", "task", "metric", "model", "relation", "value", "source"}
    missing = required - set(df.columns)
    if missing:
        raise ValueError(f"{path}: paper values lack columns {sorted(missing)}")
    bad = df[~df["relation"].isin(["=", ">", "<"])]
    if not bad.empty:
        raise ValueError(f"{path}: relation must be '=', '>' or '<' (row {bad.index[0] + 2})")
    return df


def paper_values_for(figure: str | None = None, dataset: str | None = None, metric: str | None = None,
                     *, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of the paper's values matching the given figure / dataset / metric (None = any)."""
    df = load_paper_values() if paper is None else paper
    keep = pd.Series(True, index=df.index)
    for column, wanted in (("figure", figure), ("dataset", dataset), ("metric", metric)):
        if wanted is not None:
            keep &= df[column] == wanted
    return df[keep].reset_index(drop=True)
