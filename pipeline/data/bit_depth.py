"""16/32-bit images (medical, satellite) to the 8-bit pixels the models read, at decode time.

PIL's ``convert("RGB")`` clips 16-bit values above 255 to white and truncates floats in [0, 1] to
black, so by default (``data.high_bit_depth: refuse``) the data check refuses such images and
`to_uint8` refuses to decode them. The two other settings scale each image's pixels linearly to
0..255 through one window, the same for every image of the run, train and test:

    range        the type's range: 0..65535 for 16-bit integers (PIL modes I;16*). 32-bit integer
                 and float images have no useful fixed range: use percentile.
    percentile   the 0.5th..99.5th percentiles of the pixels of up to 64 training images (evenly
                 spaced in the train table), so 12-bit data in a 16-bit file or a narrow band of
                 values still fills 0..255. The data check states the window it found.

The result is grey, copied into R, G and B like PIL's 8-bit grayscale.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Scaling", "REFUSE", "PERCENTILES", "is_high_bit_depth", "scales", "to_uint8", "percentile_window",
           "scaling_for"]

PERCENTILES = (0.5, 99.5)
_SAMPLE = 64              # training images the percentile window is computed from
_PIXELS = 1 << 16         # pixels read per sampled image (every k-th)


def is_high_bit_depth(mode: str | None) -> bool:
    """True for 16/32-bit integer and float modes, which `convert("RGB")` clips or truncates."""
    return mode is not None and (mode in ("I", "F") or mode.startswith("I;"))


def scales(method: str, mode: str) -> bool:
    """Whether `method` (data.high_bit_depth) turns an image of this high-bit PIL mode into 8-bit pixels."""
    return method == "percentile" or (method == "range" and mode.startswith("I;16"))


@dataclass(frozen=True)
class Scaling:
    """How high-bit images are decoded: `method` is data.high_bit_depth; `window` the percentile's (low, high)."""

    method: str = "refuse"
    window: tuple[float, float] | None = None

    def describe(self) -> str:
        if self.method == "range":
            return "the type's range 0..65535 → 0..255 (data.high_bit_depth: range)"
        if self.method == "percentile":
            low, high = self.window
            return (f"the training images' {PERCENTILES[0]:g}th..{PERCENTILES[1]:g}th percentiles "
                    f"{low:g}..{high:g} → 0..255 (data.high_bit_depth: percentile)")
        return "refused (data.high_bit_depth: refuse)"


REFUSE = Scaling()


def to_uint8(pixels: np.ndarray, mode: str, scaling: Scaling, where: str) -> np.ndarray:
    """A high-bit image's (H, W) pixels → uint8 through the scaling's window; ValueError naming `where`
    when the scaling refuses this mode."""
    if not scales(scaling.method, mode):
        hint = ("set data.high_bit_depth: percentile (this mode has no fixed range)" if scaling.method == "range"
                else "set data.high_bit_depth: range or percentile, or convert the images to 8-bit yourself")
        raise ValueError(f"{where} has {mode} pixels (16/32-bit), which {scaling.describe()} does not "
                         f"scale to 8-bit; {hint}")
    low, high = (0.0, 65535.0) if scaling.method == "range" else scaling.window
    scaled = (pixels.astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def percentile_window(paths) -> tuple[float, float]:
    """The PERCENTILES of the pixels of up to 64 of `paths` (evenly spaced; 8-bit images are skipped)."""
    picks = _sample(list(paths))
    values = []
    for path in picks:
        with Image.open(path) as img:
            if is_high_bit_depth(img.mode):
                flat = np.asarray(img).ravel()
                values.append(flat[::max(1, flat.size // _PIXELS)].astype(np.float64))
    if not values:
        raise ValueError(f"data.high_bit_depth: percentile: none of the {len(picks)} sampled training images is "
                         "16/32-bit, so there is no window to scale by; use range, or refuse if no image is high-bit")
    low, high = np.percentile(np.concatenate(values), PERCENTILES)
    return float(low), float(max(high, low + 1))   # constant pixels: any window keeps them one grey


def _sample(paths: list) -> list:
    """Up to _SAMPLE of `paths`, evenly spaced, first and last included."""
    return [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(_SAMPLE, len(paths))).round())]


@functools.lru_cache(maxsize=8)
def _window_of(files: tuple) -> tuple[float, float]:
    return percentile_window([path for path, _ in files])


def scaling_for(cfg) -> Scaling:
    """The config's Scaling; for percentile, its window from the train table's images (remembered while
    the sampled files are unchanged)."""
    method = cfg.data.high_bit_depth
    if method != "percentile":
        return Scaling(method)
    from pipeline.data.tables import read_train_table

    files = tuple((p, os.stat(p).st_mtime_ns) for p in _sample(read_train_table(cfg)["image"].tolist()))
    return Scaling(method, _window_of(files))
