"""Leaks: near-duplicate training images (across folds), told apart from ordinary look-alikes.

A leak is one subject photographed several times with the copies split across folds: the model is then
validated on a near-copy of a training image and the CV score is optimistic. How alike two ordinary images of
one class are differs from class to class (plain T-shirts are near-identical, bags vary) and from image to
image, so no fixed distance, and no single threshold per dataset, tells a copy from a look-alike. The decision
here is relative to each image's own neighbourhood:

1. **candidates**: each image's nearest same-class neighbours under descriptors blind to shifts, zooms and
   crops (:mod:`pipeline.data.leak_features`), found by an index, never an all-pairs matrix;
2. **verification**: every candidate pair is aligned (shift, zoom, rotation, crop, exposure;
   :mod:`pipeline.data.leak_align`) and its distance is 1 - the correlation after the best fit;
3. **the rule**: a pair is a suspected duplicate when its distance is under ``ratio`` (``folds.leak_ratio``)
   times *each* image's median distance to its candidates — a copy is many times closer to its original than
   either is to its look-alikes, while two plain T-shirts are about as close as every other plain T-shirt;
4. **closure**: the copies of one subject are also copies of each other, so the pairs two suspected pairs
   imply (a–b and b–c imply a–c) are aligned too and kept when they pass the same rule.

:func:`duplicate_groups` joins suspected pairs (and any given groups) into connected components, the groups
``folds.auto_groups`` splits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.data.leak_align import aligned_distance
from pipeline.data.leak_features import fourier_descriptor, moment_descriptor, nearest_neighbours, thumbnail_descriptor

__all__ = ["NEIGHBOURS", "LeakScan", "suspected_pairs", "duplicate_groups", "rows_in_pairs"]

# Candidates per image and descriptor: enough that a copy is among them, few enough that aligning them all
# stays linear in the class size.
NEIGHBOURS = 10
_TINY = 1e-6


@dataclass
class LeakScan:
    """The suspected duplicate pairs and what decided them."""
    pairs: pd.DataFrame        # i, j (row positions, i < j), similarity (1 - aligned distance), score, strongest first
    compared: int              # candidate pairs aligned
    ratio: float               # the rule: distance < ratio x each image's median candidate distance
    features: str              # what the images were compared on, for messages

    def describe(self) -> str:
        return (f"{len(self.pairs)} suspected duplicate pair(s) among {self.compared} aligned candidate pairs "
                f"({self.features}); flagged: a pair whose distance after alignment is under {self.ratio:g} x "
                "each image's median distance to its nearest same-class look-alikes (folds.leak_ratio)")


def _candidates(images: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(m, 2) unique pairs (i < j) of `rows`: each row with its k nearest under every descriptor."""
    sub = images[rows]
    found = []
    for descriptor in (fourier_descriptor(sub), moment_descriptor(sub), thumbnail_descriptor(sub)):
        near = nearest_neighbours(descriptor, k)
        i, j = np.repeat(rows, near.shape[1]), rows[near.ravel()]
        found.append(np.minimum(i, j) * len(images) + np.maximum(i, j))     # one int64 per pair: a fast unique
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // len(images), codes % len(images)], 1)


def _median_by_row(n_rows: int, pairs: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Each row's median distance to its candidates (inf for a row without any)."""
    frame = pd.DataFrame({"row": pairs.ravel(order="F"), "d": np.concatenate([distance, distance])})
    return frame.groupby("row")["d"].median().reindex(range(n_rows), fill_value=np.inf).to_numpy()


def _implied_pairs(flagged: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Pairs (i < j) that two flagged pairs sharing a row imply and that are not among `known`."""
    edges = pd.DataFrame(np.concatenate([flagged, flagged[:, ::-1]]), columns=["a", "b"])
    two_hop = edges.merge(edges, left_on="b", right_on="a", suffixes=("", "_2"))[["a", "b_2"]].to_numpy()
    two_hop = two_hop[two_hop[:, 0] < two_hop[:, 1]]
    if not len(two_hop):
        return two_hop.reshape(0, 2)
    two_hop = np.unique(two_hop, axis=0)
    seen = set(map(tuple, known.tolist()))
    return np.array([p for p in two_hop.tolist() if tuple(p) not in seen], dtype=np.int64).reshape(-1, 2)


def suspected_pairs(images: np.ndarray, labels, folds=None, ratio: float = 0.2, k: int = NEIGHBOURS,
                    features: str = "") -> LeakScan:
    """Same-class pairs (in different folds, when `folds` is given) far closer than their neighbourhoods.

    `images` is (n, h, w) grayscale in the rows' order. Pairs of two classes are never duplicates here (a copy
    carries its label), and the candidates are found per class, so the cost is linear in the class size.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1 (a copy's distance as a share of its look-alikes'), "
                         f"got {ratio!r}")
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    pairs = [_candidates(images, np.flatnonzero(labels == cls), k) for cls in pd.unique(labels)
             if (labels == cls).sum() >= 2]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    distance = aligned_distance(images, pairs[:, 0], pairs[:, 1])
    reference = _median_by_row(n, pairs, distance)

    def passes(p, d):
        return d < ratio * np.minimum(reference[p[:, 0]], reference[p[:, 1]])

    keep = passes(pairs, distance)
    implied = _implied_pairs(pairs[keep], pairs)
    implied_distance = aligned_distance(images, implied[:, 0], implied[:, 1])
    pairs, distance = np.concatenate([pairs, implied]), np.concatenate([distance, implied_distance])
    keep = np.concatenate([keep, passes(implied, implied_distance)])
    if folds is not None:
        folds = np.asarray(folds)
        keep &= folds[pairs[:, 0]] != folds[pairs[:, 1]]
    i, j, d = pairs[keep, 0], pairs[keep, 1], distance[keep].astype(np.float64)
    closer = np.minimum(reference[i], reference[j]) / np.maximum(d, _TINY)
    found = pd.DataFrame({"i": i, "j": j, "similarity": 1.0 - d, "score": closer})
    found = found.sort_values(["score", "i", "j"], ascending=[False, True, True], ignore_index=True)
    return LeakScan(found, int(len(pairs)), float(ratio), features)


def duplicate_groups(n_rows: int, pairs: pd.DataFrame, groups=None) -> np.ndarray:
    """Group id (0..) of every row: connected components of the suspected pairs, joined with `groups`.

    Rows of one given group stay together; a suspected pair joins the two groups it links, so a group
    column that misses some duplicates is completed, not replaced.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i = [pairs["i"].to_numpy(dtype=np.int64)]
    j = [pairs["j"].to_numpy(dtype=np.int64)]
    if groups is not None:
        _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        order = np.argsort(codes, kind="stable")
        same = codes[order[1:]] == codes[order[:-1]]      # chain each group's rows: one edge per row
        i.append(order[1:][same]), j.append(order[:-1][same])
    i, j = np.concatenate(i), np.concatenate(j)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n_rows, n_rows))
    return connected_components(graph, directed=False)[1]


def rows_in_pairs(n_rows: int, pairs: pd.DataFrame) -> np.ndarray:
    """True for every row that has a suspected duplicate (in another fold, for a cross-fold scan)."""
    mask = np.zeros(n_rows, dtype=bool)
    mask[pairs["i"].to_numpy(dtype=np.int64)] = True
    mask[pairs["j"].to_numpy(dtype=np.int64)] = True
    return mask
