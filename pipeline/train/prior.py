"""The class prior a fold's model was trained on, written as ``fold_<k>/train_prior.json``.

Oversampling, ``balanced`` sampling, loss class weights and label smoothing all change the class mix a
model learns, so the prior to divide out of its probabilities (logit adjustment, prior-shift correction)
is this *effective* prior, not the raw label counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data.sampling import epoch_class_frequencies
from pipeline.fileio import write_json_atomic
from pipeline.train.losses import loss_class_tilt

__all__ = ["TRAIN_PRIOR_FILE", "effective_prior", "read_train_prior", "train_prior_record", "write_train_prior"]

TRAIN_PRIOR_FILE = "train_prior.json"


def effective_prior(frequencies, class_weights=None, smoothing: float = 0.0) -> np.ndarray:
    """The epoch's class `frequencies` times the loss `class_weights`, renormalised, then mixed with the
    uniform mix by label `smoothing` (the expected share of each class in the targets the loss sees).

    >>> effective_prior([0.75, 0.25], class_weights=[1.0, 3.0]).tolist()
    [0.5, 0.5]
    >>> effective_prior([1.0, 0.0], smoothing=0.1).round(6).tolist()      # 0.9 * [1, 0] + 0.1 / 2
    [0.95, 0.05]
    """
    p = np.asarray(frequencies, dtype=np.float64)
    if class_weights is not None:
        p = p * np.asarray(class_weights, dtype=np.float64)
    p = p / p.sum()
    return (1.0 - smoothing) * p + smoothing / len(p)


def train_prior_record(cfg: Config, train_targets: np.ndarray, classes: list) -> dict:
    """What ``train_prior.json`` holds: the effective prior, the raw counts and how one became the other."""
    counts = np.bincount(train_targets, minlength=len(classes))
    freqs = epoch_class_frequencies(counts, cfg.sampling.method, cfg.sampling.target_ratio)
    weights, smoothing, note = loss_class_tilt(cfg.loss, counts)
    prior = effective_prior(freqs, weights, smoothing)
    return {"classes": list(classes), "prior": prior.round(8).tolist(), "class_counts": counts.tolist(),
            "epoch_frequencies": freqs.round(8).tolist(), "sampling": cfg.sampling.method,
            "target_ratio": cfg.sampling.target_ratio,
            "class_weights": None if weights is None else weights.round(8).tolist(),
            "label_smoothing": smoothing, "note": note}


def write_train_prior(cfg: Config, fold_dir: Path, train_targets: np.ndarray, classes: list) -> Path:
    path = Path(fold_dir) / TRAIN_PRIOR_FILE
    write_json_atomic(path, train_prior_record(cfg, train_targets, classes))
    return path


def read_train_prior(path: Path, classes: list) -> dict:
    """The record of ``train_prior.json`` at `path`, refused when it lists other `classes` than the run's
    (a file left by another training run would divide out the wrong prior)."""
    record = json.loads(Path(path).read_text())
    if record.get("classes") != list(classes):
        raise ValueError(f"{path} lists classes {record.get('classes')}, the run {list(classes)}: "
                         "it is from another training run; retrain this fold")
    return record
