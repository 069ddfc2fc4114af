"""Combine the K folds' class probabilities into one prediction per row (plain numpy).

Every function takes ``probs`` of shape (F, N, C): F folds (models), N rows, C classes, finite
and non-negative (rows need not sum to 1). Optional ``weights`` (length F, non-negative, not all
zero) weight the folds; they are normalised, so only their ratios matter.

``soft``       weighted mean of the probabilities                         (:func:`soft_vote`)
``hard``       each fold votes its argmax; most votes wins; ties between classes go to the
               tied class with the highest soft-vote probability           (:func:`hard_vote`)
``geometric``  weighted geometric mean of the probabilities, renormalised (:func:`geometric_vote`)
``rank``       per class, each fold's scores replaced by their rank among the N rows, then
               averaged; scale-free, so folds with different calibration mix fairly; meant for
               AUC-like metrics (its argmax is a rough class choice)      (:func:`rank_average`)

:func:`vote` dispatches on the config key ``ensemble.voting`` and returns class indices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = ["VOTING_MODES", "soft_vote", "hard_vote", "geometric_vote", "rank_average", "vote"]

VOTING_MODES = ("soft", "hard", "geometric", "rank")

# Floor for probabilities before taking logs: one fold's exact 0 must not veto a class outright
# (and 0 * log 0 would be NaN for a zero-weight fold).
_LOG_FLOOR = 1e-15


def _check_probs(probs) -> np.ndarray:
    """`probs` as a float64 array (F, N, C), or a ValueError saying what is wrong."""
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"probs must be a numeric array of shape (folds, rows, classes): {err}") from None
    if arr.ndim != 3:
        raise ValueError(f"probs must be 3-D (folds, rows, classes), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[2] < 1:
        raise ValueError(f"probs needs at least one fold and one class, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"probs has {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf)")
    if (arr < 0).any():
        raise ValueError(f"probs must be non-negative, got minimum {arr.min():g}")
    return arr


def _check_weights(weights, n_folds: int) -> np.ndarray:
    """Fold weights as a float64 array of length `n_folds` summing to 1 (uniform when None).

    >>> _check_weights([1, 3], 2)
    array([0.25, 0.75])
    """
    if weights is None:
        return np.full(n_folds, 1.0 / n_folds)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"weights must be numbers, one per fold: {err}") from None
    if w.shape != (n_folds,):
        raise ValueError(f"weights must have one entry per fold ({n_folds}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def soft_vote(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the folds' probabilities: (F, N, C) -> (N, C).

    >>> soft_vote([[[0.8, 0.2]], [[0.4, 0.6]]]).round(3)
    array([[0.6, 0.4]])
    """
    p = _check_probs(probs)
    return np.tensordot(_check_weights(weights, p.shape[0]), p, axes=1)


def hard_vote(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """Majority vote of the folds' argmax classes: (F, N, C) -> (N,) class indices.

    A fold's vote counts its weight (1 each by default). When classes tie on votes, the tied class
    with the highest soft-vote probability wins (then the lowest index). Below, folds 0-1 vote
    class 0 and folds 2-3 vote class 1; the tie goes to class 1, whose mean probability is higher.

    >>> hard_vote([[[0.6, 0.4]], [[0.6, 0.4]], [[0.1, 0.9]], [[0.1, 0.9]]])
    array([1])
    """
    p = _check_probs(probs)
    n_folds, n_rows, n_classes = p.shape
    # Raw weights (not normalised), so default votes count as exact integers and ties are exact.
    w = np.ones(n_folds) if weights is None else _check_weights(weights, n_folds) * n_folds
    counts = np.zeros((n_rows, n_classes))
    picks = p.argmax(axis=2)  # (F, N)
    for k in range(n_folds):
        np.add.at(counts, (np.arange(n_rows), picks[k]), w[k])
    tied = np.isclose(counts, counts.max(axis=1, keepdims=True), rtol=1e-9, atol=0.0)
    soft = np.tensordot(_check_weights(weights, n_folds), p, axes=1)
    return np.where(tied, soft, -np.inf).argmax(axis=1).astype(np.int64)


def geometric_vote(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted geometric mean of the probabilities, renormalised per row: (F, N, C) -> (N, C).

    Probabilities are floored at 1e-15 first, so one fold's exact zero lowers a class sharply
    instead of vetoing it. A class needs every fold's support to score high.

    >>> geometric_vote([[[0.9, 0.1]], [[0.5, 0.5]]]).round(3)     # sqrt(.45) : sqrt(.05) = 3 : 1
    array([[0.75, 0.25]])
    """
    p = _check_probs(probs)
    log_mean = np.tensordot(_check_weights(weights, p.shape[0]), np.log(np.maximum(p, _LOG_FLOOR)), axes=1)
    g = np.exp(log_mean - log_mean.max(axis=1, keepdims=True))  # shift: stable, row max is 1
    return g / g.sum(axis=1, keepdims=True)


def rank_average(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """Average over folds of each class column's ranks among the rows: (F, N, C) -> (N, C) scores.

    Ranks are 1..N (ties get their average rank) divided by N, so scores lie in (0, 1]. Only the
    order of rows within a class column matters, which suits AUC-like metrics; the scores are not
    probabilities and rows do not sum to 1.

    >>> rank_average([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.1, 0.9]]])   # 2 folds, 2 rows
    array([[1. , 0.5],
           [0.5, 1. ]])
    """
    p = _check_probs(probs)
    if p.shape[1] == 0:
        return np.zeros(p.shape[1:])
    ranks = rankdata(p, method="average", axis=1) / p.shape[1]
    return np.tensordot(_check_weights(weights, p.shape[0]), ranks, axes=1)


_SCORERS = {"soft": soft_vote, "geometric": geometric_vote, "rank": rank_average}


def vote(probs, mode: str = "soft", weights: Sequence[float] | None = None) -> np.ndarray:
    """Class index per row, (F, N, C) -> (N,), by the voting `mode` (config key ``ensemble.voting``).

    >>> probs = [[[0.6, 0.4]], [[0.6, 0.4]], [[0.0, 1.0]]]      # 3 folds, 1 row, 2 classes
    >>> vote(probs, "hard"), vote(probs, "soft")
    (array([0]), array([1]))
    """
    if mode not in VOTING_MODES:
        raise ValueError(f"ensemble.voting: unknown voting mode {mode!r}; valid modes: {', '.join(VOTING_MODES)}")
    if mode == "hard":
        return hard_vote(probs, weights)
    return _SCORERS[mode](probs, weights).argmax(axis=1).astype(np.int64)
