"""Near-duplicate images: 64-bit average hashes, and the pairs within a Hamming distance.

Every image gets a 64-bit average hash (8x8 grey thumbnail, one bit per pixel: brighter
than the mean or not); two images whose hashes differ in at most
``report.near_duplicate_distance`` bits are near duplicates. Up to :data:`EXACT_LIMIT`
images every pair is compared (numpy XOR + popcount, in blocks); above that, the
pigeonhole principle keeps it exact without comparing every pair: split the 64 bits
into ``distance + 1`` chunks, and any two hashes within ``distance`` bits agree exactly
on at least one chunk, so only images sharing a chunk value are compared; a bucket that
many images share (a blank top row) is split again on its other bits, and identical hashes
are counted by value. The cost follows the pairs found, not the square of the images. The EDA page
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
# A chunk bucket up to this size is compared pair by pair; a larger one is split on its remaining bits.
_LEAF = 64
# Near-duplicate pairs kept (the rest are counted); the HTML lists fewer.
MAX_PAIRS = 100_000
_BLOCK = 512
_HASH_SIZE = 8
_SCAN_CHUNK = 1024           # images a worker reads per task
_PARALLEL_FROM = 4000        # fewer images are read in-process: starting workers costs ~1 s


# ---- image headers and hashes ---------------------------------------------------------------------

def average_hash(img: Image.Image, size: int = _HASH_SIZE) -> np.ndarray:
    """The `size*size` bits of an image's average hash (grey thumbnail pixel > its mean)."""
    img.draft("L", (size * 4, size * 4))  # JPEG: decode at a reduced scale; other formats ignore it
    small = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return (small > small.mean()).ravel()


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans → (n,) uint64."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").ravel().astype(np.uint64)


def scan_images(paths, mode: str = "off", hashes: bool = True, n_jobs: int = 1) -> pd.DataFrame:
    """Per image: width, height, mode (from the header, pixels not decoded), hash (uint64), ok.

    Unreadable images get ok=False, mode "unreadable" and no hash (they are never near duplicates).
    Each image is opened once; with `n_jobs` > 1 (joblib's convention, -1 = every core) chunks of
    images are read by worker processes, worth it from a few thousand images.
    """
    from joblib import Parallel, delayed

    from pipeline.progress import progress

    paths = [str(p) for p in paths]
    chunks = [paths[s:s + _SCAN_CHUNK] for s in range(0, len(paths), _SCAN_CHUNK)]
    if n_jobs == 1 or len(paths) < _PARALLEL_FROM:
        parts = (_scan_chunk(c, hashes) for c in chunks)
    else:
        parts = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_scan_chunk)(c, hashes) for c in chunks)
    frames = []
    with progress(parts, len(paths), "[eda] reading images", mode=mode) as shown:
        for part in parts:
            frames.append(part)
            shown.update(len(part))
    if not frames:
        return pd.DataFrame({"width": np.zeros(0, np.int64), "height": np.zeros(0, np.int64), "mode": [],
                             "ok": np.zeros(0, bool), "hash": np.zeros(0, np.uint64)})
    return pd.concat(frames, ignore_index=True)


def _scan_chunk(paths: list[str], hashes: bool) -> pd.DataFrame:
    widths = np.zeros(len(paths), dtype=np.int64)
    heights = np.zeros(len(paths), dtype=np.int64)
    modes = []
    ok = np.zeros(len(paths), dtype=bool)
    bits = np.zeros((len(paths), _HASH_SIZE * _HASH_SIZE), dtype=bool)
    for i, path in enumerate(paths):
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
    complete: bool = True      # False: the search stopped at `limit` pairs of distinct hashes (counts are lower bounds)


