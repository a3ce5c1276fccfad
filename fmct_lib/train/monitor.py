"""Watch learning while it happens: a kNN score of the frozen encoder on the validation split, every epoch.

A pretraining run that learns nothing looks healthy in its loss; it shows in what the encoder's features
separate. At step 0 (the randomly initialised encoder: the reference every later row is read against) and at
the end of every epoch, the monitor embeds a fixed set of labelled training scans and of validation scans
(at most ``MAX_TRAIN`` and ``MAX_VAL``; evaluation view, cls token), and scores each validation scan by the weighted vote of its ``k`` nearest
training scans in cosine similarity, weights ``exp(sim / T)`` (the kNN classifier of DINO, Caron et al.
2021, §4.1, k = 20, T = 0.07). The logged value is the macro AUROC over the tasks with at least
``MIN_CLASS`` positives and negatives in both sets. Labels are read here and nowhere else in pretraining;
test scans are never read.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..precision import infer

__all__ = ["KnnMonitor", "knn_scores", "monitor_tasks"]

K, TEMPERATURE = 20, 0.07  # DINO's kNN
MIN_CLASS = 5              # positives and negatives a task needs in both sets to be scored
MAX_TRAIN = 600            # labelled training scans embedded (a seeded, fixed subset when there are more)
# validation scans scored (likewise): under torchrun the monitor runs on rank 0 while the other processes wait at
# their next collective, so a large validation split (27,000 scans at NYU's size) must not hold them for minutes
MAX_VAL = 2000


def monitor_tasks(dataset: str, scans: pd.DataFrame) -> list[str]:
    """The tasks watched while ``dataset`` pretrains: those the notebooks evaluate on it by default
    (``data.manifest.paper_tasks``: RSNA's five, CQ500's ten, the synthetic cohort's ten, a hospital's own)
    that its scan table has a column for. A scan table the registry does not list: the paper's ten."""
    from ..data.manifest import PAPER_TASKS, paper_tasks
    try:
        wanted = paper_tasks(dataset)
    except KeyError:
        wanted = PAPER_TASKS
    return [t for t in wanted if t in scans.columns]


def knn_scores(train_features: torch.Tensor, train_labels: np.ndarray, query_features: torch.Tensor,
               k: int = K, temperature: float = TEMPERATURE) -> np.ndarray:
    """Weighted kNN score (the weighted share of positive neighbours) of each query, (n_query,).

    Similarity is cosine; the ``k`` most similar training rows vote with weight ``exp(sim / temperature)``."""
    sim = F.normalize(query_features.float(), dim=1) @ F.normalize(train_features.float(), dim=1).T
    top, idx = sim.topk(min(k, sim.shape[1]), dim=1)
    weights = (top / temperature).exp()
    votes = torch.tensor(np.asarray(train_labels, dtype=np.float32))[idx]  # a copy: pandas arrays are read-only
    return ((weights * votes).sum(1) / weights.sum(1)).numpy()


class KnnMonitor:
    """``monitor(encoder) -> {"knn_auroc": float}`` (NaN when no task can be scored) on a dataset's splits."""

    def __init__(self, dataset: str, scans: pd.DataFrame, tasks: list[str], spec, seed: int = 0):
        from ..data.inputs import volume_source
        labelled = scans[scans[tasks].notna().any(axis=1)] if tasks else scans.iloc[:0]
        if "site" in labelled.columns:
            labelled = labelled[labelled["site"] != "external"]
        train = labelled[labelled["split"] == "train"]
        if len(train) > MAX_TRAIN:
            train = train.sample(MAX_TRAIN, random_state=seed)
        val = labelled[labelled["split"] == "val"]
        if len(val) > MAX_VAL:
            val = val.sample(MAX_VAL, random_state=seed)
        self.tasks = [t for t in tasks if all(
            min((part[t] == 1).sum(), (part[t] == 0).sum()) >= MIN_CLASS for part in (train, val))]
        counts = "; ".join(f"{t}: train {int((train[t] == 1).sum())}+/{int((train[t] == 0).sum())}−, val "
                           f"{int((val[t] == 1).sum())}+/{int((val[t] == 0).sum())}−" for t in tasks[:5])
        # why nothing is scored, said once by ``pretrain`` (the log's knn_auroc column is then empty)
        self.unscored = "" if self.tasks else (
            f"the validation kNN AUROC of {dataset!r} is not computed while pretraining: no task has {MIN_CLASS} "
            f"positive and {MIN_CLASS} negative scans in both the training and the validation split"
            + (f" ({counts}{'; …' if len(tasks) > 5 else ''})" if tasks else " (it has no labelled task)"))
        self.train_rows, self.val_rows, self.sources = train, val, None
        if self.tasks:
            self.sources = [volume_source(dataset, part, spec) for part in (train, val)]
            self.train_rows, self.val_rows = (rows for _, rows in self.sources)

    @torch.no_grad()
    def _embed(self, encoder, source, device) -> torch.Tensor:
        src, rows = source
        return torch.cat(infer(encoder, src.batches(range(len(rows)), 32, device), device))

    def __call__(self, encoder, device="cpu") -> dict:
        if not self.tasks:
            return {"knn_auroc": float("nan")}
        was_training = encoder.training
        encoder.eval()
        try:
            train_f, val_f = (self._embed(encoder, s, device) for s in self.sources)
        finally:
            encoder.train(was_training)
        aurocs = []
        for t in self.tasks:
            tr, va = (rows[t].notna().to_numpy(copy=True) for rows in (self.train_rows, self.val_rows))  # writable
            scores = knn_scores(train_f[tr], self.train_rows[t].to_numpy()[tr].astype(float), val_f[va])
            aurocs.append(roc_auc_score(self.val_rows[t].to_numpy()[va].astype(int), scores))
        return {"knn_auroc": float(np.mean(aurocs))}
