"""The pseudo-label list of a second round: confident test images that join every fold's training part.

``outputs/<exp>/pseudo_labels.csv`` (written by `pipeline.results.pseudo` from the source
experiment's voted test probabilities) holds one row per image: ``id, image, label, confidence``.
Here it is read back and appended to a fold's table as training rows only: the rows get fold -1,
which no fold validates, so the out-of-fold score is never measured on a pseudo-labelled image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import read_table

__all__ = ["PSEUDO_COLUMNS", "PSEUDO_FOLD", "pseudo_labels_path", "read_pseudo_labels", "append_pseudo_rows",
           "pseudo_digest"]

PSEUDO_COLUMNS = ["id", "image", "label", "confidence"]
PSEUDO_FOLD = -1   # the fold number of a pseudo-labelled row: never a validation fold


def pseudo_labels_path(cfg: Config) -> Path:
    """``outputs/<exp>/pseudo_labels.csv`` (shared by every seed of a `seeds` run)."""
    return cfg.exp_dir / "pseudo_labels.csv"


def read_pseudo_labels(cfg: Config, classes: list) -> pd.DataFrame:
    """The experiment's pseudo-label list, checked: its columns, and every label one of `classes`."""
    path = pseudo_labels_path(cfg)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pseudo.source is set ({cfg.pseudo.source}), so training needs "
                                f"the pseudo-label list first: `make train` builds it, or `python -m pipeline "
                                f"pseudo --config {cfg.exp_dir / 'config.yaml'}`")
    frame = read_table(path)
    missing = [c for c in PSEUDO_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; rebuild it with `python -m pipeline pseudo`")
    unknown = sorted(set(frame["label"]) - {str(c) for c in classes})
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:10]} are not among the training classes {classes}; "
                         "rebuild it with `python -m pipeline pseudo`")
    return frame


def append_pseudo_rows(table: pd.DataFrame, train_idx: np.ndarray,
                       pseudo: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The fold table with the pseudo-labelled images appended, and `train_idx` extended by them only.

    The existing rows keep their positions (the out-of-fold files index them), so validation is unchanged.

    >>> table = pd.DataFrame({"image": ["a.png", "b.png"], "label": ["0", "1"], "fold": [0, 1]})
    >>> pseudo = pd.DataFrame({"id": ["t1"], "image": ["test/t1.png"], "label": ["1"], "confidence": [0.97]})
    >>> out, idx = append_pseudo_rows(table, np.array([1]), pseudo)
    >>> out["fold"].tolist(), idx.tolist()
    ([0, 1, -1], [1, 2])
    """
    n = len(table)
    labels = pseudo["label"].to_numpy(dtype=object)
    rows = pd.DataFrame({col: labels for col in ("label", "stratify", "true_label") if col in table.columns})
    rows["image"] = pseudo["image"].to_numpy(dtype=object)
    if "group" in table.columns:
        rows["group"] = ("pseudo:" + pseudo["id"].astype(str)).to_numpy(dtype=object)
    if "source" in table.columns:
        rows["source"] = rows["image"]
    rows["fold"] = PSEUDO_FOLD
    out = pd.concat([table, rows[[c for c in table.columns if c in rows.columns]]], ignore_index=True)
    return out, np.concatenate([np.asarray(train_idx, dtype=np.int64), np.arange(n, n + len(pseudo))])


def pseudo_digest(cfg: Config) -> str:
    """A short hash of the pseudo-label list ('' without pseudo-labels; 'missing' before it exists).

    Part of the training fingerprint: a fold trained on another list is neither done nor resumed.
    """
    if not cfg.pseudo.source:
        return ""
    path = pseudo_labels_path(cfg)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