class _Collector:
    def __init__(self, folds: np.ndarray | None, limit: int):
        self.folds, self.limit = folds, limit
        self.kept: list[np.ndarray] = []
        self.n_kept = self.total = self.same_fold = 0
        self.total_known: int | None = None     # set when the pairs were counted without listing them

    def add(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Count the pairs (in different folds, and in one) and keep them while there is room."""
        if self.folds is not None:
            same = self.folds[i] == self.folds[j]
            self.same_fold += int(same.sum())
            i, j, d = i[~same], j[~same], d[~same]
        self.total += len(i)
        self._room_for(i, j, d)

    def keep(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Keep the pairs in different folds while there is room (already counted)."""
        if self.folds is not None:
            cross = self.folds[i] != self.folds[j]
            i, j, d = i[cross], j[cross], d[cross]
        self._room_for(i, j, d)

    def _room_for(self, i, j, d) -> None:
        room = self.limit - self.n_kept
        if room > 0 and len(i):
            block = np.stack([i, j, d], axis=1)[:room].astype(np.int64)
            self.kept.append(block)
            self.n_kept += len(block)

    def result(self, method: str, complete: bool = True) -> NearDuplicates:
        pairs = np.concatenate(self.kept) if self.kept else np.zeros((0, 3), dtype=np.int64)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], pairs[:, 2])) if len(pairs) else np.zeros(0, int)
        total = self.total if self.total_known is None else self.total_known
        return NearDuplicates(pairs[order], total, self.same_fold, method, complete)


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


