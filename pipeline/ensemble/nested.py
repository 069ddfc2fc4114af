"""Fitted choices scored honestly: fit on the other folds' out-of-fold rows, apply to the held fold.

A choice fitted on out-of-fold (OOF) rows (blend weights, a logit-adjustment tau, a stacking model) and
scored on those same rows reports a gain that is partly the fit to their noise. Nested, each fold's
rows are scored with what was fitted on the *other* folds only, so no row ever helps fit its own
prediction; the average over the folds is what the choice earns on rows it has not seen.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["fit_per_fold", "apply_per_fold", "nested_probs"]


def fit_per_fold(folds, fit: Callable[[np.ndarray], object]) -> dict:
    """``{fold: fit(rows of the other folds)}``: `fit` gets a boolean row mask that excludes the fold.

    >>> fit_per_fold([0, 0, 1, 1, 2], lambda rest: np.flatnonzero(rest).tolist())
    {0: [2, 3, 4], 1: [0, 1, 4], 2: [0, 1, 2, 3]}
    """
    folds = np.asarray(folds)
    keys = np.unique(folds)
    if len(keys) < 2:
        raise ValueError(f"nested scoring needs rows from two or more folds, got folds {keys.tolist()}")
    return {k.item(): fit(folds != k) for k in keys}


def apply_per_fold(folds, fitted: dict, apply: Callable[[object, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each fold's rows from ``apply(fitted[fold], its row mask)``, assembled in row order.

    >>> apply_per_fold([0, 1, 0], {0: 10, 1: 20}, lambda f, held: np.full(held.sum(), f))
    array([10, 20, 10])
    """
    folds = np.asarray(folds)
    missing = sorted(set(np.unique(folds).tolist()) - set(fitted))
    if missing:
        raise ValueError(f"nothing was fitted for fold(s) {missing}")
    out = None
    for k, model in fitted.items():
        held = folds == k
        part = np.asarray(apply(model, held))
        if out is None:
            out = np.empty((len(folds),) + part.shape[1:], dtype=part.dtype)
        out[held] = part
    return out


def nested_probs(probs, y, folds, fit) -> tuple[np.ndarray, dict]:
    """Each fold's rows of `probs` (N, C) transformed by what `fit` chose on the other folds' rows.

    `fit(p_rest, y_rest)` returns ``(transform, choice)``; the result is the transformed (N, C)
    probabilities and ``{fold: choice}``. The held fold's labels are never passed to `fit`.

    >>> def fit(p, y):
    ...     return (lambda q: q * 0 + len(y)), len(y)
    >>> out, choices = nested_probs(np.zeros((5, 2)), np.zeros(5, int), np.array([0, 0, 1, 1, 1]), fit)
    >>> choices, out[:, 0].tolist()
    ({0: 3, 1: 2}, [3.0, 3.0, 2.0, 2.0, 2.0])
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    fitted = fit_per_fold(folds, lambda rest: fit(p[rest], y[rest]))
    out = apply_per_fold(folds, fitted, lambda f, held: f[0](p[held]))
    return out, {k: f[1] for k, f in fitted.items()}
