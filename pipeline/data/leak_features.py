"""Pixel features for the leak check: the images at a working size, and descriptors that find copies' neighbours.

Nothing here is downloaded or trained, so the check runs before the split (``folds.auto_groups``). Three
descriptors propose candidate pairs, each cheap and each blind to a different re-photographing change:

* the **Fourier magnitude** of the blurred, windowed image ignores where the subject sits (a shift only
  changes the phase), and survives exposure (the image is standardised);
* the **moment-normalised thumbnail** re-centres the subject on its intensity centroid and rescales each axis to
  its spread, so a zoom or a crop resized back lands on the same frame.

and a third, the **blurred thumbnail**, catches what both miss when the change is only noise. A copy is
among the nearest neighbours of its original under at least one of them; the neighbours are found
by an index (``faiss``, exact), never an all-pairs matrix, and then verified
by alignment (:mod:`pipeline.data.leak_align`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_SIZE", "MAX_SIZE", "working_size", "load_gray", "fourier_descriptor", "moment_descriptor",
           "thumbnail_descriptor", "nearest_neighbours"]

# The working size follows the images (their median short side), within these bounds: below 16 px a
# subject has too little shape to tell from its look-alikes; above 32 px the alignment costs 4x more per
# doubling and re-photographing changes are already resolved.
MIN_SIZE, MAX_SIZE = 16, 32
_SIZE_SAMPLE = 256       # images opened (header only) to choose the size
_MOMENT_SIZE = 16
_FOURIER_KEEP = 0.5      # the central (low-frequency) share of the spectrum kept, each axis
_REDUCED_DIMS = 32       # descriptor dimensions kept (PCA) for a large class: the index's cost is linear in it
_REDUCE_ABOVE = 5000     # class size above which descriptors are reduced
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


def fourier_descriptor(images: np.ndarray) -> np.ndarray:
    """Log-magnitude of the low frequencies of each blurred, Hann-windowed image: blind to shifts."""
    return np.concatenate([_fourier(images[start:start + _CHUNK]) for start in range(0, len(images), _CHUNK)])


def _fourier(images: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    n, h, w = images.shape
    blurred = gaussian_filter(images, sigma=(0, 1, 1))
    blurred = blurred - blurred.mean(axis=(1, 2), keepdims=True)
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spectrum = np.fft.fftshift(np.abs(np.fft.fft2(blurred * window)), axes=(1, 2))
    kh, kw = max(2, int(h * _FOURIER_KEEP) // 2), max(2, int(w * _FOURIER_KEEP) // 2)
    centre = spectrum[:, h // 2 - kh:h // 2 + kh, w // 2 - kw:w // 2 + kw]
    return _unit_rows(np.log1p(centre))


def moment_descriptor(images: np.ndarray, size: int = _MOMENT_SIZE) -> np.ndarray:
    """Each image re-centred on its intensity centroid and scaled per axis to its spread: blind to shifts,
    zooms and crops. The frame spans two spreads each side of the centroid."""
    import torch
    import torch.nn.functional as F

    from pipeline.data.leak_align import intensity_moments
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    m = intensity_moments(x)
    zero = torch.zeros(len(x))
    theta = torch.stack([torch.stack([2 * m[:, 2], zero, m[:, 0]], 1), torch.stack([zero, 2 * m[:, 3], m[:, 1]], 1)], 1)
    frames = []
    for start in range(0, len(x), _CHUNK):
        sl = slice(start, start + _CHUNK)
        grid = F.affine_grid(theta[sl], [len(theta[sl]), 1, size, size], align_corners=False)
        frames.append(F.grid_sample(x[sl], grid, mode="bilinear", padding_mode="border", align_corners=False))
    return _unit_rows(torch.cat(frames).numpy())


def thumbnail_descriptor(images: np.ndarray) -> np.ndarray:
    """The image itself, heavily blurred and halved: a shift of a pixel or two, or JPEG noise, barely moves it."""
    from scipy.ndimage import gaussian_filter
    return _unit_rows(gaussian_filter(images, sigma=(0, 2, 2))[:, ::2, ::2])


def nearest_neighbours(descriptor: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n, min(k, n-1)) row positions of each row's nearest other rows (Euclidean on unit rows = cosine).

    Exact search (``faiss.IndexFlatL2``); a large class's descriptors are first reduced by PCA, the search's
    cost being linear in the dimensions.
    """
    import faiss
    from sklearn.decomposition import PCA
    n = len(descriptor)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    if n > _REDUCE_ABOVE and descriptor.shape[1] > _REDUCED_DIMS:
        descriptor = PCA(_REDUCED_DIMS, svd_solver="randomized", random_state=seed).fit_transform(descriptor)
    descriptor = np.ascontiguousarray(descriptor, dtype=np.float32)
    index = faiss.IndexFlatL2(descriptor.shape[1])
    index.add(descriptor)
    found = index.search(descriptor, k + 1)[1]
    own = found == np.arange(n)[:, None]
    # Drop each row itself (usually first; not always, when another row is identical).
    keep = np.where(own.any(1, keepdims=True), ~own, np.arange(k + 1)[None, :] < k)
    return found[keep].reshape(n, k)
