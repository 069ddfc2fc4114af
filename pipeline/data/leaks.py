"""Leaks: near-duplicate training images (across folds), told apart from ordinary look-alikes.

A leak is one subject photographed several times with the copies split across folds: the model is then
validated on a near-copy of a training image and the CV score is optimistic. How alike two ordinary images of
one class are differs from class to class (plain T-shirts are near-identical, bags vary) and from image to
image, so no fixed distance, and no single threshold per dataset, tells a copy from a look-alike. The decision
here is relative to each image's own neighbourhood:

1. **candidates**: each image's nearest same-class neighbours under descriptors blind to shifts, and with
   every image indexed zoomed and rotated too (:mod:`pipeline.data.leak_features`), found by an index, never
   an all-pairs matrix;
2. **verification**: every candidate pair is aligned (shift, zoom, rotation, crop, exposure;
   :mod:`pipeline.data.leak_align`) and its distance is 1 - the correlation after the best fit;
3. **the rule**: a pair is a suspected duplicate when its distance is under ``ratio`` (``folds.leak_ratio``)
   times *each* image's distance to its third-nearest candidate outside its own suspected group — a copy
   is far closer to its original than either is to its nearest look-alikes, while a plain T-shirt has
   several other plain T-shirts about as close as the closest one. The groups come from the pairs, so the
   rule is iterated: it starts from the pairs far under each image's eighth-nearest candidate's distance (seeds, which
   need no group), groups them, measures the references outside the groups, flags, and regroups, until
   nothing changes; a subject photographed five times is so found although its own copies are its four
   nearest neighbours;
4. **closure**: the copies of one subject are also copies of each other, so the pairs two suspected pairs
   imply (a–b and b–c imply a–c) are aligned too and kept when they pass the same rule.

:func:`duplicate_groups` joins suspected pairs (and any given groups) into connected components, the groups
``folds.auto_groups`` splits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.data.leak_align import Aligner
from pipeline.data.leak_features import (FOURIER_POSES, MOMENT_POSES, fourier_descriptor, moment_descriptor,
                                         nearest_in_poses)

__all__ = ["NEIGHBOURS", "SCREEN", "LeakScan", "suspected_pairs", "duplicate_groups", "rows_in_pairs"]

# Candidates per image and descriptor: enough that a copy is among them and that, beyond a subject's own
# copies, each image keeps a few look-alikes to measure its neighbourhood by; few enough that aligning them
# all stays linear in the class size.
NEIGHBOURS = 8
# Pairs aligned in full: those among either image's SCREEN nearest after the coarse fit (the rest cannot be a
# copy or one of the look-alikes the rule measures an image's neighbourhood by: module docstring, 3).
SCREEN = 8
# The seeds: distance under this share of each image's SCREEN-th nearest candidate's (strict: in a class of
# near-identical subjects that one is itself close, and these pairs start the groups the rule refines).
_SEED_RATIO = 0.1
# The reference: each image's distance to its (this + 1)-th nearest candidate outside its suspected group
# (the third: one look-alike that happens to be very close does not decide alone).
_REFERENCE_RANK = 2
_MAX_ROUNDS = 6        # regroupings; on the benchmarks the flags settle within three or four
_TINY = 1e-6


@dataclass
class LeakScan:
    """The suspected duplicate pairs and what decided them."""
    pairs: pd.DataFrame        # i, j (row positions, i < j), similarity (1 - aligned distance), score, strongest first
    candidates: int            # candidate pairs fitted at the coarse level
    compared: int              # of them, pairs fitted at the fine level too (and pairs two flagged pairs imply)
    ratio: float               # the rule: distance < ratio x each image's third-nearest look-alike distance
    features: str              # what the images were compared on, for messages

    def describe(self) -> str:
        return (f"{len(self.pairs)} suspected duplicate pair(s) among {self.candidates} candidate pairs "
                f"({self.compared} pairs aligned in full; {self.features}); flagged: a pair whose distance after "
                f"alignment is under {self.ratio:g} x each image's distance to its third-nearest same-class "
                "look-alike outside its suspected group (folds.leak_ratio)")


def _candidates(images: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(m, 2) unique pairs (i < j) of `rows`: each row with its k nearest under each descriptor."""
    sub, n = images[rows], len(images)
    found = []
    for describe, poses in ((fourier_descriptor, FOURIER_POSES), (moment_descriptor, MOMENT_POSES)):
        near = nearest_in_poses(sub, describe, poses, k)
        i, j = np.repeat(rows, near.shape[1]), near.ravel()
        i, j = i[j >= 0], rows[j[j >= 0]]
        found.append(np.minimum(i, j) * n + np.maximum(i, j))     # one int64 per pair: a fast unique
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], 1)


