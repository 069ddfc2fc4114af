"""Bias-corrected temperature scaling (BCTS; Alexandari, Kundaje & Shrikumar, ICML 2020), fitted on OOF rows.

EM's estimate of a test set's class mix assumes posteriors calibrated for the mix they were fitted on.
Label smoothing, oversampling, class weights and few epochs all break that: the probabilities are too
flat or too sharp, and tilted towards the classes that were oversampled. BCTS fixes both with C + 1
numbers: ``p_cal ∝ exp(log p / T + b)``, T and the per-class b chosen to minimise the negative
log-likelihood of held-out labelled rows. After it, the posteriors are calibrated for the held-out rows'
own class mix (the training labels' shares), which is then EM's source prior; the paper finds EM after BCTS
hard to beat for label shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

__all__ = ["Calibration", "fit_bcts"]

_FLOOR = 1e-15


@dataclass(frozen=True)
class Calibration:
    """``p_cal ∝ exp(log p / temperature + bias)`` (the bias's first entry is 0: only differences count)."""
    temperature: float
    bias: np.ndarray

    def apply(self, probs) -> np.ndarray:
        """Calibrated probabilities of `probs` (..., C).

        >>> Calibration(2.0, np.zeros(2)).apply([[0.9, 0.1]]).round(3)       # sqrt(.9) : sqrt(.1)
        array([[0.75, 0.25]])
        """
        logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _FLOOR)) / self.temperature + self.bias
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def params(self) -> dict:
        return {"temperature": self.temperature, "bias": np.asarray(self.bias).tolist()}


def _loss_and_grad(params: np.ndarray, logs: np.ndarray, onehot: np.ndarray):
    """The mean NLL of ``softmax(logs * exp(-log_t) + b)`` and its gradient in (log_t, b_1 .. b_{C-1})."""
    inv_t = np.exp(-params[0])
    bias = np.concatenate([[0.0], params[1:]])
    z = logs * inv_t + bias
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    n = len(logs)
    loss = -(onehot * log_p).sum() / n
    residual = (p - onehot) / n                           # d loss / d z
    grad_t = -(residual * logs * inv_t).sum()             # d z / d log_t = -logs / T
    return loss, np.concatenate([[grad_t], residual.sum(axis=0)[1:]])


def fit_bcts(probs, y) -> Calibration:
    """The temperature and class biases that minimise the negative log-likelihood of `y` under `probs` (N, C).

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 4000)
    >>> x = 2.0 * np.eye(3)[y] + rng.normal(size=(4000, 3))     # the true posterior is softmax(2 x)
    >>> sharp = np.exp(6 * x) / np.exp(6 * x).sum(1, keepdims=True)            # three times too confident
    >>> 2.8 < fit_bcts(sharp, y).temperature < 3.2
    True
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    logs = np.log(np.maximum(p, _FLOOR))
    onehot = np.eye(p.shape[1])[y]
    start = np.zeros(p.shape[1])
    found = minimize(_loss_and_grad, start, args=(logs, onehot), jac=True, method="L-BFGS-B",
                     bounds=[(-4.0, 4.0)] + [(-20.0, 20.0)] * (p.shape[1] - 1))   # T in [0.018, 55]
    params = found.x if np.isfinite(found.fun) else start
    return Calibration(float(np.exp(params[0])), np.concatenate([[0.0], params[1:]]))
