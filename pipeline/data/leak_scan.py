"""The leak check on a competition's training table: pixel features, the scan, and auto groups.

The features are the images themselves at a working size chosen from them (:mod:`pipeline.data.leak_features`):
they exist before training and need no download; the alignment (:mod:`pipeline.data.leak_align`) undoes
a copy's shift, zoom, crop and exposure. The same scan
serves ``folds.auto_groups`` (before the split), the EDA page and the ensemble's CV row (after it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.leak_features import load_gray, working_size
from pipeline.data.leaks import LeakScan, duplicate_groups, suspected_pairs

__all__ = ["scan_leaks", "auto_groups", "leak_pairs_table"]


def scan_leaks(cfg: Config, table: pd.DataFrame, folds=None) -> LeakScan:
    """Suspected duplicate pairs of `table`'s images (same label; in different folds when `folds` is given)."""
    paths = table["image"].tolist()
    size = working_size(paths)
    return suspected_pairs(load_gray(paths, size), table["label"].to_numpy(), folds, cfg.folds.leak_ratio,
                           features=f"grayscale {size}x{size}, aligned")


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
