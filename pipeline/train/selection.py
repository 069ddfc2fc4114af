"""What a fold trains on, what it is scored on, and which epoch it keeps.

These few lines decide the honesty of the CV: validation rows never train, validation is scored on
``true_label`` (which may differ from the training ``label``), and the kept epoch is the best one by
the monitored metric, never a NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.folds import training_indices_for_fold
from pipeline.data.pseudo_labels import append_pseudo_rows, read_pseudo_labels
from pipeline.data.tables import load_fold_table, model_classes
from pipeline.metrics import MAXIMISE

__all__ = ["FoldData", "fold_data", "is_better", "oof_frame"]


@dataclass
class FoldData:
    """One fold's rows: `targets` are class indices of `label` for training rows and of `true_label`
    for validation rows (they differ with e.g. a training-only age cut-off)."""
    classes: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    table: pd.DataFrame
    targets: np.ndarray

    @property
    def val_targets(self) -> np.ndarray:
        return self.targets[self.val_idx]


def fold_data(cfg: Config, fold: int) -> FoldData:
    """The rows of `fold` from the folds file: the other folds train, this one validates.

    With ``pseudo.source``, the pseudo-labelled test images are appended as training rows only (after
    the split, with fold -1): they never validate, so the out-of-fold score stays that of train rows.
    """
    table = load_fold_table(cfg)
    if not 0 <= fold < cfg.folds.n_splits:
        raise ValueError(f"fold {fold} does not exist: folds.n_splits is {cfg.folds.n_splits}")
    classes = model_classes(table)
    index = {c: i for i, c in enumerate(classes)}
    train_idx, val_idx = training_indices_for_fold(table["fold"].to_numpy(), fold)
    if cfg.pseudo.source:
        table, train_idx = append_pseudo_rows(table, train_idx, read_pseudo_labels(cfg, classes))
    # Train on `label`, score validation on `true_label` (they differ e.g. with a training-only age cut-off).
    targets = table["label"].map(index).to_numpy().copy()
    targets[val_idx] = table["true_label"].map(index).to_numpy()[val_idx]
    return FoldData(classes, train_idx, val_idx, table, targets)


def is_better(value: float, best: float | None, monitor: str) -> bool:
    """Whether an epoch scoring `value` replaces the kept one (`best`; None before the first epoch).

    >>> is_better(0.5, None, "f1_macro"), is_better(0.5, 0.6, "f1_macro"), is_better(0.5, 0.6, "loss")
    (True, False, True)
    >>> is_better(float("nan"), None, "loss"), is_better(0.1, float("nan"), "loss")
    (False, True)
    """
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if MAXIMISE[monitor] else value < best


def oof_frame(data: FoldData, fold: int, probs: np.ndarray) -> pd.DataFrame:
    """The fold's out-of-fold rows: train-table row, true label, fold, one probability column per class."""
    rows = data.val_idx
    frame = pd.DataFrame({"row": rows, "label": data.table["true_label"].to_numpy()[rows], "fold": fold})
    for c, name in enumerate(data.classes):
        frame[f"prob_{name}"] = probs[:, c]
    return frame
