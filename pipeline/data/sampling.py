"""Class-imbalance handling for the training rows of one fold.

Two ways to let a model see minority classes more often, selected by
``sampling.method`` (one of :data:`SAMPLING_METHODS`):

* ``"oversample"``: :func:`oversample_indices` repeats random minority rows
  until each class holds at least ``ceil(target_ratio * largest class)`` rows.
* ``"balanced"``: :func:`balanced_sample_weights` gives each row the weight
  ``1 / count(its class)`` for :class:`torch.utils.data.WeightedRandomSampler`,
  so every class is drawn equally often in expectation.
* ``"none"``: the training rows as they are.

Both work only on the *training* part of a fold: the labels passed in are the
training rows, and the indices returned are positions into them (map back to
dataset rows with ``train_idx[result]``). The validation rows are never touched,
so duplicated images cannot leak into validation and its metrics keep the true
class distribution.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from pipeline.data.folds import check_labels

__all__ = ["oversample_indices", "balanced_sample_weights", "epoch_seed", "epoch_rows", "epoch_class_frequencies",
           "SAMPLING_METHODS"]

SAMPLING_METHODS = ("none", "balanced", "oversample")

# Decimal places kept from target_ratio * max_count before rounding up, so that
# float round-off (0.3 * 10 == 3.0000000000000004) does not add a spurious row.
_ROUND_DIGITS = 9


def _check_target_ratio(target_ratio) -> float:
    """sampling.target_ratio must be a real number in (0, 1]."""
    if isinstance(target_ratio, bool) or not isinstance(target_ratio, numbers.Real) \
            or not math.isfinite(target_ratio) or not 0 < target_ratio <= 1:
        raise ValueError(f"sampling.target_ratio must be a number in (0, 1] (the fraction of the "
                         f"largest class every class is oversampled up to), got {target_ratio!r}; "
                         f"use e.g. 0.5, or 1.0 to equalise all classes.")
    return float(target_ratio)


def _target_count(target_ratio: float, max_count: int) -> int:
    """Rows each class should reach: ``ceil(target_ratio * max_count)``, robust to round-off.

    >>> _target_count(0.3, 10), _target_count(0.25, 10), _target_count(1.0, 7)
    (3, 3, 7)
    """
    return math.ceil(round(target_ratio * max_count, _ROUND_DIGITS))


def oversample_indices(labels, target_ratio: float, seed: int) -> np.ndarray:
    """Random oversampling of minority classes, as indices into `labels`.

    Parameters
    ----------
    labels : array-like of shape (n_rows,)
        Labels of the training rows of one fold (positions ``0 .. n_rows - 1``).
    target_ratio : float in (0, 1]
        Every class is brought up to at least ``ceil(target_ratio * max_count)``
        rows, where ``max_count`` is the size of the largest class; 1.0 makes
        all classes as large as the largest. Classes already at or above the
        target are left as they are (never undersampled).
    seed : int
        Seed of ``np.random.default_rng``; same inputs and seed, same result.

    Returns
    -------
    indices : ndarray of int, **sorted**
        Every index ``0 .. n_rows - 1`` once, plus duplicates of minority rows
        drawn with replacement within their class. Sorted, so repeats sit next
        to their original; the DataLoader shuffles anyway.

    Examples
    --------
    >>> oversample_indices(["a", "a", "a", "a", "b"], target_ratio=0.5, seed=0).tolist()
    [0, 1, 2, 3, 4, 4]
    """
    target_ratio = _check_target_ratio(target_ratio)
    labels = check_labels(labels, "labels (the training rows of the fold)")
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    target = _target_count(target_ratio, int(counts.max()))
    rng = np.random.default_rng(seed)
    parts = [np.arange(labels.shape[0])]
    for k in range(classes.shape[0]):  # sorted class order: the draws depend only on the seed
        deficit = target - int(counts[k])
        if deficit > 0:
            members = np.flatnonzero(codes == k)
            parts.append(rng.choice(members, size=deficit, replace=True))
    return np.sort(np.concatenate(parts)).astype(np.int64, copy=False)


def balanced_sample_weights(labels) -> np.ndarray:
    """Per-row weights ``1 / count(class of row)``, normalised to sum to 1.

    Each class's weights then add up to ``1 / n_classes``, so a
    :class:`torch.utils.data.WeightedRandomSampler` over them draws every
    class equally often in expectation.

    >>> balanced_sample_weights(["a", "a", "a", "b"]).tolist()
    [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]
    """
    labels = check_labels(labels, "labels (the training rows of the fold)")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[codes].astype(np.float64)
    return weights / counts.shape[0]  # each class sums to 1 / n_classes; all to 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sampling and augmentation: the same (seed, epoch) draws the same rows,
    so a resumed fold repeats exactly what an uninterrupted one would have drawn."""
    return seed * 1000 + epoch


def epoch_rows(labels, method: str, target_ratio: float, seed: int) -> np.ndarray:
    """The positions into `labels` (a fold's training rows) that one epoch's dataset holds.

    ``oversample``: :func:`oversample_indices`; ``none`` and ``balanced`` (which resamples through
    its sampler's weights, not the dataset): every position once.

    >>> epoch_rows(["a", "a", "a", "a", "b"], "oversample", 0.5, seed=0).tolist()
    [0, 1, 2, 3, 4, 4]
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"sampling.method: {method!r} is not one of: {', '.join(SAMPLING_METHODS)}")
    if method == "oversample":
        return oversample_indices(labels, target_ratio, seed)
    return np.arange(len(labels))


def epoch_class_frequencies(counts, method: str, target_ratio: float) -> np.ndarray:
    """The expected share of each class among one epoch's training rows, from the fold's class `counts`.

    This is the class mix the model learns, so the prior to divide out of its probabilities:
    ``none``: the counts; ``oversample``: each class raised to ``ceil(target_ratio * largest)`` rows
    (exactly what :func:`oversample_indices` draws, every epoch); ``balanced``: every class with rows
    drawn equally often (:func:`balanced_sample_weights`). A class without rows stays at 0.

    >>> epoch_class_frequencies([8, 2], "oversample", 0.5).tolist()     # 8 : max(2, 4)
    [0.6666666666666666, 0.3333333333333333]
    >>> epoch_class_frequencies([8, 2, 0], "balanced", 1.0).tolist()
    [0.5, 0.5, 0.0]
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"sampling.method: {method!r} is not one of: {', '.join(SAMPLING_METHODS)}")
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError(f"counts must be non-negative class counts, not all zero, got {counts.tolist()}")
    if method == "oversample":
        target = _target_count(_check_target_ratio(target_ratio), int(counts.max()))
        counts = np.where(counts > 0, np.maximum(counts, target), 0.0)
    elif method == "balanced":
        counts = (counts > 0).astype(np.float64)
    return counts / counts.sum()
