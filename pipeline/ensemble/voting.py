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

:func:`vote` dispatches on the config key ``ensemble.voting`` and returns class indices;
:func:`vote_scores` returns the (N, C) scores behind it (the vote shares for ``hard``).

Fitted weights and the decision rule, on out-of-fold (OOF) probabilities:

:func:`fit_weights`    non-negative weights summing to 1 for a weighted soft vote of M members
                       (experiments or checkpoints, NOT the folds of one experiment: each OOF
                       row has one fold's prediction), fitted by minimising the OOF log-loss
:func:`logit_adjust`   post-hoc logit adjustment ``p_adj ∝ p / prior**tau`` (Menon et al. 2021):
                       tau > 0 moves decisions towards rare classes
:func:`choose_tau`     the tau of a grid that maximises OOF macro-F1 (ties: the smallest tau)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from pipeline.metrics import log_loss as _log_loss, metric_gain

__all__ = ["VOTING_MODES", "soft_vote", "vote_shares", "hard_vote", "geometric_vote", "rank_average", "vote", "vote_scores",
           "WEIGHT_OBJECTIVES", "DEFAULT_TAU_GRID", "log_loss", "fit_weights", "class_priors", "logit_adjust",
           "choose_tau"]

VOTING_MODES = ("soft", "hard", "geometric", "rank")

# Floor for probabilities before taking logs: one fold's exact 0 must not veto a class outright
# (and 0 * log 0 would be NaN for a zero-weight fold).
_LOG_FLOOR = 1e-15
# Vote shares closer than this are a tie (round-off of summed fold weights, not a real majority).
_TIE = 1e-9


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


def vote_shares(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """The share of the (weighted) folds whose argmax is each class: (F, N, C) -> (N, C), rows sum to 1.

    >>> vote_shares([[[0.6, 0.4]], [[0.6, 0.4]], [[0.1, 0.9]], [[0.3, 0.7]]])
    array([[0.5, 0.5]])
    """
    p = _check_probs(probs)
    n_folds, n_rows, n_classes = p.shape
    w = _check_weights(weights, n_folds)
    shares = np.zeros((n_rows, n_classes))
    picks = p.argmax(axis=2)  # (F, N)
    for k in range(n_folds):
        np.add.at(shares, (np.arange(n_rows), picks[k]), w[k])
    return shares


def hard_vote(probs, weights: Sequence[float] | None = None) -> np.ndarray:
    """Majority vote of the folds' argmax classes: (F, N, C) -> (N,) class indices.

    A fold's vote counts its weight (1 each by default). When classes tie on votes, the tied class
    with the highest soft-vote probability wins (then the lowest index). Below, folds 0-1 vote
    class 0 and folds 2-3 vote class 1; the tie goes to class 1, whose mean probability is higher.

    >>> hard_vote([[[0.6, 0.4]], [[0.6, 0.4]], [[0.1, 0.9]], [[0.1, 0.9]]])
    array([1])
    """
    p = _check_probs(probs)
    shares = vote_shares(p, weights)
    tied = np.isclose(shares, shares.max(axis=1, keepdims=True), rtol=0.0, atol=_TIE)
    soft = np.tensordot(_check_weights(weights, p.shape[0]), p, axes=1)
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
    if mode == "hard":
        return hard_vote(probs, weights)
    return vote_scores(probs, mode, weights).argmax(axis=1).astype(np.int64)


def vote_scores(probs, mode: str = "soft", weights: Sequence[float] | None = None) -> np.ndarray:
    """The (N, C) scores of a vote, whose order within a class column is what ROC-AUC scores.

    ``hard``: the vote shares (:func:`vote_shares`); their argmax is :func:`vote`'s choice except on
    ties, which the hard vote breaks by soft probability. The others: :func:`soft_vote`,
    :func:`geometric_vote`, :func:`rank_average`, whose argmax is always the vote.

    >>> vote_scores([[[0.6, 0.4]], [[0.6, 0.4]], [[0.0, 1.0]]], "hard").round(3)
    array([[0.667, 0.333]])
    """
    if mode not in VOTING_MODES:
        raise ValueError(f"ensemble.voting: unknown voting mode {mode!r}; valid modes: {', '.join(VOTING_MODES)}")
    if mode == "hard":
        return vote_shares(probs, weights)
    return _SCORERS[mode](probs, weights)


# ---- fitted weights ------------------------------------------------------------------------------

WEIGHT_OBJECTIVES = ("logloss", "f1", "metric")


def _normalise_rows(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=-1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[-1]), where=total > 0)


def _check_labels(y, n_rows: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n_rows,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n_rows} integer class indices, got shape {y.shape} ({y.dtype})")
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def log_loss(probs, y) -> float:
    """Mean negative log-probability of the true class, (N, C) rows renormalised, floored at 1e-15.

    >>> round(log_loss([[0.5, 0.5], [0.9, 0.1]], [0, 0]), 4)   # (ln 2 + ln 1/0.9) / 2
    0.3993
    """
    p = _check_probs(np.asarray(probs, dtype=np.float64)[None])[0]
    return _log_loss(_check_labels(y, p.shape[0], p.shape[1]), p)


def fit_weights(probs, y, objective: str = "logloss", metric: str = "f1_macro") -> np.ndarray:
    """Weights (M,) >= 0 summing to 1 for a weighted soft vote of the M members' OOF probabilities.

    `probs` is (M, N, C): every member's out-of-fold probabilities for the same N rows; `y` the N
    true class indices. Objectives:

    ``logloss`` (default) minimise the blend's OOF log-loss with SLSQP on the simplex. The
                log-loss of a mixture is convex in the weights, so the optimum is global and
                found reliably with the analytic gradient; it uses every row's full probability,
                not just which class wins, so it is stable and does not chase the noise of a
                few flipped argmaxes. This is the usual stacking objective.
    ``f1``      maximise OOF macro-F1 (the competition metric) with Nelder-Mead over
                softmax-parametrised weights. Macro-F1 is piecewise constant in the weights (no
                gradient), so the search is local and fits the OOF noise more easily.
    ``metric``  the same search on `metric` (``competition.metric``); the log-loss takes ``logloss``'s route.

    Either way the uniform weights are the starting point and are returned unless the fitted
    ones are strictly better on the objective, so the fitted blend is never worse than the
    uniform one on the data it was fitted on.

    >>> y = np.array([0, 1, 0, 1])
    >>> good = np.eye(2)[y] * 0.8 + 0.1             # right with 0.9 every time
    >>> bad = np.full((4, 2), 0.5)                  # no information
    >>> fit_weights([good, bad], y).round(3)
    array([1., 0.])
    """
    p = _check_probs(probs)
    n_members, n_rows, n_classes = p.shape
    y = _check_labels(y, n_rows, n_classes)
    if objective not in WEIGHT_OBJECTIVES:
        raise ValueError(f"objective: unknown {objective!r}; valid: {', '.join(WEIGHT_OBJECTIVES)}")
    uniform = np.full(n_members, 1.0 / n_members)
    if n_members == 1 or n_rows == 0:
        return uniform
    p = _normalise_rows(p)
    if objective == "metric" and metric == "log_loss":
        objective = "logloss"
    if objective == "logloss":
        true = p[:, np.arange(n_rows), y].T  # (N, M): each member's probability of the true class

        def loss(w):
            return float(-np.log(np.maximum(true @ w, _LOG_FLOOR)).mean())

        def grad(w):
            return -(true / np.maximum(true @ w, _LOG_FLOOR)[:, None]).mean(axis=0)

        res = minimize(loss, uniform, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * n_members,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)}],
                       options={"maxiter": 500, "ftol": 1e-12})
    else:
        def loss(w):
            return -metric_gain(target, y, np.tensordot(w, p, axes=1))

        target = "f1_macro" if objective == "f1" else metric

        def from_z(z):
            e = np.exp(z - z.max())
            return e / e.sum()

        res = minimize(lambda z: loss(from_z(z)), np.zeros(n_members), method="Nelder-Mead",
                       options={"maxiter": 200 * n_members, "xatol": 1e-3, "fatol": 1e-9,
                                "initial_simplex": np.vstack([np.zeros(n_members), 2.0 * np.eye(n_members)])})
        res.x = from_z(res.x)
    w = np.asarray(res.x, dtype=np.float64)
    w = np.where(w > 1e-9, w, 0.0)  # the optimiser's round-off below zero or at 1e-17 is a zero weight
    if not np.isfinite(w).all() or w.sum() <= 0:
        return uniform
    w = w / w.sum()
    return w if loss(w) < loss(uniform) else uniform