def _sorted_by_row(pairs: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair listed from both ends: (row, distance, rank of the distance within the row), by row."""
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    d = np.concatenate([distance, distance])
    order = np.lexsort((d, rows))
    rows, d = rows[order], d[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    return rows, d, rank


def _reference(n_rows: int, pairs: np.ndarray, distance: np.ndarray, group: np.ndarray, rank: int) -> np.ndarray:
    """Each row's distance to its (rank + 1)-th nearest candidate outside its group: the farthest one when it
    has fewer, inf when it has none."""
    outside = group[pairs[:, 0]] != group[pairs[:, 1]]
    rows, d, ranks = _sorted_by_row(pairs[outside], distance[outside])
    reference = np.full(n_rows, np.inf)
    last = np.r_[rows[1:] != rows[:-1], True] if len(rows) else np.zeros(0, dtype=bool)
    reference[rows[last]] = d[last]                       # the farthest, unless the wanted rank exists
    picked = ranks == rank
    reference[rows[picked]] = d[picked]
    return reference


def _implied_pairs(flagged: np.ndarray, known: np.ndarray, n_rows: int) -> np.ndarray:
    """Pairs (i < j) that two flagged pairs sharing a row imply and that are not among `known`."""
    edges = pd.DataFrame(np.concatenate([flagged, flagged[:, ::-1]]), columns=["a", "b"])
    two_hop = edges.merge(edges, left_on="b", right_on="a", suffixes=("", "_2"))[["a", "b_2"]].to_numpy()
    two_hop = two_hop[two_hop[:, 0] < two_hop[:, 1]]
    codes = np.setdiff1d(two_hop[:, 0] * n_rows + two_hop[:, 1], known[:, 0] * n_rows + known[:, 1])
    return np.stack([codes // n_rows, codes % n_rows], 1).astype(np.int64)


def _components(n_rows: int, pairs: np.ndarray) -> np.ndarray:
    return duplicate_groups(n_rows, pd.DataFrame({"i": pairs[:, 0], "j": pairs[:, 1]}))


def _flag(aligner: Aligner, pairs: np.ndarray, distance: np.ndarray, ratio: float):
    """The rule, iterated (module docstring, 3-4): (pairs with the implied ones appended, their distances,
    flagged, each row's final reference)."""
    n, candidates = len(aligner.images), len(pairs)
    # The seeds' reference: each row's SCREEN-th nearest candidate (what the screen kept for every row).
    reference = _reference(n, pairs, distance, np.arange(n), SCREEN - 1)
    flagged = distance < _SEED_RATIO * np.minimum(reference[pairs[:, 0]], reference[pairs[:, 1]])
    for _ in range(_MAX_ROUNDS):
        implied = _implied_pairs(pairs[flagged], pairs, n)
        pairs = np.concatenate([pairs, implied])
        distance = np.concatenate([distance, aligner.distance(implied[:, 0], implied[:, 1])])
        flagged = np.concatenate([flagged, np.zeros(len(implied), dtype=bool)])
        # The references come from the candidates alone: an implied pair is a copy's, not a look-alike's.
        reference = _reference(n, pairs[:candidates], distance[:candidates], _components(n, pairs[flagged]),
                               _REFERENCE_RANK)
        now = flagged | (distance < ratio * np.minimum(reference[pairs[:, 0]], reference[pairs[:, 1]]))
        if (now == flagged).all() and not len(implied):
            break
        flagged = now
    return pairs, distance, flagged, reference


def suspected_pairs(images: np.ndarray, labels, folds=None, ratio: float = 0.45, k: int = NEIGHBOURS,
                    features: str = "") -> LeakScan:
    """Same-class pairs (in different folds, when `folds` is given) far closer than their neighbourhoods.

    `images` is (n, h, w) grayscale in the rows' order. Pairs of two classes are never duplicates here (a copy
    carries its label), and the candidates are found per class, so the cost is linear in the class size.
    The folds play no part in the decision, only in which decided pairs are reported.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1 (a copy's distance as a share of its look-alikes'), "
                         f"got {ratio!r}")
    labels = np.asarray(labels, dtype=object)
    pairs = [_candidates(images, np.flatnonzero(labels == cls), k) for cls in pd.unique(labels)
             if (labels == cls).sum() >= 2]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    candidates = len(pairs)
    aligner = Aligner(images)
    distance = aligner.distance(pairs[:, 0], pairs[:, 1], screen=SCREEN)
    fitted = ~np.isnan(distance)
    pairs, distance, keep, reference = _flag(aligner, pairs[fitted], distance[fitted], ratio)
    if folds is not None:
        folds = np.asarray(folds)
        keep &= folds[pairs[:, 0]] != folds[pairs[:, 1]]
    i, j, d = pairs[keep, 0], pairs[keep, 1], distance[keep].astype(np.float64)
    closer = np.minimum(reference[i], reference[j]) / np.maximum(d, _TINY)
    found = pd.DataFrame({"i": i, "j": j, "similarity": 1.0 - d, "score": closer})
    found = found.sort_values(["score", "i", "j"], ascending=[False, True, True], ignore_index=True)
    return LeakScan(found, candidates, int(len(pairs)), float(ratio), features)


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
