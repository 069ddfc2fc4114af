"""How well image b can be made to match image a: a batched Gauss–Newton fit of shift, zoom, rotation and exposure.

A re-photographed copy differs from its original by a small geometric change (a shift, sub-pixel included, a
slight zoom or rotation, a crop resized back) and a photometric one (exposure, contrast). Comparing raw
pixels mistakes such a copy for a stranger; comparing after the best warp does not. For every pair the fit
finds the affine warp (shift, scale per axis, rotation) and the gain and offset that bring b onto a, from coarse
(heavily blurred, where a shift of a few pixels is a small change) to fine, and the match is the masked
normalised cross-correlation of a and warped b where b covers a. A warp that magnifies b magnifies its blur
too, so the match compares it with a blurred as much (a crop resized back is otherwise told from its
original by its softness alone). Distinct look-alikes stay apart after the fit: their shapes differ, not
only their pose.

All pairs are fitted at once in chunks (``torch``: a few small tensor operations per iteration), so
hundreds of thousands of pairs cost seconds to minutes on a CPU, not one optimiser per pair.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Aligner", "aligned_distance", "nearest_per_row", "intensity_moments", "resample"]

# Coarse to fine: blur sigma (pixels of the image) and Gauss–Newton iterations. A 2-px shift of a 28-px
# image is within the basin of the coarse level, fitted at half size; a crop's zoom of up to 25 % takes about
# five steps there to settle. The fine level is also where the match is measured: at sigma 0.85 a plain
# T-shirt's faint print still tells it from another plain T-shirt, while JPEG noise and resampling are
# smoothed (measured on fashion-MNIST copies: sigma 0.7 loses re-compressed copies, 1.0 cropped ones).
_COARSE_SIGMA, _COARSE_ITERS = 2.0, 5
_FINE_SIGMA, _FINE_ITERS = 0.85, 2
# The blur of a, as multiples of the fine sigma, that the match may pick to equal warped b's: b magnified by
# s (the warp's scale) is blurred s times as much.
_MATCH_BLURS = (0.8, 0.9, 1.0, 1.12, 1.25, 1.4)
_MIN_OVERLAP = 0.5     # of a's pixels that warped b must cover, else the pair is not a match
_CHUNK = 512          # pairs per batch: small enough that the batch's tensors stay in the CPU's cache
_DAMPING = 1e-3


def _standardise(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return flat.view_as(x)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/du, d/dv of x in grid_sample's normalised coordinates (the image spans -1..1)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2 * (w / 2)
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2 * (h / 2)
    return gx, gy


_GEOMETRY = 6          # an affine warp: a crop resized back scales each axis by its own factor
_PARAMS = _GEOMETRY + 2  # and the exposure: gain, offset


def _theta(p: torch.Tensor) -> torch.Tensor:
    """grid_sample's (n, 2, 3) matrix of the warp p[:, :6] = (a11-1, a12, a21, a22-1, tx, ty)."""
    return torch.stack([torch.stack([1 + p[:, 0], p[:, 1], p[:, 4]], 1),
                        torch.stack([p[:, 2], 1 + p[:, 3], p[:, 5]], 1)], 1)


def _pixel_centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, h*w) x and y of every pixel centre in grid_sample's normalised coordinates (align_corners=False)."""
    ys, xs = ((torch.arange(h) * 2 + 1) / h - 1), ((torch.arange(w) * 2 + 1) / w - 1)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x.reshape(1, -1), y.reshape(1, -1)


def _centres(h: int, w: int) -> torch.Tensor:
    """(h*w, 3) homogeneous pixel centres (x, y, 1), the rows grid_sample's affine theta multiplies."""
    x, y = _pixel_centres(h, w)
    return torch.stack([x[0], y[0], torch.ones_like(x[0])], 1)


