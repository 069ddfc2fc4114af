"""What a step earns, and whether that is more than noise: the paired bootstrap of its nested gain.

A step's gain is the competition metric of the chain's nested out-of-fold (OOF) rows with the step
minus without it. Its noise is the standard deviation of that difference over bootstrap resamples of
the rows (drawn with replacement within each fold, so every resample keeps the folds' sizes), the same
resample scored with and without the step: the gain a fresh sample of that many rows would show.

Why the bootstrap and not the spread of the per-fold gains: with 5 folds the folds' standard error rests
on 4 degrees of freedom, so the noise estimate itself is noisy (a run of 5 similar folds makes any gain
look certain); and macro-F1 is not a mean over rows, so a fold's F1 is not a fifth of the whole. The
bootstrap uses every row and the metric as the competition computes it. It does not see the variation of
the fitted parameters between folds directly, but the nested rows already carry it: each fold's rows were
transformed by a different fit.

`auto` applies a step when ``gain > margin * noise`` (``ensemble.auto_margin``, default 2: a noise step
passes about 2 % of the time, a step that hurts never on average).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.metrics import metric_gain

__all__ = ["RESAMPLES", "Gain", "paired_gain", "exceeds_noise", "stratified_resamples"]

RESAMPLES = 200   # bootstrap resamples: the noise's own error is about 5 % of it (1 / sqrt(2 * 200))
_SEED = 0


@dataclass(frozen=True)
class Gain:
    """A step's nested gain (`score` - `baseline`, the metric signed so that higher is better) and its noise."""
    gain: float
    noise: float
    score: float
    baseline: float

    def as_dict(self) -> dict:
        return {"gain": self.gain, "noise": self.noise, "score": self.score, "baseline": self.baseline}


def stratified_resamples(folds: np.ndarray, resamples: int = RESAMPLES, seed: int = _SEED) -> np.ndarray:
    """(resamples, N) row indices, each row drawn with replacement from its own fold's rows.

    >>> idx = stratified_resamples(np.array([0, 0, 1]), resamples=3)
    >>> idx.shape, bool((idx[:, 2] == 2).all())     # fold 1 has one row: it is always drawn
    ((3, 3), True)
    """
    folds = np.asarray(folds)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(folds)), dtype=np.int64)
    for k in np.unique(folds):
        members = np.flatnonzero(folds == k)
        out[:, members] = rng.choice(members, size=(resamples, len(members)), replace=True)
    return out


def _decision_scores(metric: str, y: np.ndarray, decisions: np.ndarray, n_classes: int, idx: np.ndarray) -> np.ndarray:
    """Macro-F1 or accuracy of every resample from counts (scikit-learn's definitions: every class counts, an
    empty one as 0): a thousand times faster than calling scikit-learn per resample."""
    truth, picked = y[idx], decisions[idx]                       # (R, N)
    right = truth == picked
    if metric == "accuracy":
        return right.mean(axis=1)
    offsets = (np.arange(len(idx)) * n_classes)[:, None]
    count = lambda values, where: np.bincount((values + offsets)[where], minlength=len(idx) * n_classes  # noqa: E731
                                              ).reshape(len(idx), n_classes)
    everywhere = np.ones_like(right)
    tp, true_n, pred_n = count(truth, right), count(truth, everywhere), count(picked, everywhere)
    denominator = true_n + pred_n
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    return f1.mean(axis=1)


def _resample_scores(metric: str, y: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if metric in ("f1_macro", "accuracy"):
        return _decision_scores(metric, y, probs.argmax(axis=1), probs.shape[1], idx)
    return np.array([metric_gain(metric, y[i], probs[i]) for i in idx])


def paired_gain(metric: str, y, folds, probs, baseline, resamples: int = RESAMPLES, seed: int = _SEED) -> Gain:
    """The gain of (N, C) `probs` over `baseline` (the same rows without the step) on `metric`, and its noise
    (the paired bootstrap's standard deviation, resampled within `folds`).

    >>> y = np.array([0, 1] * 50); folds = np.arange(100) % 5
    >>> right, wrong = np.eye(2)[y], np.eye(2)[1 - y]
    >>> g = paired_gain("accuracy", y, folds, right, wrong)
    >>> g.gain, g.noise
    (1.0, 0.0)
    """
    y, probs, baseline = np.asarray(y), np.asarray(probs, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    score, base = metric_gain(metric, y, probs), metric_gain(metric, y, baseline)
    idx = stratified_resamples(np.asarray(folds), resamples, seed)
    diffs = _resample_scores(metric, y, probs, idx) - _resample_scores(metric, y, baseline, idx)
    diffs = diffs[np.isfinite(diffs)]   # a resample that lost a class has no ROC-AUC
    noise = float(diffs.std(ddof=1)) if len(diffs) > 1 else float("inf")
    return Gain(float(score - base), noise, float(score), float(base))


def exceeds_noise(gain: Gain, margin: float) -> bool:
    """`auto`'s rule: the gain is positive and larger than `margin` times its noise.

    >>> exceeds_noise(Gain(0.01, 0.004, 0.9, 0.89), 2.0), exceeds_noise(Gain(0.01, 0.006, 0.9, 0.89), 2.0)
    (True, False)
    """
    return gain.gain > 0 and gain.gain > margin * gain.noise
