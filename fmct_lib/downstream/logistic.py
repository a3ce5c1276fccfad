"""Logistic regression solved to convergence, and the record of whether it was: the linear probe (paper, Methods)
and the histogram reference both fit scikit-learn's L-BFGS logistic regression for each C of a grid and keep
the C with the best validation AUROC. Their runs record, like every deep run, where and why they stopped
(``lbfgs_stopping``): the solver's iterations, and "converged (L-BFGS)" or "cap: L-BFGS iterations"."""
from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning

__all__ = ["fit_to_convergence", "lbfgs_stopping"]


def fit_to_convergence(estimator, x, y, max_iter: int):
    """``estimator.fit(x, y)`` (a ``LogisticRegression`` with ``max_iter``, or a pipeline ending in one) with
    scikit-learn's ``ConvergenceWarning`` caught → ``(fitted, iterations, converged)``: converged where the
    solver stopped before ``max_iter`` without that warning. Every other warning goes on as it came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fitted = estimator.fit(x, y)
    unsolved = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if w not in unsolved:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    iterations = int(getattr(fitted, "steps", [(None, fitted)])[-1][1].n_iter_.max())
    return fitted, iterations, iterations < max_iter and not unsolved


def lbfgs_stopping(converged: bool, iterations: int, best_val_auroc: float | None) -> dict:
    """A logistic fit's stopping record, with the keys of a deep run's (``training.Stopping``): its
    ``stopped_step`` counts solver iterations, not training steps (the reason says so)."""
    return {"reason": "converged (L-BFGS)" if converged else "cap: L-BFGS iterations", "stopped_epoch": None,
            "stopped_step": iterations, "best_epoch": None, "best_step": None, "best_val_auroc": best_val_auroc,
            "patience": None, "max_epochs": None, "steps_per_epoch": None}
