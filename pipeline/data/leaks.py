"""Leaks: near-duplicate training images (across folds), told apart from ordinary look-alikes.

A leak is one subject photographed several times with the copies split across folds: the model is then
validated on a near-copy of a training image and the CV score is optimistic. Fixed hash distances cannot
tell such copies from different images of one class that merely look alike (every digit "1" resembles
every other), so the decision here is relative to the data:

1. every image is a vector (:func:`thumbnails` → pixel features before training, or a model's embedding);
2. the similarity of two images is their cosine, for thumbnails the best over small shifts
   (:func:`shift_tolerant_similarity`), so a copy moved by a few pixels still matches;
3. the reference is the distribution of every same-class pair (across folds when folds are given) —
   ordinary look-alikes; duplicates are a tiny share of those pairs, so its median and MAD ignore them;
4. a pair is a suspected duplicate when its cosine distance, on a log scale (``-log(1 - s)``, which spreads
   the values near 1 where copies sit), lies more than ``mads`` robust standard deviations
   (1.4826 × MAD) above the median: an outlier of that distribution, not a fixed threshold.

:func:`duplicate_groups` joins suspected pairs (and any given groups) into connected components, the groups
``folds.auto_groups`` splits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["THUMB_SIZE", "MAX_SHIFT", "thumbnails", "cosine_similarity", "shift_tolerant_similarity",
           "LeakScan", "suspected_pairs", "duplicate_groups", "rows_in_pairs"]

# Thumbnail side: small enough that a shift of a few pixels in the original is under one thumbnail
# pixel after the blur, large enough to keep a digit's or a face's layout.
THUMB_SIZE = 16
# Shifts (thumbnail pixels, each axis) tried when comparing two thumbnails: 2 of 16 = 1/8 of the image.
MAX_SHIFT = 2
_BLUR_SIGMA = 0.5
_ROBUST_SD = 1.4826        # MAD x this = the standard deviation, for normal data
_TINY = 1e-6


def thumbnails(paths, size: int = THUMB_SIZE) -> np.ndarray:
    """(n, size, size, 3) float32 RGB thumbnails, lightly blurred: pixel features that exist before training.

    A file that cannot be read is an error naming it (the data check runs before the stages that call this).
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    paths = list(paths)
    out = np.zeros((len(paths), size, size, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.draft("RGB", (size * 4, size * 4))  # JPEG: decode at a reduced scale
                out[i] = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BOX))
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"leak check: cannot read the training image {path} ({err}); "
                             "run `make check` to list every unreadable image") from None
    return gaussian_filter(out, sigma=(0, _BLUR_SIGMA, _BLUR_SIGMA, 0))


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to length 1 (a flat image becomes the zero vector: similarity 0 to all)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > _TINY)


def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """(n, n) cosine similarity of feature rows (embeddings), each row centred first."""
    unit = _unit(features)
    return unit @ unit.T


def shift_tolerant_similarity(thumbs: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """(n, n) best cosine between thumbnail a and thumbnail b shifted by up to `max_shift` pixels per axis.

    The shifted copy's border is filled with its edge pixels; the matrix is made symmetric (a→b or b→a).
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    n, h, w = thumbs.shape[:3]
    r = int(max_shift)
    pad = np.pad(thumbs, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    base = _unit(thumbs)
    best = np.full((n, n), -1.0, dtype=np.float32)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = _unit(pad[:, r + dy:r + dy + h, r + dx:r + dx + w])
            np.maximum(best, base @ shifted.T, out=best)
    return np.maximum(best, best.T)


@dataclass
class LeakScan:
    """The suspected duplicate pairs and the reference distribution that decided them."""
    pairs: pd.DataFrame        # i, j (row positions, i < j), similarity, score (robust z), strongest first
    compared: int              # same-class (cross-fold) pairs in the reference distribution
    median: float              # of -log(1 - similarity) over those pairs
    scale: float               # 1.4826 x MAD of the same
    mads: float                # the rule: score > mads
    features: str              # what the similarities were computed on, for messages

    @property
    def threshold(self) -> float:
        """The similarity above which a pair is flagged (the rule, back on the cosine scale)."""
        return float(1.0 - np.exp(-(self.median + self.mads * self.scale)))

    def describe(self) -> str:
        return (f"{len(self.pairs)} suspected duplicate pair(s) among {self.compared} same-class pairs "
                f"compared ({self.features}); flagged: similarity > {self.threshold:.4f}, i.e. more than "
                f"{self.mads:g} robust SDs above the median of -log(1 - similarity)")


def _log_distance(similarity: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(1.0 - similarity, _TINY, None))


def suspected_pairs(similarity_of, labels, folds=None, mads: float = 6.0, features: str = "") -> LeakScan:
    """Same-class pairs (in different folds, when `folds` is given) whose similarity is an outlier.

    `similarity_of(rows)` returns the (m, m) similarity matrix of those row positions; it is called once per
    class, so only same-class pairs are ever computed. Pairs of two classes are never duplicates here (a
    copy carries its label), which also keeps the memory at the largest class squared.
    """
    if not mads > 0:
        raise ValueError(f"mads must be positive (robust SDs above the median), got {mads!r}")
    labels = np.asarray(labels, dtype=object)
    folds = None if folds is None else np.asarray(folds)
    rows_i, rows_j, sims = [], [], []
    for cls in pd.unique(labels):
        rows = np.flatnonzero(labels == cls)
        if len(rows) < 2:
            continue
        sim = np.asarray(similarity_of(rows))
        a, b = np.triu_indices(len(rows), k=1)
        if folds is not None:
            cross = folds[rows[a]] != folds[rows[b]]
            a, b = a[cross], b[cross]
        rows_i.append(rows[a]), rows_j.append(rows[b]), sims.append(sim[a, b])
    i = np.concatenate(rows_i) if rows_i else np.zeros(0, dtype=np.int64)
    j = np.concatenate(rows_j) if rows_j else np.zeros(0, dtype=np.int64)
    s = np.concatenate(sims).astype(np.float64) if sims else np.zeros(0)
    d = _log_distance(s)
    median = float(np.median(d)) if len(d) else 0.0
    scale = max(_ROBUST_SD * float(np.median(np.abs(d - median))) if len(d) else 0.0, _TINY)
    score = (d - median) / scale
    keep = score > mads
    pairs = pd.DataFrame({"i": i[keep], "j": j[keep], "similarity": s[keep], "score": score[keep]})
    pairs = pairs.sort_values(["score", "i", "j"], ascending=[False, True, True], ignore_index=True)
    return LeakScan(pairs, int(len(s)), median, scale, float(mads), features)


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
