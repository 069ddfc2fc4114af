"""Per-class factors fitted on out-of-fold rows: logit adjustment ``p / prior**tau`` and class bias ``p * exp(b)``.

Both multiply each class's probability by one number and renormalise, so they (and the prior-shift
correction, another such factor) commute, and the submission applies their product at once: the sum of
their ``log_factor`` vectors (:mod:`pipeline.ensemble.record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.ensemble.class_bias import fit_class_bias
from pipeline.ensemble.voting import choose_tau, class_priors

__all__ = ["Factor", "apply_log_factor", "LogitAdjustStep", "ClassBiasStep"]

_FLOOR = 1e-15


def apply_log_factor(probs, log_factor) -> np.ndarray:
    """``p * exp(log_factor)`` per class, renormalised over the last axis (probabilities floored at 1e-15 first).

    >>> apply_log_factor([[0.5, 0.5]], [0.0, np.log(3)]).round(3)
    array([[0.25, 0.75]])
    """
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _FLOOR)) + np.asarray(log_factor, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Factor:
    """A fitted per-class factor: its log (one number per class) and what it was fitted from."""
    log_factor: np.ndarray
    record: dict = field(default_factory=dict)

    def transform(self, probs: np.ndarray) -> np.ndarray:
        return apply_log_factor(probs, self.log_factor)

    def params(self) -> dict:
        return {**self.record, "log_factor": np.asarray(self.log_factor, dtype=np.float64).tolist()}


@dataclass(frozen=True)
class LogitAdjustStep:
    """``p / prior**tau``, tau chosen from `grid` by `metric` on the rows it is fitted on (ties: the smallest).

    `prior` is the prior the models learned (their effective training prior); without one, the fitted rows'
    own class frequencies (a blend, whose members may have learned different priors).
    """
    grid: tuple
    metric: str
    prior: tuple | None = None
    name: str = "logit_adjust"

    def fit(self, rows) -> Factor:
        n_classes = rows.probs.shape[-1]
        prior = np.asarray(self.prior, dtype=np.float64) if self.prior is not None else class_priors(rows.y, n_classes)
        tau, curve = choose_tau(rows.probs, rows.y, prior, self.grid, metric=self.metric)
        return Factor(-tau * np.log(prior), {"tau": tau, "prior": prior.tolist(), "grid": list(self.grid),
                                             "oof_gain_by_tau": [[t, g] for t, g in curve]})


@dataclass(frozen=True)
class ClassBiasStep:
    """``p * exp(b)``, one b per class by coordinate ascent on `metric`
    (:func:`pipeline.ensemble.class_bias.fit_class_bias`; two classes: a decision threshold)."""
    metric: str
    name: str = "class_bias"

    def fit(self, rows) -> Factor:
        bias = fit_class_bias(rows.probs, rows.y, self.metric)
        return Factor(bias, {"bias": bias.tolist()})
