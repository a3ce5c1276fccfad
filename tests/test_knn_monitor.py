"""The pretraining monitor (``train/monitor.py``): which scans it reads (internal training and validation only,
never test or the external site), which tasks it scores, and its value against a brute-force weighted kNN."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fmct_lib.train import monitor as monitor_module
from fmct_lib.train.monitor import KnnMonitor


def _scans(seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Internal train/val/test and external scans; ``ich`` learnable from the features, ``rare`` with 3 positives
    in validation (too few to score), ``unread`` never labelled; features (8-D) per scan."""
    rng = np.random.default_rng(seed)
    rows = [(f"{split}{i}", split, site) for site, sizes in (("internal", (40, 24, 12)), ("external", (10, 10, 10)))
            for split, n in zip(("train", "val", "test"), sizes) for i in range(n)]
    scans = pd.DataFrame(rows, columns=["scan_id", "split", "site"])
    scans["scan_id"] = scans["scan_id"] + "_" + scans["site"]
    scans["ich"] = rng.integers(0, 2, len(scans)).astype(float)
    scans["rare"] = 0.0
    scans.loc[scans.index[scans.split.eq("val") & scans.site.eq("internal")][:3], "rare"] = 1.0
    scans.loc[scans.index[scans.split.eq("train") & scans.site.eq("internal")][:10], "rare"] = 1.0
    scans["unread"] = np.nan
    scans.loc[3, "ich"] = np.nan  # a scan without this label: left out of the task's vote and score
    features = {s: rng.normal(size=8) + 1.5 * (0 if np.isnan(y) else y) * np.eye(8)[0]
                for s, y in zip(scans.scan_id, scans.ich)}
    return scans, features


class _Source:
    def __init__(self, rows, features):
        self.rows, self.features = rows, features

    def batches(self, indices, batch_size, device=None):
        ids = self.rows.scan_id.to_numpy()[list(indices)]
        for s in range(0, len(ids), batch_size):
            yield torch.tensor(np.stack([self.features[i] for i in ids[s:s + batch_size]]), dtype=torch.float32)


@pytest.fixture
def read(monkeypatch):
    """Replaces the cache reader; records every scan the monitor asks for."""
    scans, features = _scans()
    asked = []

    def volume_source(dataset, rows, spec, num_workers=0):
        asked.extend(rows.scan_id)
        return _Source(rows.reset_index(drop=True), features), rows.reset_index(drop=True)

    monkeypatch.setattr("fmct_lib.data.inputs.volume_source", volume_source)
    return scans, asked


def _brute_force_knn(train_x, train_y, query_x, k=monitor_module.K, temperature=monitor_module.TEMPERATURE):
    out = []
    for q in query_x:
        sims = [float(q @ t / np.linalg.norm(q) / np.linalg.norm(t)) for t in train_x]
        top = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        weights = [np.exp(sims[j] / temperature) for j in top]
        out.append(sum(w * train_y[j] for w, j in zip(weights, top)) / sum(weights))
    return np.array(out)


def test_the_monitor_reads_internal_train_and_val_only_and_scores_a_brute_force_knn(read):
    scans, asked = read
    monitor = KnnMonitor("synthetic", scans, ["ich", "rare", "unread"], spec=None)
    assert monitor.tasks == ["ich"]        # rare: 3 positives in validation (< MIN_CLASS); unread: no labels
    internal = scans[scans.site == "internal"]
    assert sorted(asked) == sorted(internal[internal.split.isin(["train", "val"])].scan_id)  # no test, no external
    value = monitor(torch.nn.Identity())["knn_auroc"]
    _, features = _scans()
    train, val = (internal[(internal.split == s) & internal.ich.notna()] for s in ("train", "val"))
    scores = _brute_force_knn([features[i] for i in train.scan_id], train.ich.to_numpy(),
                              [features[i] for i in val.scan_id])
    assert value == pytest.approx(roc_auc_score(val.ich.astype(int), scores), abs=1e-6)
    assert value > 0.7   # the features carry ich


def test_without_a_scorable_task_the_monitor_reads_nothing_and_says_nan(read):
    scans, asked = read
    monitor = KnnMonitor("synthetic", scans, ["rare", "unread"], spec=None)
    assert monitor.tasks == [] and asked == []
    assert np.isnan(monitor(torch.nn.Identity())["knn_auroc"])
    internal = scans[scans.site == "internal"]
    counts = {(s, v): int((internal[internal.split == s].rare == v).sum()) for s in ("train", "val") for v in (1, 0)}
    assert monitor.unscored == (  # what pretrain says once, instead of a NaN every epoch with no reason
        "the validation kNN AUROC of 'synthetic' is not computed while pretraining: no task has 5 positive and 5 "
        f"negative scans in both the training and the validation split (rare: train {counts['train', 1]}+/"
        f"{counts['train', 0]}−, val {counts['val', 1]}+/{counts['val', 0]}−; unread: train 0+/0−, val 0+/0−)")
    assert KnnMonitor("synthetic", scans, ["ich"], spec=None).unscored == ""


def test_the_monitor_scores_a_fixed_subset_of_a_large_validation_split(read, monkeypatch):
    """At most MAX_VAL validation scans (and MAX_TRAIN training scans), the same ones for a seed."""
    scans, asked = read
    internal = scans[scans.site == "internal"]
    n_val = int((internal.split == "val").sum())
    monkeypatch.setattr(monitor_module, "MAX_VAL", n_val - 3)
    first = KnnMonitor("synthetic", scans, ["ich"], spec=None, seed=1)
    again = KnnMonitor("synthetic", scans, ["ich"], spec=None, seed=1)
    assert len(first.val_rows) == n_val - 3 and list(first.val_rows.scan_id) == list(again.val_rows.scan_id)
    assert set(first.val_rows.scan_id) <= set(internal[internal.split == "val"].scan_id)


def test_the_monitor_watches_the_tasks_the_notebooks_evaluate_on_the_dataset(isolated_roots):
    """RSNA: the paper's five, not its EDH; a hospital's own tasks, none of them the paper's: those tasks."""
    from fmct_lib.data.manifest import register_dataset
    from fmct_lib.train.monitor import monitor_tasks
    rsna = pd.DataFrame(columns=["scan_id", "split", "ich", "edh", "iph", "ivh", "sah", "sdh"])
    assert monitor_tasks("rsna", rsna) == ["ich", "iph", "ivh", "sah", "sdh"]
    assert monitor_tasks("rsna", rsna.drop(columns="sah")) == ["ich", "iph", "ivh", "sdh"]  # no column, no task
    register_dataset("hosp", description="a hospital's own", tasks=["stroke", "ich"])
    assert monitor_tasks("hosp", pd.DataFrame(columns=["scan_id", "stroke", "ich"])) == ["ich"]
    register_dataset("hosp2", description="a hospital's own", tasks=["stroke"])
    assert monitor_tasks("hosp2", pd.DataFrame(columns=["scan_id", "stroke"])) == ["stroke"]
    unlisted = pd.DataFrame(columns=["scan_id", "stroke", "sah", "ich"])  # a scan table the registry lacks
    assert monitor_tasks("unlisted", unlisted) == ["sah", "ich"]
