"""How well image b can be made to match image a: a batched Gauss–Newton fit of shift, zoom, rotation and exposure.

A re-photographed copy differs from its original by a small geometric change (a shift, sub-pixel included, a
slight zoom or rotation, a crop resized back) and a photometric one (exposure, contrast). Comparing raw
pixels mistakes such a copy for a stranger; comparing after the best warp does not. For every pair the fit
finds the affine warp (shift, scale per axis, rotation) and the gain and offset that bring b onto a, from coarse
(heavily blurred, where a shift of a few pixels is a small change) to fine, and the match is the masked
normalised cross-correlation of a and warped b where b covers a. Distinct look-alikes stay apart after the
fit: their shapes differ, not only their pose.

All pairs are fitted at once in chunks (``torch``: a few small tensor operations per iteration), so
hundreds of thousands of pairs cost seconds to minutes on a CPU, not one optimiser per pair.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["aligned_distance", "intensity_moments"]

# Coarse to fine: blur sigma (pixels of the image) and Gauss–Newton iterations. A 2-px shift of a 28-px
# image is within the basin of the coarse level, fitted at half size; the fine level is also where the match
# is measured: any finer, JPEG noise and resampling dominate a copy's residual.
_COARSE_SIGMA, _COARSE_ITERS = 2.0, 3
_FINE_SIGMA, _FINE_ITERS = 1.0, 1
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


def _sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _fit_level(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, iters: int) -> torch.Tensor:
    """Gauss–Newton steps on (warp p[:, :6], gain p[:, 6], offset p[:, 7]) for b warped onto a."""
    n, _, h, w = a.shape
    gx, gy = _gradients(b)
    stack = torch.cat([b, gx, gy, torch.ones_like(b)], 1)
    base = F.affine_grid(_theta(torch.zeros(1, _PARAMS)), [1, 1, h, w], align_corners=False)
    x, y = base[..., 0].reshape(1, -1), base[..., 1].reshape(1, -1)
    target = a.reshape(n, -1)
    eye = _DAMPING * torch.eye(_PARAMS).expand(n, _PARAMS, _PARAMS)
    for _ in range(iters):
        grid = F.affine_grid(_theta(p), [n, 1, h, w], align_corners=False)
        warped, du, dv, mask = _sample(stack, grid).reshape(n, 4, -1).unbind(1)
        mask = (mask > 0.999).to(a.dtype)
        gain, offset = p[:, 6:7], p[:, 7:8]
        gu, gv = gain * du, gain * dv
        jac = torch.stack([gu * x, gu * y, gv * x, gv * y, gu, gv, warped, torch.ones_like(warped)], 2)
        residual = (gain * warped + offset - target) * mask
        hessian = torch.einsum("npi,npj->nij", jac * mask.unsqueeze(2), jac) + eye
        gradient = torch.einsum("npi,np->ni", jac, residual)
        p = p - torch.linalg.solve(hessian, gradient)
        p[:, :4] = p[:, :4].clamp(-0.35, 0.35)         # a copy is not zoomed, rotated or cropped beyond this
        p[:, 4:6] = p[:, 4:6].clamp(-0.5, 0.5)         # nor shifted by more than a quarter of the frame
    return p


def _match(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """1 - masked normalised cross-correlation of a and warped b (1 where b covers too little of a)."""
    n, _, h, w = a.shape
    grid = F.affine_grid(_theta(p), [n, 1, h, w], align_corners=False)
    warped, mask = _sample(torch.cat([b, torch.ones_like(b)], 1), grid).reshape(n, 2, -1).unbind(1)
    mask = (mask > 0.999).to(a.dtype)
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
    base = F.affine_grid(_theta(torch.zeros(1, _PARAMS)), [1, 1, h, w], align_corners=False)[0]
    x, y = base[..., 0], base[..., 1]
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
    pixels to fit) and the fine level (lightly blurred, full size, also what the match is measured on)."""
    coarse = _blur(images, _COARSE_SIGMA)
    coarse = F.avg_pool2d(coarse, 2) if min(images.shape[-2:]) >= 16 else coarse
    return (intensity_moments(torch.from_numpy(images).unsqueeze(1)), _standardise(coarse),
            _standardise(_blur(images, _FINE_SIGMA)))


def _chunk_distance(moments: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, i: torch.Tensor,
                    j: torch.Tensor) -> torch.Tensor:
    ma, mb = moments[i], moments[j]
    # Warp the wider view onto the closer one (a crop resized back, a zoom-in): it then covers the whole
    # target, and the fit converges far more often than the other way round.
    swap = ma[:, 2] * ma[:, 3] < mb[:, 2] * mb[:, 3]
    i, j = torch.where(swap, j, i), torch.where(swap, i, j)
    p = _initial_warp(moments[i], moments[j])
    p = _fit_level(coarse[i], coarse[j], p, _COARSE_ITERS)
    p = _fit_level(fine[i], fine[j], p, _FINE_ITERS)
    return _match(fine[i], fine[j], p)


def aligned_distance(images: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For each pair (i[k], j[k]) of rows of `images` (n, h, w), 1 - the correlation after the best fit.

    0 is an exact copy up to pose and exposure; ordinary same-class look-alikes sit around 0.01-0.05.
    """
    i, j = torch.from_numpy(np.asarray(i, dtype=np.int64)), torch.from_numpy(np.asarray(j, dtype=np.int64))
    out = np.ones(len(i), dtype=np.float32)
    if not len(i):
        return out
    with torch.no_grad():
        levels = _levels(np.ascontiguousarray(images, dtype=np.float32))
        for start in range(0, len(i), _CHUNK):
            sl = slice(start, start + _CHUNK)
            out[sl] = _chunk_distance(*levels, i[sl], j[sl]).numpy()
    return out
