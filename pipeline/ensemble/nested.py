"""Fitted choices scored honestly: fit on the other folds' out-of-fold rows, apply to the held fold.

A choice fitted on out-of-fold (OOF) rows (blend weights, a logit-adjustment tau, a stacking model) and
scored on those same rows reports a gain that is partly the fit to their noise. Nested, each fold's
rows are scored with what was fitted on the *other* folds only, so no row ever helps fit its own
prediction; the average over the folds is what the choice earns on rows it has not seen.
:class:`pipeline.ensemble.chain.Nested` is built on these two helpers: the package's one nested loop.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["fit_per_fold", "apply_per_fold"]


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


def apply_per_fold(folds, fitted: dict, apply: Callable[[object, np.ndarray], np.ndarray], axis: int = 0) -> np.ndarray:
    """Each fold's rows from ``apply(fitted[fold], its row mask)``, assembled in row order along `axis`
    (the rows' axis of what `apply` returns; -2 for probabilities (..., rows, classes)).

    >>> apply_per_fold([0, 1, 0], {0: 10, 1: 20}, lambda f, held: np.full(held.sum(), f))
    array([10, 20, 10])
    >>> apply_per_fold([0, 1, 0], {0: 1, 1: 2}, lambda f, held: np.full((2, held.sum(), 1), f), axis=-2)[0, :, 0]
    array([1, 2, 1])
    """
    folds = np.asarray(folds)
    missing = sorted(set(np.unique(folds).tolist()) - set(fitted))
    if missing:
        raise ValueError(f"nothing was fitted for fold(s) {missing}")
    out = None
    for k, model in fitted.items():
        held = folds == k
        part = np.moveaxis(np.asarray(apply(model, held)), axis, 0)
        if out is None:
            out = np.empty((len(folds),) + part.shape[1:], dtype=part.dtype)
        out[held] = part
    return np.moveaxis(out, 0, axis)
