"""Test-time augmentation (TTA): predict each image under several views and merge the predictions.

In the style of ttach (https://github.com/qubvel/ttach), with three changes:

* Views are merged as *probabilities*. ttach's ``gmean`` multiplies raw logits, which can be
  negative, so its "geometric mean" is not defined in general; here every merge mode starts from
  per-view softmax probabilities (or, for ``logit_mean``, says plainly that it averages logits).
* All views of a batch go through the model in ONE forward pass (``V * B`` images) instead of one
  pass per view: fewer kernel launches and better GPU use. ``chunk_views`` bounds the memory.
* A bad view name or merge mode raises a ValueError that names the config key (``tta.views``,
  ``tta.merge``) and lists what is allowed.

Views act on a batch that is already normalised (``(pixel - mean) / std``), shape (B, C, H, W),
and return the same shape:

==================  ==========================================================================
``identity``        the image itself (always included: :func:`parse_views` prepends it)
``hflip``           mirror left-right
``vflip``           mirror top-bottom
``rot90``           rotate 90 degrees counter-clockwise (square images only)
``rot180``          rotate 180 degrees
``rot270``          rotate 270 degrees counter-clockwise (square images only)
``scale_<f>``       zoom by factor f > 0 (bilinear), then centre-crop (f > 1) or reflect-pad
                    (f < 1) back to H x W; e.g. ``scale_0.9``, ``scale_1.1``
``brightness_<d>``  add d, in *normalised* units: channel c shifts by ``d * std[c]`` in pixel
                    units (d = 0.1 with ImageNet std ~0.22 is about +0.022 of full range);
                    e.g. ``brightness_0.1``, ``brightness_-0.1``
``contrast_<f>``    scale each image's channels around their own mean by f > 0: ``m + f (x - m)``.
                    A per-channel mean is used because it commutes with the per-channel
                    normalisation, so this equals the same contrast change on the raw pixels.
==================  ==========================================================================

Typical use (the caller puts the model in eval mode; nothing here touches ``model.training``)::

    views = parse_views(["hflip", "scale_0.9"])      # -> identity, hflip, scale_0.9
    model.eval()
    probs = predict_tta(model, images, views, merge="mean")   # (B, C), rows sum to 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "View",
    "VIEW_NAMES",
    "VIEW_PATTERNS",
    "MERGE_MODES",
    "parse_views",
    "canonical_views",
    "merge_view_logits",
    "predict_tta",
    "predict_tta_per_view",
    "predict_tta_with_views",
]

MERGE_MODES = ("mean", "geometric_mean", "max", "logit_mean")


@dataclass(frozen=True)
class View:
    """One test-time view: a canonical `name` and `fn`, mapping a (B, C, H, W) batch to the same shape."""

    name: str
    fn: Callable[[Tensor], Tensor]


# ---- the views ---------------------------------------------------------------------------------

def _identity(x: Tensor) -> Tensor:
    return x


def _hflip(x: Tensor) -> Tensor:
    return x.flip(3)


def _vflip(x: Tensor) -> Tensor:
    return x.flip(2)


def _require_square(x: Tensor, name: str) -> None:
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"tta.views: {name!r} needs square images (a rotated {h}x{w} image is "
                         f"{w}x{h}); drop {name!r} or use rot180/hflip/vflip")


def _rot(x: Tensor, k: int) -> Tensor:
    if k % 2:
        _require_square(x, f"rot{90 * k}")
    return torch.rot90(x, k, dims=(2, 3))


def _pad_or_crop(size: int, target: int) -> tuple[int, int]:
    """(before, after) amounts that take `size` to `target`: negative = crop, positive = pad.

    The odd pixel goes after, so the content stays centred to within half a pixel.

    >>> _pad_or_crop(29, 32), _pad_or_crop(35, 32), _pad_or_crop(32, 32)
    ((1, 2), (-1, -2), (0, 0))
    """
    diff = target - size
    before = diff // 2 if diff >= 0 else -((-diff) // 2)
    return before, diff - before


def _reflect_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Reflect-pad the last two dims; loops when the padding exceeds what one reflection allows."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        if h < 2 or w < 2:  # nothing to reflect: repeat the edge instead
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        t, b, l, r = (min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1))
        x = F.pad(x, (l, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x


def _scale(x: Tensor, factor: float) -> Tensor:
    """Zoom by `factor` (bilinear), then centre-crop or reflect-pad back to the input's H x W."""
    h, w = x.shape[-2:]
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    if (new_h, new_w) == (h, w):
        return x
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    (top, bottom), (left, right) = _pad_or_crop(new_h, h), _pad_or_crop(new_w, w)
    y = y[..., max(0, -top):new_h - max(0, -bottom), max(0, -left):new_w - max(0, -right)]
    return _reflect_pad(y, max(0, top), max(0, bottom), max(0, left), max(0, right))


