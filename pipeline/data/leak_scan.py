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
from pipeline.data.leaks import LeakScan, duplicate_groups, rows_in_pairs, suspected_pairs

__all__ = ["scan_leaks", "scan_and_probe", "probe_note", "auto_groups", "leak_pairs_table"]

_PROBE_SIDE = 8          # the probe's thumbnails: enough to recognise a copy, 64 numbers per image
_PROBE_ROWS = 2000       # rows probed with a copy and without one, each: +-0.01 on an accuracy, whatever n


def scan_leaks(cfg: Config, table: pd.DataFrame, folds=None) -> LeakScan:
    """Suspected duplicate pairs of `table`'s images (same label; in different folds when `folds` is given)."""
    return scan_and_probe(cfg, table, folds, probe=False)[0]


def scan_and_probe(cfg: Config, table: pd.DataFrame, folds, probe: bool = True) -> tuple[LeakScan, dict | None]:
    """`scan_leaks`, and what the pairs are worth to a model that memorises its training images: the
    out-of-fold accuracy of a 1-nearest-neighbour probe on thumbnails, on all rows and on the rows without a
    cross-fold copy, each part estimated on up to _PROBE_ROWS of its rows (None when there are no pairs, or
    no rows without one)."""
    paths = table["image"].tolist()
    size = working_size(paths)
    images = load_gray(paths, size)
    scan = suspected_pairs(images, table["label"].to_numpy(), folds, cfg.folds.leak_ratio,
                           features=f"grayscale {size}x{size}, aligned")
    copied = rows_in_pairs(len(table), scan.pairs)
    if not probe or folds is None or not copied.any() or copied.all():
        return scan, None
    labels, folds = table["label"].astype(str).to_numpy(), np.asarray(folds)
    with_copy, without = (_probe_accuracy(images, labels, folds, np.flatnonzero(part)) for part in (copied, ~copied))
    return scan, {"all": float((with_copy * copied.sum() + without * (~copied).sum()) / len(table)),
                  "with_copy": float(with_copy), "without_copy": float(without), "rows_with_copy": int(copied.sum()),
                  "rows": len(table)}


def _probe_accuracy(images: np.ndarray, labels: np.ndarray, folds: np.ndarray, rows: np.ndarray) -> float:
    """The share of `rows` (at most _PROBE_ROWS of them, drawn at random: the probe stays linear in the data
    set's size) whose nearest thumbnail in the other folds carries their label."""
    import faiss
    import torch
    import torch.nn.functional as F
    if len(rows) > _PROBE_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, _PROBE_ROWS, replace=False))
    thumbs = F.adaptive_avg_pool2d(torch.from_numpy(images).unsqueeze(1), _PROBE_SIDE).flatten(1).numpy()
    thumbs = thumbs - thumbs.mean(1, keepdims=True)
    thumbs /= np.maximum(np.linalg.norm(thumbs, axis=1, keepdims=True), 1e-6)
    right = 0
    for fold in np.unique(folds[rows]):
        others, held = np.flatnonzero(folds != fold), rows[folds[rows] == fold]
        index = faiss.IndexFlatIP(thumbs.shape[1])
        index.add(np.ascontiguousarray(thumbs[others]))
        nearest = others[index.search(np.ascontiguousarray(thumbs[held]), 1)[1][:, 0]]
        right += int((labels[nearest] == labels[held]).sum())
    return right / len(rows)


def probe_note(probe: dict | None) -> str:
    """One sentence on how much the CV is likely inflated, from `scan_and_probe`'s probe."""
    if probe is None:
        return ""
    gap = probe["all"] - probe["without_copy"]
    said = (f"A model that memorises its training images (a 1-nearest-neighbour probe on {_PROBE_SIDE}x"
            f"{_PROBE_SIDE} thumbnails) scores {probe['all']:.3f} accuracy out of fold on all rows and "
            f"{probe['without_copy']:.3f} on the {probe['rows'] - probe['rows_with_copy']} rows without a "
            "cross-fold copy")
    if gap <= 0:
        return said + ": no sign that the copies inflate the CV."
    return (said + f": the CV is likely inflated by up to about {gap:+.3f} accuracy (an upper bound: a "
            "trained model leans on a copy less than the probe does; `make ensemble`'s CV table measures it "
            "for your model).")


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
