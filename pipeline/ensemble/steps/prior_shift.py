"""The prior-shift correction as the chain's last step: a per-class factor ``q / prior`` fitted on the test predictions.

Fitted on the test rows (the only step that is): their class mix ``q`` is estimated from the models'
probabilities as the models gave them (the factors of the steps before it divided out), by EM
(Saerens et al. 2002) or BBSE (Lipton et al. 2018); the correction multiplies each class by
``q / prior``. On OOF rows (a nested fit, which has no test rows) it estimates their own mix and changes
next to nothing: the OOF rows cannot tell what it does on the test set.

So it is scored by simulation (:func:`simulate`): the nested OOF rows, as the chain before it leaves them,
are drawn to the estimated test mix (as many rows as the test set, with replacement); on each draw the
correction is estimated again from the draw's probabilities alone and applied, and the draw is scored
with and without it. The mean difference over the draws is the step's gain, their standard deviation its
noise (:mod:`pipeline.ensemble.gain`), and the estimate's error on the draws (L1 to the mix they were drawn
to) says how far to trust it. It comes last because its factor commutes with the other per-class factors
(applying it last changes nothing), while deciding it last lets the simulation see the decisions the steps
before it make: after a logit adjustment has balanced the decisions, a correction to a balanced test mix
counts the imbalance twice, and the simulation shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ensemble.gain import Gain
from pipeline.ensemble.label_shift import bbse_prior, em_prior
from pipeline.ensemble.steps.factors import Factor, apply_log_factor
from pipeline.metrics import metric_gain

__all__ = ["METHODS", "DRAWS", "PriorShiftStep", "estimate_mix", "simulate"]

METHODS = ("em", "bbse")
DRAWS = 30          # simulated test sets: the noise of a gain of 0.005 is resolved to about +-13 %
_SEED = 0


def _l1(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).sum())


def estimate_mix(method: str, oof_probs, oof_y, test_probs, prior) -> np.ndarray:
    """The test set's class mix from its (T, C) probabilities (as the models gave them, trained on `prior`);
    BBSE inverts the OOF rows' confusion matrix."""
    if method == "em":
        return em_prior(test_probs, prior)[0]
    if method == "bbse":
        return bbse_prior(oof_probs, oof_y, test_probs)
    raise ValueError(f"ensemble.prior_shift: unknown method {method!r}; valid: {', '.join(METHODS)}")


@dataclass(frozen=True)
class PriorShiftStep:
    """``p * q / prior``: `q` the test mix estimated by `method` from the test probabilities (the soft vote of
    the folds), `prior` the prior the models learned."""
    method: str
    prior: tuple
    name: str = "prior_shift"

    def fit(self, rows) -> Factor:
        undo = None if rows.log_factor is None else -np.asarray(rows.log_factor)
        raw = lambda p: p if undo is None else apply_log_factor(p, undo)   # noqa: E731
        oof = raw(rows.probs)
        test = oof if rows.test is None else raw(rows.test).mean(axis=0)   # EM needs probabilities: the soft vote
        prior = np.asarray(self.prior, dtype=np.float64)
        q = estimate_mix(self.method, oof, rows.y, test, prior)
        return Factor(np.log(q) - np.log(prior / prior.sum()),
                      {"method": self.method, "estimate": q.tolist(), "model_prior": prior.tolist(),
                       "estimated_on": "the OOF rows" if rows.test is None else "the soft vote of the test rows"})


def _draw(y: np.ndarray, mix: np.ndarray, n_rows: int, rng) -> np.ndarray:
    """Row indices drawn to `mix`: multinomial class counts (a real test set's), rows with replacement."""
    present = np.array([np.any(y == c) for c in range(len(mix))])
    mix = np.where(present, mix, 0.0)
    counts = rng.multinomial(n_rows, mix / mix.sum())
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=n, replace=True)
                           for c, n in enumerate(counts) if n])


def simulate(method: str, decided, raw, y, prior, mix, n_rows: int, metric: str, draws: int = DRAWS,
             seed: int = _SEED, pooled: int = 5) -> dict:
    """The correction on `draws` simulated test sets of `n_rows` OOF rows drawn to `mix`: on each, the mix
    estimated from the draw's `raw` probabilities (as the models gave them) and its factor applied to the
    `decided` probabilities (as the chain before it decides); the gains, the estimates' L1 errors, the
    draws' scores without and with the correction, and the first `pooled` draws' rows (labels, probabilities
    without and with the correction) for the CV table."""
    y, decided, raw = np.asarray(y), np.asarray(decided, dtype=np.float64), np.asarray(raw, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = {"gains": [], "errors": [], "without": [], "with": [], "pooled": ([], [], [])}
    for draw in range(draws):
        idx = _draw(y, np.asarray(mix, dtype=np.float64), n_rows, rng)
        q = estimate_mix(method, raw, y, raw[idx], prior)
        corrected = apply_log_factor(decided[idx], np.log(q) - np.log(prior / prior.sum()))
        without, with_ = metric_gain(metric, y[idx], decided[idx]), metric_gain(metric, y[idx], corrected)
        true_mix = np.bincount(y[idx], minlength=len(prior)) / len(idx)
        out["gains"].append(with_ - without)
        out["errors"].append(_l1(q, true_mix))
        out["without"].append(without)
        out["with"].append(with_)
        if draw < pooled:
            for kept, part in zip(out["pooled"], (y[idx], decided[idx], corrected)):
                kept.append(part)
    out["pooled"] = tuple(np.concatenate(part) for part in out["pooled"])
    return out


def simulated_gain(found: dict) -> Gain:
    """The step's gain and noise from :func:`simulate`'s draws."""
    gains = np.asarray(found["gains"])
    return Gain(float(gains.mean()), float(gains.std(ddof=1)) if len(gains) > 1 else float("inf"),
                float(np.mean(found["with"])), float(np.mean(found["without"])))
