"""Label shift: estimate the test set's class mix from unlabelled predictions, test it, correct for it.

Every function is a pure function of arrays; probabilities are (..., N, C), rows need not sum to 1.

:func:`em_prior`      the test prior by EM (Saerens, Latinne & Decaestecker 2002): re-weight every
                      posterior by ``q / train_prior``, set ``q`` to their mean, repeat
:func:`bbse_prior`    black-box shift estimation (Lipton, Wang & Smola 2018): the OOF confusion matrix
                      inverted against the test set's predicted-class shares
:func:`shift_test`    is the test mix really different? A G-test (likelihood ratio) of the predicted
                      classes of the OOF rows against those of the test rows
:func:`reweight`      ``p * test_prior / train_prior``, renormalised: the posteriors under the new mix
:func:`simulated_mix` OOF rows resampled to a chosen class mix (to check the above out of fold)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency

__all__ = ["em_prior", "bbse_prior", "shift_test", "reweight", "reversed_mix", "simulated_mix"]

# Below this the EM prior of a class is held at the floor, so a class that vanishes from the
# estimate can come back on the next step and the re-weighting factor stays finite.
_PRIOR_FLOOR = 1e-6


def _rows(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"probs must be a finite, non-negative (rows, classes) array, got shape {p.shape}")
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def _prior(prior, n_classes: int, name: str) -> np.ndarray:
    q = np.asarray(prior, dtype=np.float64)
    if q.shape != (n_classes,) or not np.isfinite(q).all() or (q <= 0).any():
        raise ValueError(f"{name} must hold {n_classes} positive numbers (one per class), got {q.tolist()}")
    return q / q.sum()


def reweight(probs, train_prior, test_prior) -> np.ndarray:
    """Posteriors of a model trained on `train_prior` moved to `test_prior`: ``p * q / pi``, renormalised
    over the last axis (any leading shape). The same per-class factor as logit adjustment's
    ``1 / pi**tau``, so the two compose in either order.

    >>> reweight([[0.5, 0.5]], [0.8, 0.2], [0.5, 0.5]).round(3)       # .5/.8 : .5/.2 = 1 : 4
    array([[0.2, 0.8]])
    """
    p = np.asarray(probs, dtype=np.float64)
    factor = _prior(test_prior, p.shape[-1], "test_prior") / _prior(train_prior, p.shape[-1], "train_prior")
    out = p * factor
    return out / out.sum(axis=-1, keepdims=True)


def em_prior(probs, train_prior, max_iter: int = 1000, tol: float = 1e-8) -> tuple[np.ndarray, int]:
    """The class mix of the (N, C) rows `probs`, from a model whose posteriors assume `train_prior`.

    Returns ``(prior, iterations)``. Each step re-weights the posteriors to the current estimate and
    averages them; the fixed point is the maximum-likelihood mix when the posteriors are calibrated
    for `train_prior`. Below, 8 rows look like class 0 and 2 like class 1 to a model trained on a
    50:50 mix; their mean posterior (0.74) understates the shift that EM recovers (7:1).

    >>> p = np.array([[0.9, 0.1]] * 8 + [[0.1, 0.9]] * 2)
    >>> em_prior(p, [0.5, 0.5])[0].round(3)
    array([0.875, 0.125])
    >>> em_prior(p[[0, 1, 8, 9]], [0.5, 0.5])[0].round(3)      # as many rows of each: no shift
    array([0.5, 0.5])
    """
    p = _rows(probs)
    pi = _prior(train_prior, p.shape[1], "train_prior")
    q = pi.copy()
    for step in range(1, max_iter + 1):
        post = p * (q / pi)
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
        new = np.maximum(post.mean(axis=0), _PRIOR_FLOOR)
        new /= new.sum()
        if np.abs(new - q).max() < tol:
            return new, step
        q = new
    return q, max_iter


def bbse_prior(oof_probs, oof_y, test_probs) -> np.ndarray:
    """Black-box shift estimate of the test mix: solve ``C w = mu`` for the importance weights ``w``,
    where ``C[i, j]`` is the OOF share of rows predicted ``i`` with true class ``j`` and ``mu[i]`` the
    test share predicted ``i``; the test prior is ``w`` times the OOF mix, floored at 1e-6 and renormalised.

    The confusion matrix comes from single fold models, the test predictions from their vote, which
    errs less: on a test set, read it as a check of :func:`em_prior`, not a second truth.

    >>> y = np.array([0, 0, 0, 1])
    >>> oof = np.eye(2)[y]                                     # a perfect classifier on a 3:1 mix
    >>> bbse_prior(oof, y, np.eye(2)[[0, 1, 1, 1]]).round(6).tolist()   # the test predictions are 1:3
    [0.25, 0.75]
    """
    p, t = _rows(oof_probs), _rows(test_probs)
    y = np.asarray(oof_y, dtype=np.int64)
    n_classes = p.shape[1]
    if y.shape != (len(p),) or t.shape[1] != n_classes:
        raise ValueError(f"oof_y must have one label per OOF row ({len(p)}) and the test probs {n_classes} classes")
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (p.argmax(axis=1), y), 1.0 / len(y))
    mu = np.bincount(t.argmax(axis=1), minlength=n_classes) / len(t)
    w = np.linalg.lstsq(joint, mu, rcond=None)[0]
    # Clipped at the floor, not 0: a negative solution (noise) must not make a class impossible, and
    # the re-weighting divides by nothing when every class keeps a positive share.
    q = np.maximum(w * joint.sum(axis=0), _PRIOR_FLOOR)
    return q / q.sum()


def shift_test(oof_probs, test_probs) -> tuple[float, float]:
    """``(G, p_value)`` of a G-test (likelihood ratio, chi-square) that the OOF rows and the test rows
    have the same predicted-class shares. Under label shift the predicted classes change exactly when
    the true mix does (for a classifier better than chance), and the test needs no calibration; a small
    p-value says the test mix differs from the training mix that the OOF rows (and the CV table) have.

    >>> same = np.eye(2)[[0] * 60 + [1] * 40]
    >>> round(shift_test(same, same)[1], 3)
    1.0
    >>> shift_test(same, np.eye(2)[[0] * 20 + [1] * 80])[1] < 1e-6
    True
    """
    p, t = _rows(oof_probs), _rows(test_probs)
    n_classes = p.shape[1]
    table = np.stack([np.bincount(p.argmax(axis=1), minlength=n_classes),
                      np.bincount(t.argmax(axis=1), minlength=n_classes)])
    table = table[:, table.sum(axis=0) > 0]   # a class neither set predicts carries no evidence
    if table.shape[1] < 2:
        return 0.0, 1.0
    g, p_value, _, _ = chi2_contingency(table, correction=False, lambda_="log-likelihood")
    return float(g), float(p_value)


def reversed_mix(counts) -> np.ndarray:
    """The class mix with the shares reversed by rank: the commonest class gets the rarest one's share.

    >>> reversed_mix([6, 3, 1]).round(3).tolist()
    [0.1, 0.3, 0.6]
    """
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(counts, kind="stable")
    mix = np.empty_like(counts)
    mix[order] = counts[order[::-1]]
    return mix / mix.sum()


def simulated_mix(y, mix, n_rows: int, seed: int) -> np.ndarray:
    """Row indices into `y` drawn with replacement so that class ``c`` has ``round(mix[c] * n_rows)``
    rows: the OOF set as if the test set had the mix `mix`.

    >>> idx = simulated_mix(np.array([0, 0, 0, 1]), [0.5, 0.5], 6, seed=0)
    >>> np.bincount(np.array([0, 0, 0, 1])[idx]).tolist()
    [3, 3]
    """
    y = np.asarray(y)
    mix = np.asarray(mix, dtype=np.float64)
    rng = np.random.default_rng(seed)
    parts = []
    for c, share in enumerate(mix / mix.sum()):
        members = np.flatnonzero(y == c)
        want = int(round(share * n_rows))
        if want and not len(members):
            raise ValueError(f"class {c} has no OOF rows to draw {want} from")
        if want:
            parts.append(rng.choice(members, size=want, replace=True))
    return np.sort(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)
