"""Classification metrics on integer labels and class probabilities (scikit-learn's)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

__all__ = ["classification_metrics", "MAXIMISE"]

# Direction of each monitorable metric: the best checkpoint maximises or minimises it.
MAXIMISE = {"f1_macro": True, "accuracy": True, "loss": False}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of `argmax(probs)`; every class counts in the macro mean."""
    y_pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
