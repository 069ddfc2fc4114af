"""Leak benchmarks from real images: each subject photographed three times, in three copy styles.

    make_leak_dataset("fashion", "crop", out)   # out/train.csv (image,label,group) + out/images/*.png

The leak detector (:mod:`pipeline.data.leaks`) is measured on data it was not shaped to: two real sources
(scikit-learn's handwritten digits, 8×8 upscaled to 32×32; Debian's ``dataset-fashion-mnist``, 28×28 product
photos, ``apt-get install dataset-fashion-mnist``), long-tailed classes (a head of 300 subjects, or all the
source has, down to a tail of 20), and every subject written as its original plus two copies (``copies``)
re-photographed in one style:

* ``shift``: moved by up to 2 px (sub-pixel included), exposure ×0.85–1.15;
* ``zoom``: scaled ×0.9–1.1, rotated ±8°, re-compressed as JPEG (quality 60–90);
* ``crop``: each side cropped by 8–20 % independently, resized back to the full frame.

The subject is the group (``group`` column): the truth the detector is scored against.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SOURCES", "STYLES", "COPIES", "FASHION_DIR", "read_idx_images", "read_idx_labels", "load_source", "make_leak_dataset"]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCES = ("digits", "fashion")
STYLES = ("shift", "zoom", "crop")
COPIES = 2             # each subject: the original and this many re-photographed copies (by default)
_HEAD, _TAIL = 300, 20


def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[o:o + 4], "big") for o in (4, 8, 12))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w)


def read_idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8)


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, h, w), labels) of one real-image source."""
    if source == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits
        digits = load_digits()
        small = (digits.images * (255.0 / 16.0)).astype(np.uint8)
        big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BICUBIC))
                        for im in small])
        return big, digits.target
    if source == "fashion":
        images = FASHION_DIR / "train-images-idx3-ubyte.gz"
        if not images.is_file():
            raise FileNotFoundError(f"{images} is missing: install Debian's fashion-MNIST "
                                    "(apt-get install dataset-fashion-mnist)")
        return read_idx_images(images), read_idx_labels(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    raise ValueError(f"unknown leak source {source!r}: one of {', '.join(SOURCES)}")


def _warp(img: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    from scipy.ndimage import affine_transform
    return affine_transform(img.astype(np.float32), matrix, offset=offset, order=1, mode="nearest")


def _about_centre(img: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    centre = (np.array(img.shape, dtype=np.float64) - 1) / 2
    return _warp(img, matrix, centre - matrix @ centre - shift)


def _rephotograph(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """One copy of `img` in `style` (uint8, same size)."""
    from PIL import Image
    if style == "shift":
        out = _about_centre(img, np.eye(2), rng.uniform(-2, 2, size=2)) * rng.uniform(0.85, 1.15)
    elif style == "zoom":
        angle, scale = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.9, 1.1)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
        warped = np.clip(_about_centre(img, rot, np.zeros(2)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(warped).save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)
    elif style == "crop":
        h, w = img.shape
        top, bottom, left, right = rng.uniform(0.04, 0.10, size=4)   # each side: keep 80-92 % in all
        box = (int(round(left * w)), int(round(top * h)), w - int(round(right * w)), h - int(round(bottom * h)))
        out = np.asarray(Image.fromarray(img).crop(box).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    else:
        raise ValueError(f"unknown copy style {style!r}: one of {', '.join(STYLES)}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _long_tail(classes: np.ndarray) -> dict:
    """Subjects per class, geometric from the head to the tail (the first class the largest)."""
    ratios = np.geomspace(_HEAD, _TAIL, num=len(classes))
    return {cls: int(round(r)) for cls, r in zip(classes, ratios)}


def make_leak_dataset(source: str, style: str, out, seed: int = 0, copies: int = COPIES) -> Path:
    """Write ``out/train.csv`` (image, label, group) and the PNGs; returns the CSV's path.

    `seed` draws the subjects and their copies' changes; each subject is written with `copies` copies."""
    from PIL import Image
    if style not in STYLES:
        raise ValueError(f"unknown copy style {style!r}: one of {', '.join(STYLES)}")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a whole number of at least 1 (copies per subject), got {copies!r}")
    images, labels = load_source(source)
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for cls, n in _long_tail(np.unique(labels)).items():
        pool = np.flatnonzero(labels == cls)
        for subject in rng.choice(pool, size=min(n, len(pool)), replace=False):
            group = f"s{subject}"
            views = [images[subject]] + [_rephotograph(images[subject], style, rng) for _ in range(copies)]
            for k, view in enumerate(views):
                name = f"images/{group}_{k}.png"
                Image.fromarray(view).save(out / name)
                rows.append({"image": name, "label": f"c{cls}", "group": group})
    csv = out / "train.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv
