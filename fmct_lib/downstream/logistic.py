"""Logistic regression solved to convergence, and the record of whether it was: the linear probe (paper, Methods)
and the histogram reference both fit scikit-learn's L-BFGS logistic regression for each C of a grid and keep
the C with the best validation AUROC (``choose_c``). Their runs record, like every deep run, where and why they
stopped (``lbfgs_stopping``): the solver's iterations, and "converged (L-BFGS)" or "cap: L-BFGS iterations"."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline

from ..evaluate.metrics import auroc

__all__ = ["choose_c", "fit_to_convergence", "lbfgs_stopping"]


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
    solver = fitted[-1] if isinstance(fitted, Pipeline) else fitted
    iterations = int(solver.n_iter_.max())
    return fitted, iterations, iterations < max_iter and not unsolved


def choose_c(estimator_for: Callable[[float], object], c_grid: Sequence[float], x, y, val_x, val_labels,
             max_iter: int, what: str) -> tuple[float, object, dict]:
    """``estimator_for(C)`` fitted to convergence on ``(x, y)`` for each C of ``c_grid``, the first C with the best
    AUROC on ``(val_x, val_labels)`` kept (without a two-class validation set, the largest C: the weakest
    regularisation) → ``(C, fitted, record)``, ``record`` = ``{"val_auroc": {C: AUROC} or None, "iterations":
    {C: L-BFGS iterations}, "converged": {C: bool}}``. A C left unsolved is warned about, naming ``what``."""
    scored = val_x is not None and val_labels is not None and len(np.unique(val_labels)) == 2
    best, scores, iterations, converged = None, {}, {}, {}
    for c in c_grid:
        model, iterations[c], converged[c] = fit_to_convergence(estimator_for(c), x, y, max_iter)
        scores[c] = auroc(val_labels, model.predict_proba(val_x)[:, 1]) if scored else float(c)
        if best is None or scores[c] > scores[best[0]]:
            best = (c, model)
    if not all(converged.values()):
        warnings.warn(f"{what}: L-BFGS did not converge in {max_iter} iterations for C = "
                      f"{[c for c, ok in converged.items() if not ok]} (the run's choice records it per C)",
                      stacklevel=3)
    return best[0], best[1], {"val_auroc": scores if scored else None, "iterations": iterations,
                              "converged": converged}


def lbfgs_stopping(choice: dict) -> dict:
    """The stopping record of the fit ``choice`` kept (``{"C": C, **record}`` of ``choose_c``), with the keys of a
    deep run's (``training.Stopping``): its ``stopped_step`` counts solver iterations, not training steps (the
    reason says so)."""
    c, scores = choice["C"], choice["val_auroc"]
    return {"reason": "converged (L-BFGS)" if choice["converged"][c] else "cap: L-BFGS iterations",
            "stopped_epoch": None, "stopped_step": choice["iterations"][c], "best_epoch": None, "best_step": None,
            "best_val_auroc": scores[c] if scores else None, "patience": None, "max_epochs": None,
            "steps_per_epoch": None}
