"""The prior-shift correction as the chain's last step: a per-class factor fitted on the test predictions.

Fitted on the test rows (the only step that is): their class mix ``q`` is estimated from the models'
probabilities as the models gave them (the factors of the steps before it divided out), and each class is
multiplied by ``q`` over the prior the probabilities assume. Three estimators (:func:`fit_estimator`):

``em``             EM (Saerens et al. 2002) on the folds' soft vote, from the prior the models learned
``bbse``           black-box shift estimation (Lipton et al. 2018): the OOF confusion matrix inverted
``calibrated_em``  bias-corrected temperature scaling fitted on the OOF rows first
                   (:mod:`pipeline.ensemble.calibration`), then EM on each fold model's calibrated test
                   probabilities from the OOF rows' own class mix, the folds' estimates averaged; the factor
                   ``T * (b + log(q / source))`` makes the same decisions on the uncalibrated probabilities as
                   ``q / source`` on the calibrated ones

On OOF rows (a nested fit, which has no test rows) it estimates their own mix and changes next to
nothing: the OOF rows cannot tell what it does on the test set. So it is scored by simulation
(:func:`simulate`): the nested OOF rows, as the chain before it leaves them, are drawn to the estimated test
mix (as many rows as the test set, with replacement); on each draw the mix is estimated again from the
draw's probabilities alone and the correction applied, and the draw is scored with and without it. The
mean difference is the step's gain, the draws' standard deviation its noise (:mod:`pipeline.ensemble.gain`),
and the estimate's error on the draws (L1 to the mix they hold) says how far to trust it. It comes last:
its factor commutes with the other per-class factors (applying it last changes nothing), while deciding it
last lets the simulation see the decisions the steps before it make (after a logit adjustment has balanced
them, a correction to a balanced test mix counts the imbalance twice, and the simulation shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ensemble.calibration import Calibration, fit_bcts
from pipeline.ensemble.gain import Gain
from pipeline.ensemble.label_shift import bbse_prior, em_prior
from pipeline.ensemble.steps.factors import Factor, apply_log_factor
from pipeline.ensemble.voting import class_priors
from pipeline.metrics import metric_gain

__all__ = ["METHODS", "DRAWS", "SEED", "Estimator", "fit_estimator", "PriorShiftStep", "simulate", "simulated_gain"]

METHODS = ("em", "bbse", "calibrated_em")
DRAWS = 30          # simulated test sets: the noise of a gain is resolved to about +-13 %
SEED = 0            # the simulation's draws (the offline bundle draws the same ones again)


@dataclass(frozen=True)
class Estimator:
    """A fitted way to estimate a test mix and the per-class log factor that corrects for it.

    `reference` is the prior the (calibrated, for ``calibrated_em``) posteriors assume; `oof` and `oof_y` the
    OOF rows BBSE inverts."""
    method: str
    reference: np.ndarray
    calibration: Calibration | None = None
    oof: np.ndarray | None = None
    oof_y: np.ndarray | None = None

    def estimate(self, probs) -> np.ndarray:
        """The class mix of test probabilities (T, C), or of every fold's (F, T, C)."""
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "calibrated_em":   # each fold model is what the calibration was fitted for
            per_fold = p if p.ndim == 3 else p[None]
            q = np.mean([em_prior(self.calibration.apply(f), self.reference)[0] for f in per_fold], axis=0)
            return q / q.sum()
        vote = p.mean(axis=0) if p.ndim == 3 else p
        if self.method == "em":
            return em_prior(vote, self.reference)[0]
        return bbse_prior(self.oof, self.oof_y, vote)

    def log_factor(self, q) -> np.ndarray:
        """The per-class log factor that makes the probabilities as the models give them decide as posteriors of
        the mix `q` would: ``log(q / prior)``; calibrated, ``T * (b + log(q / source))``, since
        ``argmax(log p / T + b + log(q / source)) = argmax(log p + T (b + log(q / source)))``. Either also undoes
        what oversampling and class weights did to the prior (the calibration's `b` learns it), so on a test
        set with the training mix it is not nothing: `auto` applies it only where a shift is found."""
        shift = np.log(np.asarray(q, dtype=np.float64)) - np.log(self.reference)
        if self.calibration is None:
            return shift
        return self.calibration.temperature * (self.calibration.bias + shift)

    def params(self) -> dict:
        out = {"method": self.method, "reference_prior": self.reference.tolist()}
        if self.calibration is not None:
            out["calibration"] = {"kind": "bias-corrected temperature scaling", **self.calibration.params()}
        return out


