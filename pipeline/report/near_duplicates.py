"""Near-duplicate images: 64-bit average hashes, and the pairs within a Hamming distance.

Every image gets a 64-bit average hash (8x8 grey thumbnail, one bit per pixel: brighter
than the mean or not); two images whose hashes differ in at most
``report.near_duplicate_distance`` bits are near duplicates. Up to :data:`EXACT_LIMIT`
images every pair is compared (numpy XOR + popcount, in blocks); above that, the
pigeonhole principle keeps it exact without comparing every pair: split the 64 bits
into ``distance + 1`` chunks, and any two hashes within ``distance`` bits agree exactly
on at least one chunk, so only images sharing a chunk value are compared. The EDA page
(:mod:`pipeline.report.eda`) lists the pairs that sit in different folds: validation leakage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

__all__ = ["scan_images", "average_hash", "hash_distances", "near_duplicate_pairs", "NearDuplicates",
           "cross_fold_duplicates", "EXACT_LIMIT", "MAX_PAIRS"]

# Up to this many images, every pair of hashes is compared; above, chunk buckets (still exact).
EXACT_LIMIT = 5000
# Near-duplicate pairs kept (the rest are counted); the HTML lists fewer.
MAX_PAIRS = 100_000
_BLOCK = 512
_HASH_SIZE = 8


# ---- image headers and hashes ---------------------------------------------------------------------

def average_hash(img: Image.Image, size: int = _HASH_SIZE) -> np.ndarray:
    """The `size*size` bits of an image's average hash (grey thumbnail pixel > its mean)."""
    img.draft("L", (size * 4, size * 4))  # JPEG: decode at a reduced scale; other formats ignore it
    small = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return (small > small.mean()).ravel()


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans → (n,) uint64."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").ravel().astype(np.uint64)


def scan_images(paths, mode: str = "off", hashes: bool = True) -> pd.DataFrame:
    """Per image: width, height, mode (from the header, pixels not decoded), hash (uint64), ok.

    Unreadable images get ok=False, mode "unreadable" and no hash (they are never near duplicates).
    """
    from pipeline.progress import progress

    paths = list(paths)
    widths = np.zeros(len(paths), dtype=np.int64)
    heights = np.zeros(len(paths), dtype=np.int64)
    modes = []
    ok = np.zeros(len(paths), dtype=bool)
    bits = np.zeros((len(paths), _HASH_SIZE * _HASH_SIZE), dtype=bool)
    for i, path in enumerate(progress(paths, len(paths), "[eda] reading images", mode=mode)):
        try:
            with Image.open(path) as img:
                widths[i], heights[i] = img.size
                modes.append(img.mode)
                if hashes:
                    bits[i] = average_hash(img)
            ok[i] = True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            modes.append("unreadable")
    frame = pd.DataFrame({"width": widths, "height": heights, "mode": modes, "ok": ok})
    frame["hash"] = _pack(bits) if len(paths) else np.zeros(0, dtype=np.uint64)
    return frame



# ---- near duplicates ------------------------------------------------------------------------------

