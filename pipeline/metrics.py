"""Classification metrics on integer labels and class probabilities (scikit-learn's)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_score, recall_score,
                             roc_auc_score)

from .config import MONITOR_MAXIMISE

__all__ = ["classification_metrics", "macro_f1", "per_class_f1", "confusion", "MAXIMISE"]

# Direction of each monitorable metric: the best checkpoint maximises or minimises it.
MAXIMISE = MONITOR_MAXIMISE


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Headline metrics of `argmax(probs)`; every class counts in the macro means.

    `roc_auc` is one-vs-rest macro AUC, NaN when a class is absent from `y_true`
    (a tiny validation fold), since AUC is undefined there.
    """
    y_pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    common = dict(labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": macro_f1(y_true, probs),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", **common)),
        "precision_macro": float(precision_score(y_true, y_pred, average="macro", **common)),
        "recall_macro": float(recall_score(y_true, y_pred, average="macro", **common)),
        "roc_auc": _roc_auc(y_true, probs),
    }


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 of `argmax(probs)`; every class counts, an empty one as 0 (the competition metric)."""
    return float(f1_score(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average="macro",
                          zero_division=0))


def _roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(y_true)) < probs.shape[1]:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = probs / probs.sum(axis=1, keepdims=True)
        if probs.shape[1] == 2:
            return float(roc_auc_score(y_true, p[:, 1]))
        return float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def per_class_f1(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return f1_score(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average=None, zero_division=0)


def confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Counts; rows are true classes, columns predicted."""
    return confusion_matrix(y_true, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))
