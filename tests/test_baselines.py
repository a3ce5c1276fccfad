"""The training-free reference: window histograms + logistic regression, checked against NumPy/sklearn."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from fmct_lib.downstream.histogram import C_GRID, fit_histogram_classifier, window_histograms


def test_window_histograms_match_numpy_histogram_bin_edges_included():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 4, 5, 6, generator=g)
    x[0, 0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5, 0.25])  # bin edges: 1.0 closes the last bin
    x[1, 2, 0, 0, 0] = 1.7  # outside [0, 1] counts in the nearest end bin, as the clipped window would
    feats = window_histograms(x, bins=8)
    assert feats.shape == (3, 3 * 8)
    for n in range(3):
        expected = np.concatenate([np.histogram(x[n, c].clamp(0, 1).numpy(), bins=8, range=(0, 1))[0]
                                   for c in range(3)])
        np.testing.assert_allclose(feats[n], np.log1p(expected))
    with pytest.raises(ValueError, match="expected"):
        window_histograms(x[0])


def test_classifier_keeps_the_c_with_the_best_validation_auroc():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    X = rng.normal(size=(200, 12)) + 0.5 * y[:, None] * (np.arange(12) < 3)
    tr, va = slice(0, 120), slice(120, 200)
    model, chosen = fit_histogram_classifier(X[tr], y[tr], X[va], y[va])
    by_hand = {}
    for c in C_GRID:  # an independent loop: scaler and regression by hand
        sc = StandardScaler().fit(X[tr])
        lr = LogisticRegression(C=c, max_iter=5000).fit(sc.transform(X[tr]), y[tr])
        by_hand[c] = roc_auc_score(y[va], lr.predict_proba(sc.transform(X[va]))[:, 1])
    assert chosen["val_auroc"] == pytest.approx(by_hand)
    assert chosen["C"] == max(C_GRID, key=lambda c: (by_hand[c], -c))  # first of the best
    sc = StandardScaler().fit(X[tr])
    lr = LogisticRegression(C=chosen["C"], max_iter=5000).fit(sc.transform(X[tr]), y[tr])
    np.testing.assert_allclose(model.predict_proba(X[va]), lr.predict_proba(sc.transform(X[va])))


def test_classifier_without_validation_and_with_one_class():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 4)), np.r_[np.ones(15), np.zeros(15)]
    _, chosen = fit_histogram_classifier(X, y, X[:5], np.ones(5))  # one-class validation: not scored
    assert chosen == {"C": max(C_GRID), "val_auroc": None}
    with pytest.raises(ValueError, match="one class"):
        fit_histogram_classifier(X, np.ones(30))
