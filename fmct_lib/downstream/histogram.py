"""A reference without deep learning: logistic regression on the histogram of each windowed channel.

Not in the paper. It answers a question the paper's data never raised but a synthetic or small cohort
does: how much of a task can be read from the intensities of the model input alone, at each label count?
If this baseline is at chance at some K, no model can be told apart from another there on this test set;
if a trained ViT stays below it, the ViT is undertrained, not the data uninformative.

Features: for each of the three window channels of the model input (values in [0, 1]), the counts of its
voxels in ``bins`` equal bins, as ``log(1 + count)``, standardised on the training scans. Classifier:
L2-regularised logistic regression (scikit-learn), the inverse strength ``C`` picked by validation AUROC
from ``C_GRID``, as the deep protocols pick their epoch.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..evaluate.metrics import auroc
from .logistic import choose_c

__all__ = ["C_GRID", "window_histograms", "fit_histogram_classifier"]

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER = 5000  # L-BFGS iterations


def window_histograms(x: torch.Tensor, bins: int = 32) -> np.ndarray:
    """(N, K, D, H, W) windowed inputs in [0, 1] → (N, K · bins) features ``log(1 + voxel count)`` per bin.

    Bins are equal on [0, 1], the last one closed, as ``numpy.histogram(v, bins, range=(0, 1))``."""
    x = torch.as_tensor(x)
    if x.ndim != 5:
        raise ValueError(f"window_histograms: expected (N, channels, D, H, W), got shape {tuple(x.shape)}")
    n, k = x.shape[:2]
    index = (x.reshape(n, k, -1).float().clamp(0.0, 1.0) * bins).long().clamp_(max=bins - 1)  # 1.0: last bin
    index += torch.arange(n * k).view(n, k, 1) * bins  # one block of bins per (scan, channel)
    counts = torch.bincount(index.reshape(-1), minlength=n * k * bins)
    return np.log1p(counts.view(n, k * bins).numpy().astype(np.float64))


def fit_histogram_classifier(train_features: np.ndarray, train_labels, val_features: np.ndarray | None = None,
                             val_labels=None, c_grid=C_GRID) -> tuple[Pipeline, dict]:
    """Standardise + logistic regression for each ``C`` in ``c_grid``; keep the best by validation AUROC.

    Without a two-class validation set the largest ``C`` (weakest regularisation) is kept. Returns the
    fitted pipeline and ``{"C": chosen, "val_auroc": {C: AUROC}, "iterations": {C: L-BFGS iterations},
    "converged": {C: bool}}`` (``logistic.choose_c``; a C left unsolved is warned about)."""
    y = np.asarray(train_labels).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("fit_histogram_classifier: the training labels hold one class only")
    c, model, record = choose_c(lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER)),
                                c_grid, train_features, y, val_features, val_labels, MAX_ITER, "histogram reference")
    return model, {"C": c, **record}