def resample(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int],
             padding: str = "border") -> torch.Tensor:
    """(n, c, *size) `images` (n, c, h, w) sampled where grid_sample's affine `theta` (n, 2, 3) sends the pixel
    centres of a `size` frame: F.affine_grid's result, without its (n, h, w, 3) intermediate."""
    grid = _grid(_centres(*size), theta).view(len(theta), *size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _warp(b: torch.Tensor, p: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """b's channels sampled where the warp p sends a's pixel `centres`: (n, c, h*w), and (n, h*w) 1 where all
    four bilinear neighbours lie inside b, else 0 (computed, not sampled: one channel less to interpolate)."""
    n, c, h, w = b.shape
    grid = _grid(centres, _theta(p))
    sampled = F.grid_sample(b, grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (grid[..., 0].abs() <= 1 - 1 / w + 1e-4) & (grid[..., 1].abs() <= 1 - 1 / h + 1e-4)
    return sampled.view(n, c, h * w), inside.to(b.dtype)


def _grid(centres: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(n, h*w, 2): `centres` (h*w, 3) sent by each of the n affine `theta` (n, 2, 3). As an einsum: a batched
    matmul of the broadcast centres ran about 8x slower on a CPU (measured at 512 pairs of 28x28)."""
    return torch.einsum("pc,nrc->npr", centres, theta)


def _fit_level(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, iters: int) -> torch.Tensor:
    """Gauss–Newton steps on (warp p[:, :6], gain p[:, 6], offset p[:, 7]) for b warped onto a."""
    n, _, h, w = a.shape
    gx, gy = _gradients(b)
    stack = torch.cat([b, gx, gy], 1)
    x, y = _pixel_centres(h, w)
    centres = _centres(h, w)
    target = a.reshape(n, -1)
    eye = _DAMPING * torch.eye(_PARAMS).expand(n, _PARAMS, _PARAMS)
    # The Jacobian's rows (parameters first: each written contiguously), and the residual as one more row.
    jac = torch.empty(n, _PARAMS + 1, h * w)
    jac[:, 7] = 1.0
    for _ in range(iters):
        sampled, mask = _warp(stack, p, centres)
        warped, du, dv = sampled.unbind(1)
        gain, offset = p[:, 6:7], p[:, 7:8]
        gu, gv = gain * du, gain * dv
        torch.mul(gu, x, out=jac[:, 0])
        torch.mul(gu, y, out=jac[:, 1])
        torch.mul(gv, x, out=jac[:, 2])
        torch.mul(gv, y, out=jac[:, 3])
        jac[:, 4], jac[:, 5], jac[:, 6] = gu, gv, warped
        torch.sub(gain * warped + offset, target, out=jac[:, _PARAMS])
        products = torch.bmm(jac[:, :_PARAMS] * mask.unsqueeze(1), jac.transpose(1, 2))   # one product: H and g
        p = p - torch.linalg.solve(products[:, :, :_PARAMS] + eye, products[:, :, _PARAMS])
        p[:, :4] = p[:, :4].clamp(-0.35, 0.35)         # a copy is not zoomed, rotated or cropped beyond this
        p[:, 4:6] = p[:, 4:6].clamp(-0.5, 0.5)         # nor shifted by more than a quarter of the frame
    return p


def _match(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """1 - masked normalised cross-correlation of a and warped b (1 where b covers too little of a)."""
    n, _, h, w = a.shape
    sampled, mask = _warp(b, p, _centres(h, w))
    warped = sampled[:, 0]
    count = mask.sum(1).clamp_min(1)
    target = a.reshape(n, -1)

    def centred(v):
        return (v - (v * mask).sum(1, keepdim=True) / count.unsqueeze(1)) * mask

    ca, cb = centred(target), centred(warped)
    corr = (ca * cb).sum(1) / ((ca.square().sum(1) * cb.square().sum(1)).sqrt().clamp_min(1e-9))
    distance = 1 - corr
    return torch.where(count / (h * w) >= _MIN_OVERLAP, distance, torch.ones_like(distance))


def intensity_moments(images: torch.Tensor) -> torch.Tensor:
    """(n, 4) intensity centroid and spread per axis (cx, cy, sx, sy) in normalised coordinates.

    The weight of a pixel is its distance from the background (the median of the border), so a dark
    subject on a light ground and a light one on a dark ground are both found.
    """
    n, _, h, w = images.shape
    flat = images.reshape(n, h, w)
    border = torch.cat([flat[:, 0], flat[:, -1], flat[:, :, 0], flat[:, :, -1]], 1)
    weight = (flat - border.median(1).values.view(n, 1, 1)).abs()
    weight = weight / weight.sum((1, 2), keepdim=True).clamp_min(1e-6)
    x, y = (c.view(1, h, w) for c in _pixel_centres(h, w))
    cx, cy = (weight * x).sum((1, 2)), (weight * y).sum((1, 2))
    sx = ((weight * (x - cx.view(n, 1, 1)) ** 2).sum((1, 2))).sqrt().clamp_min(0.05)
    sy = ((weight * (y - cy.view(n, 1, 1)) ** 2).sum((1, 2))).sqrt().clamp_min(0.05)
    return torch.stack([cx, cy, sx, sy], 1)


def _initial_warp(ma: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
    """The warp that maps a's centroid and spread onto b's: a start close to a copy's true pose."""
    p = torch.zeros(len(ma), _PARAMS, dtype=ma.dtype)
    scale_x, scale_y = mb[:, 2] / ma[:, 2], mb[:, 3] / ma[:, 3]
    p[:, 0], p[:, 3] = scale_x - 1, scale_y - 1
    p[:, 4], p[:, 5] = mb[:, 0] - scale_x * ma[:, 0], mb[:, 1] - scale_y * ma[:, 1]
    p[:, :4] = p[:, :4].clamp(-0.35, 0.35)
    p[:, 4:6] = p[:, 4:6].clamp(-0.5, 0.5)
    p[:, 6] = 1.0
    return p


def _blur(images: np.ndarray, sigma: float) -> torch.Tensor:
    """(n, 1, h, w) Gaussian blur, edges replicated (scipy: far faster than a 1-channel convolution in torch)."""
    from scipy.ndimage import gaussian_filter
    return torch.from_numpy(gaussian_filter(images, sigma=(0, sigma, sigma), mode="nearest")).unsqueeze(1)


def _levels(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image once (not once per pair): moments, the coarse level (blurred, at half size: a quarter of the
    pixels to fit) and the fine level (lightly blurred, full size)."""
    coarse = _blur(images, _COARSE_SIGMA)
    coarse = F.avg_pool2d(coarse, 2) if min(images.shape[-2:]) >= 16 else coarse
    return (intensity_moments(torch.from_numpy(images).unsqueeze(1)), _standardise(coarse),
            _standardise(_blur(images, _FINE_SIGMA)))


def _blur_matched(images: np.ndarray, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Images `rows` (the targets a) blurred as much as b is once warped by p: the fine sigma times the warp's
    scale, the nearest of _MATCH_BLURS. Each (row, blur) once per chunk: the candidate pairs come sorted by
    row, so a chunk holds each row's pairs together and most share a blur."""
    scale = 1 / torch.linalg.det(_theta(p)[:, :, :2]).abs().clamp_min(1e-3).sqrt()
    level = (torch.tensor(_MATCH_BLURS).view(1, -1) - scale.view(-1, 1)).abs().argmin(1)
    wanted, inverse = torch.unique(rows * len(_MATCH_BLURS) + level, return_inverse=True)
    blurred = torch.empty(len(wanted), 1, *images.shape[-2:])
    for k in (wanted % len(_MATCH_BLURS)).unique().tolist():
        picked = wanted % len(_MATCH_BLURS) == k
        blurred[picked] = _standardise(_blur(images[(wanted[picked] // len(_MATCH_BLURS)).numpy()],
                                             _FINE_SIGMA * _MATCH_BLURS[k]))
    return blurred[inverse]


def _coarse_chunk(moments: torch.Tensor, coarse: torch.Tensor, i: torch.Tensor, j: torch.Tensor):
    """The pairs (i, j) of one chunk fitted at the coarse level: (i, j) as fitted, the warp, the coarse match."""
    ma, mb = moments[i], moments[j]
    # Warp the wider view onto the closer one (a crop resized back, a zoom-in): it then covers the whole
    # target, and the fit converges far more often than the other way round.
    swap = ma[:, 2] * ma[:, 3] < mb[:, 2] * mb[:, 3]
    i, j = torch.where(swap, j, i), torch.where(swap, i, j)
    p = _fit_level(coarse[i], coarse[j], _initial_warp(moments[i], moments[j]), _COARSE_ITERS)
    return i, j, p, _match(coarse[i], coarse[j], p)


def _fine_chunk(images: np.ndarray, fine: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                p: torch.Tensor) -> torch.Tensor:
    """The fine level's fit from the coarse warp p, and the match (a blurred as warped b)."""
    p = _fit_level(fine[i], fine[j], p, _FINE_ITERS)
    return _match(_blur_matched(images, i, p), fine[j], p)


def nearest_per_row(i: np.ndarray, j: np.ndarray, distance: np.ndarray, per_row: int) -> np.ndarray:
    """True for each pair (i, j) among the `per_row` smallest `distance`s of i's pairs or of j's.

    Each row's nearest: 0-1 for row 0, 1-4 for row 1, 0-2 for row 2 (its only pair), 3-4 for rows 3 and 4;
    0-3 and 0-4 are nobody's:

    >>> i, j = np.array([0, 0, 0, 0, 3, 1]), np.array([1, 2, 3, 4, 4, 4])
    >>> nearest_per_row(i, j, np.array([.1, .2, .9, .5, .05, .07]), 1).tolist()
    [True, True, False, False, True, True]
    """
    rows = np.concatenate([i, j])
    d = np.concatenate([distance, distance])
    order = np.lexsort((d, rows))
    sorted_rows = rows[order]
    rank = np.arange(len(rows)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    near = np.zeros(len(rows), dtype=bool)
    near[order] = rank < per_row
    return near[:len(i)] | near[len(i):]


class Aligner:
    """The pair fit of `images` (n, h, w): each image's levels computed once, then any pairs' distances."""

    def __init__(self, images: np.ndarray):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        with torch.no_grad():
            self.moments, self.coarse, self.fine = _levels(self.images)

    def distance(self, i: np.ndarray, j: np.ndarray, screen: int | None = None) -> np.ndarray:
        """For each pair (i[k], j[k]) of rows, 1 - the correlation after the best fit.

        0 is an exact copy up to pose and exposure; ordinary same-class look-alikes sit around 0.01-0.05.
        With `screen`, only the pairs among either image's `screen` nearest after the coarse fit go on to the
        fine one (about two thirds of a pair's cost); the others are NaN: a copy is among its original's
        nearest at the coarse level already, and so are the look-alikes that decide an image's neighbourhood.
        """
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        out = np.full(len(i), np.nan if screen else 1.0, dtype=np.float32)
        if not len(i):
            return out
        fitted_i, fitted_j = torch.empty(len(i), dtype=torch.int64), torch.empty(len(i), dtype=torch.int64)
        warps, coarse_d = torch.empty(len(i), _PARAMS), torch.empty(len(i))

        def coarse(sl: slice) -> None:
            fitted_i[sl], fitted_j[sl], warps[sl], coarse_d[sl] = _coarse_chunk(
                self.moments, self.coarse, torch.from_numpy(i[sl]), torch.from_numpy(j[sl]))

        def fine(chunk: np.ndarray) -> None:
            k = torch.from_numpy(chunk)
            out[chunk] = _fine_chunk(self.images, self.fine, fitted_i[k], fitted_j[k], warps[k]).numpy()

        _in_threads(coarse, [slice(start, start + _CHUNK) for start in range(0, len(i), _CHUNK)])
        kept = np.flatnonzero(nearest_per_row(i, j, coarse_d.numpy(), screen)) if screen else np.arange(len(i))
        _in_threads(fine, [kept[start:start + _CHUNK] for start in range(0, len(kept), _CHUNK)])
        return out


def _in_threads(work, chunks: list) -> None:
    """`work(chunk)` for every chunk, one chunk per thread on each core this process may use, each torch op
    single-threaded. Parallel chunks rather than parallel ops: every op on one chunk is small, and an op split
    over two cores waits for both, so on a busy machine (another job holding one core) the scan's CPU time
    more than doubled; whole chunks never wait on each other."""
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def run(chunk) -> None:
        with torch.no_grad():              # grad mode is per thread
            work(chunk)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, chunks))
    finally:
        torch.set_num_threads(threads)


def aligned_distance(images: np.ndarray, i: np.ndarray, j: np.ndarray, screen: int | None = None) -> np.ndarray:
    """`Aligner(images).distance(i, j, screen)`: for one set of pairs."""
    return Aligner(images).distance(i, j, screen)