# ---- logit adjustment ----------------------------------------------------------------------------

DEFAULT_TAU_GRID = tuple(np.round(np.arange(0.0, 2.0001, 0.25), 2).tolist())  # 0, 0.25, ..., 2


def class_priors(y, n_classes: int) -> np.ndarray:
    """Class frequencies of the labels `y`, add-one smoothed so an absent class has a finite prior.

    >>> class_priors([0, 0, 0, 1], 2)
    array([0.66666667, 0.33333333])
    """
    y = _check_labels(y, len(np.asarray(y)), n_classes)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64) + 1.0
    return counts / counts.sum()


def logit_adjust(probs, prior, tau: float) -> np.ndarray:
    """``p / prior**tau``, renormalised over the last axis (classes); any leading shape.

    In logits this subtracts ``tau * log(prior)``: tau = 0 is the identity (the input is returned
    unchanged, as float64), tau = 1 is the balanced-error Bayes rule for a model of the training
    distribution. Computed in log space from probabilities floored at 1e-15.

    >>> logit_adjust([[0.6, 0.4]], [0.75, 0.25], 1.0).round(3)     # .6/.75 : .4/.25 = .8 : 1.6
    array([[0.333, 0.667]])
    """
    p = np.asarray(probs, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if p.ndim < 1 or prior.shape != (p.shape[-1],):
        raise ValueError(f"prior must have one entry per class ({p.shape[-1] if p.ndim else 0}), got {prior.shape}")
    if not np.isfinite(prior).all() or (prior <= 0).any():
        raise ValueError(f"prior must be positive and finite, got {prior.tolist()}")
    if not np.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    if tau == 0:
        return p.copy()
    logits = np.log(np.maximum(p, _LOG_FLOOR)) - tau * np.log(prior)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def choose_tau(probs, y, prior, grid: Sequence[float] = DEFAULT_TAU_GRID,
               combine=None, metric: str = "f1_macro") -> tuple[float, list[tuple[float, float]]]:
    """The tau of `grid` whose logit adjustment gives the best `metric` (default macro-F1) on (N, C) OOF `probs`.

    With `combine` (e.g. ``lambda p: vote_scores(p, "soft", w)``), `probs` is (M, N, C): every
    member is adjusted, then combined into (N, C) scores whose argmax is the decision. Returns ``(tau, [(tau, gain), ...])``
    over the sorted grid, gain = the metric signed so that higher is better (`metric_gain`); ties go to the smallest tau, so a flat curve keeps the plain argmax
    (tau = 0 when the grid has it).

    >>> y = np.array([0] * 8 + [1] * 2)                      # class 1 is rare ...
    >>> p = np.array([[0.9, 0.1]] * 8 + [[0.6, 0.4]] * 2)    # ... and always under-predicted
    >>> tau, curve = choose_tau(p, y, class_priors(y, 2), [0, 0.5, 1])
    >>> tau, [round(f, 3) for _, f in curve]              # 0.5 is the smallest tau that fixes them
    (0.5, [0.444, 1.0, 1.0])
    """
    grid = sorted({float(t) for t in grid})
    if not grid or any(not np.isfinite(t) or t < 0 for t in grid):
        raise ValueError(f"ensemble.tau_grid must be a non-empty list of numbers >= 0, got {grid}")
    p = _check_probs(np.asarray(probs, dtype=np.float64)[None] if combine is None else probs)
    y = _check_labels(y, p.shape[1], p.shape[2])
    combine = combine or (lambda q: q[0])
    curve = [(t, metric_gain(metric, y, combine(logit_adjust(p, prior, t)))) for t in grid]
    best = max(f for _, f in curve)
    return next(t for t, f in curve if f >= best - 1e-12), curve