def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1).astype(np.int64)


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between every hash of `a` (rows) and of `b` (columns)."""
    return _popcount(np.asarray(a, dtype=np.uint64)[:, None] ^ np.asarray(b, dtype=np.uint64)[None, :])


@dataclass
class NearDuplicates:
    """Pairs (i < j, row positions) within the distance; only cross-fold ones when folds were given."""
    pairs: np.ndarray          # (m, 3) int64: i, j, distance; at most MAX_PAIRS rows
    total: int                 # pairs found (may exceed len(pairs))
    same_fold: int             # near-duplicate pairs inside one fold (counted, not kept)
    method: str                # "all pairs" or "chunk buckets"


class _Collector:
    def __init__(self, folds: np.ndarray | None, limit: int):
        self.folds, self.limit = folds, limit
        self.kept: list[np.ndarray] = []
        self.n_kept = self.total = self.same_fold = 0

    def add(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        if self.folds is not None:
            same = self.folds[i] == self.folds[j]
            self.same_fold += int(same.sum())
            i, j, d = i[~same], j[~same], d[~same]
        self.total += len(i)
        room = self.limit - self.n_kept
        if room > 0 and len(i):
            block = np.stack([i, j, d], axis=1)[:room].astype(np.int64)
            self.kept.append(block)
            self.n_kept += len(block)

    def result(self, method: str) -> NearDuplicates:
        pairs = np.concatenate(self.kept) if self.kept else np.zeros((0, 3), dtype=np.int64)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], pairs[:, 2])) if len(pairs) else np.zeros(0, int)
        return NearDuplicates(pairs[order], self.total, self.same_fold, method)


def _all_pairs(hashes: np.ndarray, index: np.ndarray, max_distance: int, out: _Collector,
               accept=None) -> None:
    """Compare every pair among hashes[index] in blocks; report pairs (i < j) within the distance."""
    h = hashes[index]
    n = len(index)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        d = hash_distances(h[start:stop], h[start:])           # columns: start .. n-1
        r, c = np.nonzero(d <= max_distance)
        c = c + start
        upper = c > r + start
        r, c = r[upper] + start, c[upper]
        if accept is not None:
            keep = accept(index[r], index[c])
            r, c = r[keep], c[keep]
        if len(r):
            out.add(index[r], index[c], d[r - start, c - start])


def _chunks(max_distance: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of `max_distance + 1` chunks covering the 64 bits as evenly as possible."""
    m = max_distance + 1
    widths = [bits // m + (1 if k < bits % m else 0) for k in range(m)]
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    return list(zip(shifts, widths))


def _bucketed_pairs(hashes: np.ndarray, index: np.ndarray, max_distance: int, out: _Collector) -> None:
    """Exact via the pigeonhole principle: pairs within d bits share one of d+1 chunks exactly.

    A pair is compared in every chunk it shares but reported only for the first one, so no
    pair is reported twice.
    """
    keys = [((hashes >> np.uint64(s)) & np.uint64((1 << w) - 1)) for s, w in _chunks(max_distance)]
    for c, key in enumerate(keys):
        def first_shared_chunk(i, j, earlier=keys[:c]):
            keep = np.ones(len(i), dtype=bool)
            for k in earlier:
                keep &= k[i] != k[j]
            return keep

        order = index[np.argsort(key[index], kind="stable")]
        sorted_keys = key[order]
        bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [len(order)]])
        big = stops - starts > 1
        for a, b in zip(starts[big], stops[big]):
            _all_pairs(hashes, np.sort(order[a:b]), max_distance, out, accept=first_shared_chunk)


def near_duplicate_pairs(hashes, max_distance: int, folds=None, valid=None, method: str = "auto",
                         limit: int = MAX_PAIRS) -> NearDuplicates:
    """Pairs of images whose 64-bit hashes differ in at most `max_distance` bits.

    With `folds`, only pairs in different folds are kept (same-fold ones are counted).
    `valid` (booleans) excludes images without a hash. `method`: "auto" (all pairs up to
    :data:`EXACT_LIMIT` images, chunk buckets above), "all" or "buckets"; all give the same pairs.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance <= 63:
        raise ValueError(f"report.near_duplicate_distance must be in 0..63 bits, got {max_distance}")
    out = _Collector(None if folds is None else np.asarray(folds), limit)
    index = np.arange(len(hashes)) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool))
    if method == "auto":
        method = "all" if len(index) <= EXACT_LIMIT else "buckets"
    if method == "all":
        _all_pairs(hashes, index, max_distance, out)
        return out.result("all pairs compared")
    if method == "buckets":
        _bucketed_pairs(hashes, index, max_distance, out)
        return out.result(f"pairs sharing one of {max_distance + 1} hash chunks compared (exact)")
    raise ValueError(f"method must be 'auto', 'all' or 'buckets', got {method!r}")


def cross_fold_duplicates(table: pd.DataFrame, stats: pd.DataFrame, max_distance: int,
                          method: str = "auto") -> tuple[pd.DataFrame, NearDuplicates]:
    """Near-duplicate pairs whose images sit in different folds, as a table for people."""
    found = near_duplicate_pairs(stats["hash"].to_numpy(), max_distance, folds=table["fold"].to_numpy(),
                                 valid=stats["ok"].to_numpy(), method=method)
    i, j, d = found.pairs.T if len(found.pairs) else (np.zeros(0, int),) * 3
    frame = pd.DataFrame({
        "row_a": i, "image_a": table["image"].to_numpy()[i], "fold_a": table["fold"].to_numpy()[i],
        "label_a": table["label"].to_numpy()[i],
        "row_b": j, "image_b": table["image"].to_numpy()[j], "fold_b": table["fold"].to_numpy()[j],
        "label_b": table["label"].to_numpy()[j], "distance": d})
    frame["same_label"] = frame["label_a"].astype(str) == frame["label_b"].astype(str)
    return frame, found