def fit_estimator(method: str, oof_probs, oof_y, model_prior) -> Estimator:
    """The `method`'s estimator fitted on the OOF rows' probabilities (as the models gave them) and labels."""
    oof, y = np.asarray(oof_probs, dtype=np.float64), np.asarray(oof_y)
    prior = np.asarray(model_prior, dtype=np.float64)
    prior = prior / prior.sum()
    if method == "calibrated_em":
        return Estimator(method, class_priors(y, oof.shape[1]), fit_bcts(oof, y))
    if method == "em":
        return Estimator(method, prior)
    if method == "bbse":
        return Estimator(method, prior, oof=oof, oof_y=y)
    raise ValueError(f"ensemble.prior_shift: unknown method {method!r}; valid: {', '.join(METHODS)}")


def _as_given(probs, log_factor):
    """`probs` with the per-class factors applied so far divided out."""
    return probs if log_factor is None else apply_log_factor(probs, -np.asarray(log_factor))


@dataclass(frozen=True)
class PriorShiftStep:
    """The test mix estimated by `method` from the test probabilities, corrected for; `prior` is the prior the
    models learned."""
    method: str
    prior: tuple
    name: str = "prior_shift"

    def fit(self, rows) -> Factor:
        oof = _as_given(rows.probs, rows.log_factor)
        estimator = fit_estimator(self.method, oof, rows.y, self.prior)
        test = oof if rows.test is None else _as_given(rows.test, rows.log_factor)
        q = estimator.estimate(test)
        return Factor(estimator.log_factor(q), {**estimator.params(), "estimate": q.tolist(),
                                                "model_prior": list(self.prior),
                                                "estimated_on": "the OOF rows" if rows.test is None else
                                                "the test rows (every fold's probabilities)"})


def _draw(y: np.ndarray, mix: np.ndarray, n_rows: int, rng) -> np.ndarray:
    """Row indices drawn to `mix`: multinomial class counts (a real test set's), rows with replacement."""
    present = np.array([np.any(y == c) for c in range(len(mix))])
    mix = np.where(present, mix, 0.0)
    counts = rng.multinomial(n_rows, mix / mix.sum())
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=n, replace=True)
                           for c, n in enumerate(counts) if n])


def simulate(estimator: Estimator, decided, raw, y, mix, n_rows: int, metric: str, draws: int = DRAWS,
             seed: int = SEED, pooled: int = 5) -> dict:
    """The correction on `draws` simulated test sets of `n_rows` OOF rows drawn to `mix`: on each, the mix
    estimated from the draw's `raw` probabilities (as the models gave them) and its factor applied to the
    `decided` probabilities (as the chain before it decides). Returns the gains, the estimates and their L1
    errors, the draws' scores without and with the correction, and the first `pooled` draws' rows (labels,
    probabilities without and with the correction) for the CV table."""
    y, decided, raw = np.asarray(y), np.asarray(decided, dtype=np.float64), np.asarray(raw, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = {"gains": [], "errors": [], "without": [], "with": [], "pooled": ([], [], [])}
    for draw in range(draws):
        idx = _draw(y, np.asarray(mix, dtype=np.float64), n_rows, rng)
        q = estimator.estimate(raw[idx])
        corrected = apply_log_factor(decided[idx], estimator.log_factor(q))
        without, with_ = metric_gain(metric, y[idx], decided[idx]), metric_gain(metric, y[idx], corrected)
        out["gains"].append(with_ - without)
        out["errors"].append(float(np.abs(q - np.bincount(y[idx], minlength=len(q)) / len(idx)).sum()))
        out["without"].append(without)
        out["with"].append(with_)
        if draw < pooled:
            for kept, part in zip(out["pooled"], (y[idx], decided[idx], corrected)):
                kept.append(part)
    out["pooled"] = tuple(np.concatenate(part) for part in out["pooled"])
    return out


def simulated_gain(found: dict, rows_per_draw: int, pool_rows: int) -> Gain:
    """The step's gain (the draws' mean) and its noise: the standard error of that mean as an estimate of what
    the correction earns on a test set. The draws' spread is one test set's (`rows_per_draw` rows), but they
    all come from the same `pool_rows` OOF rows, which know the expected gain only as well as any `pool_rows`
    rows do: the spread scaled by sqrt(rows_per_draw / pool_rows), plus the Monte-Carlo error of the draws.

    >>> g = simulated_gain({"gains": [0.1, 0.3], "with": [0.8, 0.9], "without": [0.7, 0.6]}, 100, 400)
    >>> round(g.gain, 3), round(g.noise, 4)      # sd 0.1414 * sqrt(100/400 + 1/2)
    (0.2, 0.1225)
    """
    gains = np.asarray(found["gains"])
    spread = float(gains.std(ddof=1)) if len(gains) > 1 else float("inf")
    return Gain(float(gains.mean()), spread * float(np.sqrt(rows_per_draw / pool_rows + 1 / len(gains))),
                float(np.mean(found["with"])), float(np.mean(found["without"])))