def _brightness(x: Tensor, delta: float) -> Tensor:
    return x + delta


def _contrast(x: Tensor, factor: float) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return mean + factor * (x - mean)


_FIXED_VIEWS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": _identity,
    "hflip": _hflip,
    "vflip": _vflip,
    "rot90": partial(_rot, k=1),
    "rot180": partial(_rot, k=2),
    "rot270": partial(_rot, k=3),
}
# prefix -> (function of (x, value), check on the value, what the check demands)
_PARAM_VIEWS: dict[str, tuple[Callable[[Tensor, float], Tensor], Callable[[float], bool], str]] = {
    "scale": (_scale, lambda f: f > 0, "f > 0"),
    "brightness": (_brightness, lambda d: True, "any number d"),
    "contrast": (_contrast, lambda f: f > 0, "f > 0"),
}
_PARAM_ARG = {"scale": "factor", "brightness": "delta", "contrast": "factor"}  # keyword of each function
VIEW_NAMES = tuple(_FIXED_VIEWS)
VIEW_PATTERNS = ("scale_<f>", "brightness_<d>", "contrast_<f>")
_VALID_VIEWS = (f"{', '.join(VIEW_NAMES)}, scale_<f> (f > 0, e.g. scale_0.9), brightness_<d> "
                f"(e.g. brightness_0.1 or brightness_-0.1), contrast_<f> (f > 0, e.g. contrast_1.2)")


def _parse_param(name: str) -> tuple[str, float] | None:
    """Split a parameterised view name into (prefix, value); None when no prefix matches.

    >>> _parse_param("scale_0.9"), _parse_param("brightness_-0.1"), _parse_param("hflip")
    (('scale', 0.9), ('brightness', -0.1), None)
    """
    prefix, sep, text = name.partition("_")
    if not sep or prefix not in _PARAM_VIEWS:
        return None
    fn, ok, rule = _PARAM_VIEWS[prefix]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"tta.views: {name!r} needs {prefix}_<number> with {rule}; got {text!r}")
    return prefix, value


def _make_view(name: str) -> View:
    if name in _FIXED_VIEWS:
        return View(name, _FIXED_VIEWS[name])
    parsed = _parse_param(name)
    if parsed is None:
        raise ValueError(f"tta.views: unknown view {name!r}; valid views: {_VALID_VIEWS}")
    prefix, value = parsed
    # Canonical name, so "scale_0.90" and "scale_0.9" are recognised as one view.
    return View(f"{prefix}_{value!r}", partial(_PARAM_VIEWS[prefix][0], **{_PARAM_ARG[prefix]: value}))



