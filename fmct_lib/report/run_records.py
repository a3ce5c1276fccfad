"""Where every model of a figure stopped training, written beside it (issue 23: "every run record shows its
stopping step and reason"): ``stopping_table`` reduces a sweep's predictions to one row per trained run (its
identity, ``stop_reason``, ``stopped_step``, ``best_step``, ``best_val_auroc``), and ``save_runs`` writes it as
``<figures>/<name>_runs.csv``, so the committed gallery shows the convergence rule was met without the run
folders, which stay on the machine that trained them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_write_csv
from ..paths import figures_root

__all__ = ["stopping_table", "save_runs", "STOP_COLUMNS"]

STOP_COLUMNS = ["stop_reason", "stopped_step", "best_step", "best_val_auroc"]
# what tells one trained run from another; where it was evaluated (eval_dataset, eval_filter, a figure's
# "evaluation") does not: a classifier tested on two sites is one run
RUN_KEYS = ["model", "method", "fraction", "protocol", "task", "k", "seed", "dataset", "train_filter"]


def stopping_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per trained run of ``predictions`` (a sweep's table, one row per scan): the ``RUN_KEYS`` it has,
    then ``STOP_COLUMNS`` (empty for a run that recorded none: the histogram reference's, stored before
    2026-12-07). A logistic fit's (linear probe, histogram reference) ``stopped_step`` counts L-BFGS iterations
    (its ``stop_reason`` says so), not training steps."""
    if "stop_reason" not in predictions:
        raise ValueError("these predictions carry no stop_reason column: they are not a sweep's table "
                         "(downstream.sweeps), so there is no record of where their runs stopped")
    keys = [c for c in RUN_KEYS if c in predictions]
    runs = predictions[keys + [c for c in STOP_COLUMNS if c in predictions]].drop_duplicates(keys)
    return runs.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def save_runs(name: str, predictions: pd.DataFrame, root: Path | str | None = None) -> Path:
    """Write ``<root>/<name>_runs.csv`` (root: the figures root), the ``stopping_table`` of ``predictions``,
    atomically; returns its path."""
    path = Path(root or figures_root()) / f"{name}_runs.csv"
    atomic_write_csv(stopping_table(predictions), path)
    return path