def _chunk_masks(hashes: np.ndarray, n_chunks: int) -> list[np.uint64] | None:
    """`n_chunks` masks sharing out the bits on which `hashes` differ, or None when fewer bits differ.

    Bits every hash agrees on tell nothing apart and are left out; the others are dealt round-robin,
    most evenly split first, so every chunk divides the hashes about as well as the others.
    """
    bits = np.unpackbits(np.ascontiguousarray(hashes).view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    if np.little_endian is False:   # pragma: no cover - the byte order of a uint64 view
        bits = bits.reshape(-1, 8, 8)[:, ::-1].reshape(-1, 64)
    share = bits.mean(axis=0)
    varying = np.flatnonzero((share > 0) & (share < 1))
    if len(varying) < n_chunks:
        return None
    balance = np.minimum(share, 1 - share)[varying]
    dealt = varying[np.argsort(-balance, kind="stable")]
    return [np.uint64(sum(1 << int(b) for b in dealt[k::n_chunks])) for k in range(n_chunks)]


def _differ_on_all(hashes: np.ndarray, i: np.ndarray, j: np.ndarray, masks) -> np.ndarray:
    keep = np.ones(len(i), dtype=bool)
    for m in masks:
        keep &= (hashes[i] & m) != (hashes[j] & m)
    return keep


def _run_pairs(members: np.ndarray, run_of: np.ndarray, eligible: np.ndarray, longest: int):
    """Every pair (a, b) of positions a < b in one run, for the runs marked `eligible` (sorted order)."""
    firsts, seconds = [], []
    pos = np.flatnonzero(eligible)
    for offset in range(1, longest):
        a = pos[pos + offset < len(members)]
        a = a[run_of[a + offset] == run_of[a]]
        firsts.append(members[a])
        seconds.append(members[a + offset])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    return np.minimum(i, j), np.maximum(i, j)


def _distinct_hash_pairs(hashes: np.ndarray, max_distance: int, cap: int) -> tuple[np.ndarray, np.ndarray,
                                                                                  np.ndarray, bool]:
    """Pairs (i < j) of DISTINCT hashes within `max_distance` bits, never comparing every pair.

    Pigeonhole: two hashes within d bits agree exactly on at least one of d+1 chunks of the bits they
    may differ in, so only hashes sharing a chunk value are compared. A bucket too large to compare pair
    by pair is split again the same way on the bits its hashes still differ in (a chunk value most
    images share, such as a dark top row, is such a bucket); a pair is kept only in the first chunk it
    shares at every level, so it is found once. Every chunk holds a bit the bucket's hashes differ in,
    so a bucket shrinks at every level, and the cost follows the pairs found, not n^2.

    Images that all look alike (one template, a dark background) can have a number of close pairs that
    grows as n^2: the search stops once `cap` pairs are found; the last value is False then.
    """
    n_chunks = max_distance + 1
    found: list[tuple[np.ndarray, np.ndarray]] = []
    n_found = 0

    def keep(i, j, first_of):      # pairs within the distance whose path is the first chunk shared everywhere
        nonlocal n_found
        close = _popcount(hashes[i] ^ hashes[j]) <= max_distance
        for earlier in first_of:
            close &= _differ_on_all(hashes, i, j, earlier)
        found.append((i[close], j[close]))
        n_found += int(close.sum())

    stack = [(np.arange(len(hashes)), ())]
    while stack and n_found < cap:
        members, outer = stack.pop()
        masks = _chunk_masks(hashes[members], n_chunks)
        if masks is None:      # they differ in at most d bits: every pair is close; listed block by block
            for start in range(0, len(members), _BLOCK):
                rows = min(_BLOCK, len(members) - start)
                i, j = np.nonzero(np.triu(np.ones((rows, len(members)), bool), 1 + start))
                keep(members[i + start], members[j], outer)
            continue
        for c, mask in enumerate(masks):
            if n_found >= cap:
                break
            keys = hashes[members] & mask
            order = np.argsort(keys, kind="stable")
            ordered, ordered_keys = members[order], keys[order]
            starts = np.flatnonzero(np.r_[True, ordered_keys[1:] != ordered_keys[:-1]])
            lengths = np.diff(np.r_[starts, len(ordered)])
            run_of = np.repeat(np.arange(len(starts)), lengths)
            small = (lengths >= 2) & (lengths <= _LEAF)
            if small.any():
                i, j = _run_pairs(ordered, run_of, small[run_of], int(lengths[small].max()))
                keep(i, j, outer + (masks[:c],))
            for k in np.flatnonzero(lengths > _LEAF):
                stack.append((ordered[starts[k]:starts[k] + lengths[k]], outer + (masks[:c],)))
    complete = n_found < cap
    i = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    j = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
    return i, j, _popcount(hashes[i] ^ hashes[j]) if len(i) else np.zeros(0, np.int64), complete


def _bucketed_pairs(hashes: np.ndarray, index: np.ndarray, max_distance: int, folds, limit: int) -> NearDuplicates:
    """Exact and never quadratic in the images: identical hashes are counted by value (a thousand blank
    images make 499,500 pairs, counted, not listed one by one), distinct ones paired by chunk buckets.

    Pairs are counted exactly (in different folds, and in one, when `folds` is given) unless more than
    `limit` pairs of distinct hashes exist (then the counts are lower bounds, `complete` is False); the
    `limit` kept are the closest of those found (distance, then row order).
    """
    values, inverse, counts = np.unique(hashes[index], return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    members = np.split(index[order], np.cumsum(counts)[:-1])      # rows of each distinct hash, ascending
    p, q, d, complete = _distinct_hash_pairs(values, max_distance, cap=limit)
    if folds is not None:
        fold_ids, fold_codes = np.unique(np.asarray(folds)[index], return_inverse=True)
        per_fold = np.zeros((len(values), len(fold_ids)), dtype=np.int64)
        np.add.at(per_fold, (inverse, fold_codes.ravel()), 1)
        same = int((per_fold * (per_fold - 1) // 2).sum() + (per_fold[p] * per_fold[q]).sum())
    else:
        same = 0
    all_pairs = int((counts * (counts - 1) // 2).sum() + (counts[p] * counts[q]).sum())
    out = _Collector(None if folds is None else np.asarray(folds), limit)
    out.total_known = all_pairs - same
    out.same_fold = same
    for v in np.flatnonzero(counts > 1):                   # distance 0 first
        if out.n_kept >= limit:
            break
        i, j = np.triu_indices(counts[v], 1)
        out.keep(members[v][i], members[v][j], np.zeros(len(i), np.int64))
    for k in np.lexsort((q, p, d)):                          # then the closest distinct pairs
        if out.n_kept >= limit:
            break
        i, j = np.meshgrid(members[p[k]], members[q[k]], indexing="ij")
        i, j = i.ravel(), j.ravel()
        out.keep(np.minimum(i, j), np.maximum(i, j), np.full(len(i), d[k], np.int64))
    method = f"pairs sharing one of {max_distance + 1} hash chunks compared"
    if not complete:
        method += f"; the search stopped after {limit} pairs of distinct hashes, so there are more"
    return out.result(method + (" (exact)" if complete else ""), complete)


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
        return _bucketed_pairs(hashes, index, max_distance, folds, limit)
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