def parse_views(names: Sequence[str]) -> list[View]:
    """Build the views named in the config key ``tta.views``.

    The identity view is always included (prepended when missing; left where it is when listed),
    so the untouched image is never dropped from the merge. Duplicates are dropped, first
    occurrence wins; parameterised names are canonicalised (``scale_0.90`` -> ``scale_0.9``).
    Unknown or malformed names raise a ValueError listing the valid names and patterns.

    >>> [v.name for v in parse_views(["hflip", "scale_0.90", "hflip", "scale_0.9"])]
    ['identity', 'hflip', 'scale_0.9']
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"tta.views: expected a list of view names, got {names!r}; valid views: {_VALID_VIEWS}")
    views: dict[str, View] = {}
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"tta.views: view names are strings, got {name!r}; valid views: {_VALID_VIEWS}")
        view = _make_view(name.strip())
        views.setdefault(view.name, view)
    if "identity" not in views:
        return [View("identity", _identity), *views.values()]
    return list(views.values())


def canonical_views(select) -> list[str]:
    """The canonical names of ``tta.select``'s views (none for ``auto`` and ``all``), without adding the identity.

    >>> canonical_views(["hflip", "scale_0.90"]), canonical_views("auto")
    (['hflip', 'scale_0.9'], [])
    """
    if not isinstance(select, list):
        return []
    return [parse_views([name])[-1].name for name in select]


# ---- merging -----------------------------------------------------------------------------------

def _check_merge(mode: str) -> None:
    if mode not in MERGE_MODES:
        raise ValueError(f"tta.merge: unknown merge mode {mode!r}; valid modes: {', '.join(MERGE_MODES)}")


def merge_view_logits(logits: Tensor, mode: str = "mean") -> Tensor:
    """Merge per-view logits of shape (V, B, C) into class probabilities of shape (B, C).

    ``mean``            mean over views of the softmax probabilities
    ``geometric_mean``  exp(mean over views of log-softmax), renormalised so each row sums to 1
                        (computed as a softmax of the mean log-probabilities, so it is stable);
                        note this equals ``logit_mean`` mathematically, since log-softmax only
                        shifts each view's logits by a per-row constant
    ``max``             per class, the largest probability any view gives, renormalised
    ``logit_mean``      softmax of the mean over views of the logits

    Computed in at least float32, so half-precision logits are safe.

    >>> logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])          # 2 views, 1 image, 2 classes
    >>> merge_view_logits(logits, "mean")
    tensor([[0.5000, 0.5000]])
    """
    _check_merge(mode)
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise ValueError(f"merge_view_logits expects logits of shape (views, batch, classes), "
                         f"got {tuple(logits.shape)}")
    if not logits.is_floating_point() or logits.element_size() < 4:
        logits = logits.float()
    if mode == "mean":
        return logits.softmax(-1).mean(0)
    if mode == "geometric_mean":
        return logits.log_softmax(-1).mean(0).softmax(-1)
    if mode == "max":
        top = logits.softmax(-1).amax(0)
        return top / top.sum(-1, keepdim=True)
    return logits.mean(0).softmax(-1)  # logit_mean


# ---- prediction --------------------------------------------------------------------------------

def _view_logits(model: nn.Module, x: Tensor, views: Sequence[View], chunk_views: int | None) -> Tensor:
    """Logits (V, B, C): every view of `x` stacked into one batch, one forward pass per chunk."""
    if x.ndim != 4:
        raise ValueError(f"TTA expects an image batch of shape (B, C, H, W), got {tuple(x.shape)}")
    if not views:
        raise ValueError(f"tta.views: no views given; valid views: {_VALID_VIEWS}")
    if chunk_views is None:
        chunk_views = len(views)
    if isinstance(chunk_views, bool) or not isinstance(chunk_views, int) or chunk_views < 1:
        raise ValueError(f"chunk_views must be a positive integer or None, got {chunk_views!r}")
    b = x.shape[0]
    out = []
    with torch.inference_mode():
        for start in range(0, len(views), chunk_views):
            chunk = views[start:start + chunk_views]
            batch = torch.cat([v.fn(x) for v in chunk])
            logits = model(batch)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != len(chunk) * b:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"the model must return logits of shape ({len(chunk) * b}, classes) "
                                 f"for {len(chunk)} views x {b} images, got {got}")
            out.append(logits.reshape(len(chunk), b, -1))
    return torch.cat(out)


def predict_tta(model: nn.Module, x: Tensor, views: Sequence[View], merge: str = "mean",
                chunk_views: int | None = None) -> Tensor:
    """Class probabilities (B, C) for the batch `x` (B, C, H, W), merged over `views`.

    All views go through `model` as one batch of V*B images under ``torch.inference_mode()``
    (or ``ceil(V / chunk_views)`` batches when `chunk_views` is set, to bound memory). The model
    is called as it is: put it in eval mode first (in train mode BatchNorm would also mix
    statistics across the views). `merge` is one of :data:`MERGE_MODES` (config key ``tta.merge``).
    """
    _check_merge(merge)
    return merge_view_logits(_view_logits(model, x, views, chunk_views), merge)


def predict_tta_per_view(model: nn.Module, x: Tensor, views: Sequence[View],
                         chunk_views: int | None = None) -> Tensor:
    """Per-view class probabilities (V, B, C): the same batched pass as :func:`predict_tta`, unmerged.

    Used to score each view on its own (e.g. on out-of-fold data) and keep only views that help.
    """
    return _view_probs(_view_logits(model, x, views, chunk_views))


def _view_probs(logits: Tensor) -> Tensor:
    """Softmax per view, in float32 at least (bf16/fp16 logits would round the probabilities)."""
    return (logits.float() if logits.element_size() < 4 else logits).softmax(-1)


def predict_tta_with_views(model: nn.Module, x: Tensor, views: Sequence[View], merge: str = "mean",
                           chunk_views: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-view probabilities (V, B, C) AND the merged probabilities (B, C), from one batched pass.

    The merged result equals :func:`predict_tta` and each view's slice equals
    :func:`predict_tta_per_view`, but the model runs once: the predict stage scores every view
    on the out-of-fold rows and merges them for the TTA score without a second forward.
    """
    _check_merge(merge)
    logits = _view_logits(model, x, views, chunk_views)
    return _view_probs(logits), merge_view_logits(logits, merge)

