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
    assert (chosen["C"], chosen["val_auroc"]) == (max(C_GRID), None)
    with pytest.raises(ValueError, match="one class"):
        fit_histogram_classifier(X, np.ones(30))


def test_classifier_records_the_solver_iterations_and_a_fit_left_unsolved(monkeypatch):
    """Each C's L-BFGS iterations are scikit-learn's own (an independent fit by hand), and a fit stopped by the
    iteration cap is recorded as unsolved and said so, never passed as converged."""
    from fmct_lib.downstream import histogram
    rng = np.random.default_rng(2)
    y = rng.random(150) < 0.5
    X = rng.normal(size=(150, 6)) + 1.5 * y[:, None]
    _, chosen = fit_histogram_classifier(X[:100], y[:100], X[100:], y[100:])
    for c in C_GRID:
        lr = LogisticRegression(C=c, max_iter=5000).fit(StandardScaler().fit_transform(X[:100]), y[:100])
        assert chosen["iterations"][c] == int(lr.n_iter_.max()) and chosen["converged"][c]
    monkeypatch.setattr(histogram, "MAX_ITER", 2)
    with pytest.warns(UserWarning, match=r"did not converge in 2 iterations for C = \[0.001, 0.01, 0.1, 1.0\]"):
        _, capped = fit_histogram_classifier(X[:100], y[:100], X[100:], y[100:])
    assert not any(capped["converged"].values()) and set(capped["iterations"].values()) == {2}
