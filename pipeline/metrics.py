"""Classification metrics on integer labels and class probabilities (scikit-learn's)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, precision_score,
                             recall_score, roc_auc_score)

from pipeline.config import COMPETITION_METRICS, MONITOR_MAXIMISE

__all__ = ["DECISION_METRICS", "classification_metrics", "label_metrics", "roc_auc", "macro_f1", "per_class_f1", "confusion", "MAXIMISE",
           "log_loss", "qwk", "metric_value", "metric_gain", "COMPETITION_METRICS"]

# Direction of each monitorable metric: the best checkpoint maximises or minimises it.
MAXIMISE = MONITOR_MAXIMISE

# Floor for the true class's probability in the log-loss: one exact 0 gives a large finite loss, not inf.
_LOG_FLOOR = 1e-15


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None
                           ) -> dict[str, float]:
    """Headline metrics: the label metrics of the predictions and the ROC-AUC of `scores` themselves.

    `scores` (N, C) are anything whose order within a class column means something: probabilities,
    a hard vote's shares, rank averages. `predicted` (N,) class indices default to `argmax(scores)`
    (a hard vote breaks its ties otherwise). Every class counts in the macro means. `roc_auc` is
    one-vs-rest macro AUC, NaN when a class is absent from `y_true` (a tiny validation fold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores.argmax(axis=1) if predicted is None else np.asarray(predicted)
    return {**label_metrics(y_true, predicted, scores.shape[1]), "roc_auc": roc_auc(y_true, scores)}


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """The metrics that need only the predicted labels (accuracy, F1, precision, recall)."""
    common = dict(labels=np.arange(n_classes), zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", **common)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", **common)),
        "precision_macro": float(precision_score(y_true, y_pred, average="macro", **common)),
        "recall_macro": float(recall_score(y_true, y_pred, average="macro", **common)),
        "qwk": qwk(y_true, y_pred, n_classes),
    }


def qwk(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Quadratic weighted kappa over the classes in their pipeline order (numbers sort as numbers, so
    grades 0..4 are ordered); NaN when it is undefined (truth and predictions one single class).

    >>> qwk(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), 4), qwk(np.array([0, 3]), np.array([3, 0]), 4)
    (1.0, -1.0)
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        value = cohen_kappa_score(y_true, y_pred, labels=np.arange(n_classes), weights="quadratic")
    return float(value)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class; rows renormalised (an all-zero row counts as
    uniform), the probability floored at 1e-15 so one confident mistake is large but finite.

    >>> round(log_loss(np.array([0, 0]), np.array([[0.5, 0.5], [0.9, 0.1]])), 4)   # (ln 2 + ln 1/0.9) / 2
    0.3993
    """
    p = np.asarray(probs, dtype=np.float64)
    sums = p.sum(axis=1, keepdims=True)
    p = np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), 1.0 / p.shape[1])
    return float(-np.log(np.maximum(p[np.arange(len(y_true)), np.asarray(y_true)], _LOG_FLOOR)).mean())


def metric_value(name: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The competition metric `name` (``competition.metric``) of (N, C) `probs`: decisions are their argmax.

    >>> y, p = np.array([0, 1]), np.array([[0.8, 0.2], [0.4, 0.6]])
    >>> [round(metric_value(m, y, p), 4) for m in COMPETITION_METRICS]
    [1.0, 1.0, 1.0, 0.367, 1.0]
    """
    if name not in COMPETITION_METRICS:
        raise ValueError(f"competition.metric: unknown {name!r}; valid: {', '.join(COMPETITION_METRICS)}")
    probs = np.asarray(probs, dtype=np.float64)
    if name == "log_loss":
        return log_loss(y_true, probs)
    if name == "roc_auc":
        return roc_auc(y_true, probs)
    predicted, n_classes = probs.argmax(axis=1), probs.shape[1]
    if name == "f1_macro":
        return macro_f1(y_true, probs)
    if name == "accuracy":
        return float(accuracy_score(y_true, predicted))
    return qwk(y_true, predicted, n_classes)


# Metrics that see only the decisions (the argmax), not the probabilities behind them.
DECISION_METRICS = ("f1_macro", "accuracy", "qwk")


def metric_gain(name: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """`metric_value` signed so that higher is better (the log-loss negated): what every fitted choice
    (tau, class bias, blend weights, a tuning trial) maximises. NaN (undefined) counts as the worst.

    >>> metric_gain("log_loss", np.array([0]), np.array([[0.5, 0.5]])) < 0
    True
    """
    value = metric_value(name, y_true, probs)
    if np.isnan(value):
        return -np.inf
    return value if COMPETITION_METRICS[name] else -value


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 of `argmax(probs)`; every class counts, an empty one as 0 (the competition metric)."""
    return float(f1_score(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average="macro",
                          zero_division=0))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro ROC-AUC of the class columns as they are (no renormalisation, so vote shares
    and ranks are scored by their own order); binary: the AUC of column 1. NaN when a class is absent.

    >>> roc_auc(np.array([0, 1, 2]), np.array([[3, 0, 0], [0, 2, 1], [0, 1, 2]]))
    1.0
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    n_classes = scores.shape[1]
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y_true == 1, scores[:, 1]))
    return float(np.mean([roc_auc_score(y_true == c, scores[:, c]) for c in range(n_classes)]))


def per_class_f1(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return f1_score(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average=None, zero_division=0)


def confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Counts; rows are true classes, columns predicted."""
    return confusion_matrix(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))
