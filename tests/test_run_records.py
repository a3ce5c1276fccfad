"""Where every model of a figure stopped, written beside it (``report.run_records``): one row per trained run,
whatever the number of scans it predicted or sites it was tested on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmct_lib.report.run_records import save_runs, stopping_table


def _predictions() -> pd.DataFrame:
    """Two seeds of a fine-tuned ICH classifier, each predicting 3 internal and 2 external scans (one run tested
    on two sites), a linear probe (L-BFGS) and a histogram reference without training steps."""
    rows = []
    for seed, (stopped, best, auc) in enumerate([(1750, 1000, 0.81), (2300, 1550, 0.84)]):
        for site, n in (("site=internal", 3), ("site=external", 2)):
            rows += [dict(scan_id=f"{site}-{i}", task="ich", protocol="finetune", seed=seed, k=np.nan,
                          dataset="synthetic", train_filter="site=internal", eval_filter=site,
                          stop_reason="rule: 15 epochs without improvement", stopped_step=stopped, best_step=best,
                          best_val_auroc=auc) for i in range(n)]
    rows += [dict(scan_id=f"s{i}", task="ich", protocol="linear", seed=0, k=np.nan, dataset="synthetic",
                  train_filter="site=internal", eval_filter="site=internal",
                  stop_reason="L-BFGS converged", stopped_step=37, best_step=np.nan, best_val_auroc=0.7)
             for i in range(3)]
    rows += [dict(scan_id=f"s{i}", task="ich", protocol="histogram", seed=0, k=np.nan, dataset="synthetic",
                  train_filter="site=internal", eval_filter="site=internal", stop_reason="", stopped_step=np.nan,
                  best_step=np.nan, best_val_auroc=np.nan) for i in range(3)]
    return pd.DataFrame(rows).assign(probability=0.5, label=1)


def test_one_row_per_trained_run_with_where_and_why_it_stopped(tmp_path):
    predictions = _predictions()
    table = stopping_table(predictions)
    # brute force: the distinct (protocol, seed) pairs, each with its own stop record
    expected = predictions.groupby(["protocol", "seed"], sort=True)[["stop_reason", "stopped_step"]].first()
    assert len(table) == len(expected) == 4
    got = table.set_index(["protocol", "seed"])[["stop_reason", "stopped_step"]].sort_index()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert list(table.columns) == ["protocol", "task", "k", "seed", "dataset", "train_filter", "stop_reason",
                                   "stopped_step", "best_step", "best_val_auroc"]
    path = save_runs("fig1e_test", predictions, root=tmp_path)
    assert path == tmp_path / "fig1e_test_runs.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path, keep_default_na=False, na_values=[""]).fillna({"stop_reason": ""}),
                                  table.fillna({"stop_reason": ""}), check_dtype=False)


def test_predictions_without_a_stop_record_are_refused():
    with pytest.raises(ValueError, match="no stop_reason column"):
        stopping_table(_predictions().drop(columns="stop_reason"))
