"""The leak check on a competition's training table: pixel features, the scan, and auto groups.

The features are shift-tolerant RGB thumbnails (:mod:`pipeline.data.leaks`): they exist before training,
need no download, and a copy moved by a few pixels or re-exposed still matches its original. The same scan
serves ``folds.auto_groups`` (before the split), the EDA page and the ensemble's CV row (after it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.leaks import LeakScan, duplicate_groups, shift_tolerant_similarity, suspected_pairs, thumbnails

__all__ = ["scan_leaks", "auto_groups", "leak_pairs_table"]


def scan_leaks(cfg: Config, table: pd.DataFrame, folds=None) -> LeakScan:
    """Suspected duplicate pairs of `table`'s images (same label; in different folds when `folds` is given)."""
    thumbs = thumbnails(table["image"].tolist())
    return suspected_pairs(lambda rows: shift_tolerant_similarity(thumbs[rows]), table["label"].to_numpy(),
                           folds, cfg.folds.leak_mads, features="shift-tolerant 16x16 RGB thumbnails")


def auto_groups(cfg: Config, table: pd.DataFrame, log=print) -> np.ndarray:
    """Group ids ``auto0..`` that keep suspected duplicates (and any given group) in one fold."""
    scan = scan_leaks(cfg, table)
    given = table["group"].to_numpy() if cfg.data.group_column else None
    ids = duplicate_groups(len(table), scan.pairs, given)
    before = len(table) if given is None else len(pd.unique(given))
    log(f"[folds] folds.auto_groups: {scan.describe()}; {len(table)} rows in {len(np.unique(ids))} groups "
        f"(from {before} {'given groups' if given is not None else 'rows'})")
    return np.array([f"auto{k}" for k in ids], dtype=object)


def leak_pairs_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The suspected pairs, strongest first, with each image's path, fold and (shared) label."""
    i, j = pairs["i"].to_numpy(dtype=np.int64), pairs["j"].to_numpy(dtype=np.int64)
    image, fold = table["image"].to_numpy(), table["fold"].to_numpy()
    return pd.DataFrame({"row_a": i, "image_a": image[i], "fold_a": fold[i],
                         "row_b": j, "image_b": image[j], "fold_b": fold[j],
                         "label": table["label"].to_numpy()[i], "similarity": pairs["similarity"].round(5),
                         "score": pairs["score"].round(2)})
