"""Pixel features for the leak check: the images at a working size, and the candidate pairs' neighbours.

Nothing here is downloaded or trained, so the check runs before the split (``folds.auto_groups``). Two
descriptors propose candidate pairs, each blind to part of what re-photographing changes:

* the **Fourier magnitude** of the blurred, windowed image ignores where the subject sits (a shift only
  changes the phase) and its exposure (the image is standardised);
* the **moment-normalised thumbnail** re-centres the subject on its intensity centroid and rescales each axis
  to its spread: a zoom out, or a subject moved within the frame, lands on the same frame.

Neither is blind to a zoom in that cuts the subject (a crop resized back) or to a rotation, so every image is
also indexed in a few **poses** (zoomed in by 12 and 25 %, rotated by ±8°) and each image's nearest
neighbours are searched among all poses of all others: a crop of an image is close to that image zoomed in.
The neighbours come from an index (``faiss``), never an all-pairs matrix, and are then verified by alignment
(:mod:`pipeline.data.leak_align`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_SIZE", "MAX_SIZE", "FOURIER_POSES", "MOMENT_POSES", "working_size", "load_gray",
           "posed", "fourier_descriptor", "moment_descriptor", "nearest_in_poses"]

# The working size follows the images (their median short side), within these bounds: below 16 px a
# subject has too little shape to tell from its look-alikes; above 32 px the alignment costs 4x more per
# doubling and re-photographing changes are already resolved.
MIN_SIZE, MAX_SIZE = 16, 32
# (zoom, degrees) of each pose an image is indexed in, the image itself first. Zooms of 1.12 and 1.25 leave
# any zoom-in of 1.0-1.35 within ~6 % of one of them, which the blurred descriptors absorb; ±8° halves the
# angle left between a rotated copy and its original. The Fourier magnitude is the descriptor a rotation
# moves most (its spectrum turns with it), so only it is indexed rotated.
FOURIER_POSES = ((1.0, 0.0), (1.12, 0.0), (1.25, 0.0), (1.0, 8.0), (1.0, -8.0), (1.12, 8.0), (1.12, -8.0))
MOMENT_POSES = ((1.0, 0.0), (1.12, 0.0), (1.25, 0.0))
_SIZE_SAMPLE = 256       # images opened (header only) to choose the size
_MOMENT_SIZE = 16
_FOURIER_KEEP = 0.5      # the central (low-frequency) share of the spectrum kept, each axis
_REDUCED_DIMS = 32       # descriptor dimensions kept (PCA) for a large class: the index's cost is linear in it
_REDUCE_ABOVE = 2000     # class size above which descriptors are reduced
_EXACT_UP_TO = 200_000   # indexed vectors (images x poses) up to which the search is exact (~30,000 images)
_PROBES = 16             # cells an approximate search visits, of sqrt(vectors)
_TRAIN_PER_CELL = 40     # vectors per cell its k-means is trained on (faiss asks for at least 39)
_CHUNK = 4096            # images per batch where a step's intermediates (complex spectra) are large


def working_size(paths) -> int:
    """The side (px) the check works at: the images' median short side, clipped to MIN_SIZE..MAX_SIZE."""
    from PIL import Image
    paths = list(paths)
    if not paths:
        return MIN_SIZE
    picks = np.linspace(0, len(paths) - 1, num=min(len(paths), _SIZE_SAMPLE)).astype(int)
    sides = []
    for k in picks:
        with Image.open(paths[k]) as img:
            sides.append(min(img.size))
    return int(np.clip(np.median(sides), MIN_SIZE, MAX_SIZE))


def load_gray(paths, size: int) -> np.ndarray:
    """(n, size, size) float32 luminance in 0..1; a file that cannot be read is an error naming it."""
    from PIL import Image
    paths = list(paths)
    out = np.zeros((len(paths), size, size), dtype=np.float32)
    for k, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.draft("L", (size * 2, size * 2))      # JPEG: decode at a reduced scale
                gray = img.convert("L")
                out[k] = np.asarray(gray.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"leak check: cannot read the training image {path} ({err}); "
                             "run `make check` to list every unreadable image") from None
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-6)


def posed(images: np.ndarray, zoom: float, degrees: float) -> np.ndarray:
    """`images` (n, h, w) zoomed in by `zoom` and rotated by `degrees` about the centre (edges replicated)."""
    import torch

    from pipeline.data.leak_align import resample
    if zoom == 1.0 and degrees == 0.0:
        return images
    cos, sin = np.cos(np.deg2rad(degrees)) / zoom, np.sin(np.deg2rad(degrees)) / zoom
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    return resample(x, theta.expand(len(x), 2, 3), images.shape[1:])[:, 0].numpy()


def fourier_descriptor(images: np.ndarray) -> np.ndarray:
    """Log-magnitude of the low frequencies of each blurred, Hann-windowed image: blind to shifts."""
    return np.concatenate([_fourier(images[start:start + _CHUNK]) for start in range(0, len(images), _CHUNK)])


