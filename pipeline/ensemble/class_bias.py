"""Per-class bias fitted on out-of-fold probabilities, and the nested estimate of what it gains.

``p_adj ∝ p · exp(b)``: one additive logit bias per class, chosen by a few rounds of coordinate ascent
over a grid to maximise the competition metric on the OOF rows. For two classes only the difference
matters, so only class 1's bias moves: that is a decision threshold (p1 > 1 / (1 + e^b)).

A bias fitted on the OOF rows and scored on the same rows always looks like a gain; the CV table's
row comes from the chain (:class:`pipeline.ensemble.chain.Nested`, the step
:class:`pipeline.ensemble.steps.factors.ClassBiasStep`): each fold's rows get the bias fitted on the *other*
folds, so the score is measured on rows the choice never saw.
"""

from __future__ import annotations

import numpy as np

from pipeline.metrics import DECISION_METRICS, metric_gain

__all__ = ["BIAS_GRID", "apply_bias", "fit_class_bias"]

# Bias values tried per class (natural-log units: ±3 multiplies a class's odds by up to e^3 ≈ 20; steps of
# 0.5 change a class's odds by a factor of 1.6, finer than the OOF noise of a per-class choice).
BIAS_GRID = tuple(np.round(np.arange(-3.0, 3.001, 0.5), 2).tolist())
# Gains closer than this are equal (round-off), so a flat stretch keeps the smaller change.
_EPS = 1e-12


def apply_bias(probs, bias) -> np.ndarray:
    """`probs` (..., C) reweighted by ``exp(bias)`` per class and renormalised.

    >>> apply_bias(np.array([[0.5, 0.5]]), [0.0, np.log(3)]).round(3)
    array([[0.25, 0.75]])
    """
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.maximum(p, 1e-15)) + np.asarray(bias, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gain_function(metric: str, y: np.ndarray):
    """`metric_gain` of probabilities; for a metric of the decisions alone, remembered per set of decisions:
    most bias values move no row's argmax, and scikit-learn's metrics cost a millisecond or more a call."""
    if metric not in DECISION_METRICS:
        return lambda q: metric_gain(metric, y, q)
    seen: dict[bytes, float] = {}

    def gain(q: np.ndarray) -> float:
        decisions = q.argmax(axis=1)
        key = decisions.tobytes()
        if key not in seen:
            seen[key] = metric_gain(metric, y, np.eye(q.shape[1])[decisions])
        return seen[key]
    return gain


def _threshold_grid(p: np.ndarray, points: int = 101) -> np.ndarray:
    """Two classes: the biases that put the decision threshold between neighbouring OOF probabilities of
    class 1 (at most `points` of them, at quantiles), so the best threshold is found, not a grid's neighbour."""
    logit = np.log(np.maximum(p[:, 1], 1e-15)) - np.log(np.maximum(p[:, 0], 1e-15))
    cuts = np.unique(np.quantile(logit, np.linspace(0, 1, points)))
    return -(cuts[:-1] + cuts[1:]) / 2 if len(cuts) > 1 else np.zeros(1)


def fit_class_bias(probs, y, metric: str = "f1_macro", grid=None, rounds: int = 2) -> np.ndarray:
    """The bias (C,) that maximises `metric` of ``apply_bias(probs, bias)`` on labels `y`.

    Coordinate ascent: each class's bias in turn is set to the grid value that scores best, the others
    held; repeated for `rounds` passes or until a pass changes nothing. Starts at zero and moves only
    on a strict gain, so a bias that helps nothing stays zero. The default grid is `BIAS_GRID`, and for two
    classes every threshold between neighbouring OOF probabilities (at most 100).

    >>> y = np.array([0] * 8 + [1] * 2)                      # class 1 is rare ...
    >>> p = np.array([[0.9, 0.1]] * 8 + [[0.6, 0.4]] * 2)    # ... and always under-predicted
    >>> b = fit_class_bias(p, y, grid=[-1, 0, 1])
    >>> b.tolist(), bool((apply_bias(p, b).argmax(axis=1) == y).all())
    ([0.0, 1.0], True)
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    n_classes = p.shape[1]
    bias = np.zeros(n_classes)
    gain_of = _gain_function(metric, y)
    best = gain_of(p)
    movable = [1] if n_classes == 2 else range(n_classes)
    if grid is None:
        grid = _threshold_grid(p) if n_classes == 2 else BIAS_GRID
    for _ in range(rounds):
        changed = False
        for c in movable:
            for value in grid:
                trial = bias.copy()
                trial[c] = value
                gain = gain_of(apply_bias(p, trial))
                if gain > best + _EPS:
                    best, bias, changed = gain, trial, True
        if not changed:
            break
    return bias