def _fourier(images: np.ndarray) -> np.ndarray:
    """The spectrum of a real image is symmetric (|F(u)| = |F(-u)|): half of it (rfft2) says it all."""
    from scipy.fft import rfft2
    from scipy.ndimage import gaussian_filter
    n, h, w = images.shape
    blurred = gaussian_filter(np.asarray(images, dtype=np.float32), sigma=(0, 1, 1))
    blurred -= blurred.mean(axis=(1, 2), keepdims=True)
    blurred *= np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    kh, kw = max(2, int(h * _FOURIER_KEEP) // 2), max(2, int(w * _FOURIER_KEEP) // 2)
    spectrum = np.abs(rfft2(blurred))                  # (n, h, w // 2 + 1), rows: 0, 1, ..., -1
    low = np.concatenate([spectrum[:, -kh:, :kw + 1], spectrum[:, :kh, :kw + 1]], axis=1)
    return _unit_rows(np.log1p(low))


def moment_descriptor(images: np.ndarray, size: int = _MOMENT_SIZE) -> np.ndarray:
    """Each image re-centred on its intensity centroid and scaled per axis to its spread: blind to shifts and
    to zooms that keep the subject whole. The frame spans two spreads each side of the centroid."""
    import torch

    from pipeline.data.leak_align import intensity_moments, resample
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    m = intensity_moments(x)
    zero = torch.zeros(len(x))
    theta = torch.stack([torch.stack([2 * m[:, 2], zero, m[:, 0]], 1), torch.stack([zero, 2 * m[:, 3], m[:, 1]], 1)], 1)
    frames = [resample(x[start:start + _CHUNK], theta[start:start + _CHUNK], (size, size))
              for start in range(0, len(x), _CHUNK)]
    return _unit_rows(torch.cat(frames).numpy())


def _posed_descriptors(images: np.ndarray, describe, poses) -> np.ndarray:
    """(len(poses), n, d) float32: `describe` of every image in every pose, reduced by PCA for a large set
    (fitted on the images as they are; computed a chunk at a time, so the full-size descriptors of all poses
    are never held at once)."""
    n = len(images)
    reduce = None
    if n > _REDUCE_ABOVE:
        from sklearn.decomposition import PCA
        sample = images[np.linspace(0, n - 1, num=min(n, 20_000)).astype(int)]
        reduce = PCA(_REDUCED_DIMS, svd_solver="randomized", random_state=0).fit(describe(sample))
    out = None
    for p, (zoom, degrees) in enumerate(poses):
        for start in range(0, n, _CHUNK):
            chunk = describe(posed(images[start:start + _CHUNK], zoom, degrees))
            chunk = reduce.transform(chunk) if reduce is not None else chunk
            if out is None:
                out = np.empty((len(poses), n, chunk.shape[1]), dtype=np.float32)
            out[p, start:start + len(chunk)] = chunk
    return out


def _index(vectors: np.ndarray):
    """An exact index for a small set; above it an inverted-file index (k-means cells, a few visited)."""
    import faiss
    dims = vectors.shape[1]
    if len(vectors) <= _EXACT_UP_TO:
        index = faiss.IndexFlatL2(dims)
    else:
        cells = int(np.sqrt(len(vectors)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, cells)
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:cells * _TRAIN_PER_CELL]]
        index.train(sample)
        index.nprobe = _PROBES
    index.add(vectors)
    return index


def nearest_in_poses(images: np.ndarray, describe, poses, k: int) -> np.ndarray:
    """(n, k) row positions of each image's k nearest other images, -1 where fewer exist.

    Every image is indexed in every pose and queried as it is; an image's distance to another is its
    distance to the other's closest pose (so a copy zoomed in, or rotated, is near its original).
    """
    n = len(images)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    vectors = _posed_descriptors(images, describe, poses)
    index = _index(np.ascontiguousarray(vectors.reshape(-1, vectors.shape[2])))
    # Each other image can appear once per pose, the image itself in every pose: ask for enough to keep k.
    found = index.search(np.ascontiguousarray(vectors[0]), min(len(poses) * (k + 1), len(poses) * n))[1]
    return _first_distinct(found % n, k)


def _first_distinct(found: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k distinct entries other than the row itself (faiss pads with -1 -> stays -1)."""
    n, width = found.shape
    rows = np.arange(n)[:, None]
    valid = (found >= 0) & (found != rows)
    # A repeat of an earlier entry in the row is dropped: sort each row's ids, mark the first of each run.
    order = np.argsort(np.where(valid, found, n), axis=1, kind="stable")
    ids = np.take_along_axis(found, order, 1)
    first = np.ones_like(valid)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = np.zeros_like(valid)
    np.put_along_axis(keep, order, first, 1)
    keep &= valid
    # The kept entries in their search order (nearest first), k of them.
    position = np.where(keep, np.arange(width)[None, :], width)
    ranked = np.sort(position, axis=1)[:, :k]
    out = np.where(ranked < width, np.take_along_axis(found, np.minimum(ranked, width - 1), 1), -1)
    return out.astype(np.int64)
