"""Generated competitions of any size, for measuring what each stage costs as the data grows.

    write_image_set("data/bench_scale/png-100000", 100_000, kind="png")

writes a Kaggle-style layout: ``train.csv`` (image, label, group), ``train/<i>.png``,
``sample_submission.csv`` (id, label) and ``test/<id>.png`` (a tenth as many test images). The images
are made up, never downloaded: ten classes, each a smooth random template, every image its class's
template shifted by a few pixels under its own smooth noise; groups of three images of one class; one
image in fifty a re-exposed copy of the image before it (so the duplicate checks have something to find). Kinds:

* ``png``: 28x28 grayscale PNGs, about 0.8 kB (the size of MNIST-like competitions);
* ``jpeg``: 384x512 RGB JPEGs at quality 90, about 30 kB (photographs).

The set is deterministic for a seed; a finished set (``.complete`` written last) is never rewritten,
so the benchmark generates each size once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KINDS", "write_image_set", "image_set_ready"]

KINDS = {"png": ((28, 28), "L", ".png"), "jpeg": ((384, 512), "RGB", ".jpg")}
N_CLASSES = 10
_GROUP_SIZE = 3
_COPY_EVERY = 50
_TEST_SHARE = 10         # one test image per this many training images
_BLOCK = 2000            # images made (and written by one worker task) at once, at most
_BLOCK_VALUES = 20_000_000   # ... and at most this many pixel values (float32 intermediates: ~80 MB each)
_DONE = ".complete"


def image_set_ready(root: str | Path) -> bool:
    """True when `root` holds a finished set (its `.complete` marker was written last)."""
    return (Path(root) / _DONE).is_file()


def _templates(kind: str, seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    (h, w), mode, _ = KINDS[kind]
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    noise = rng.normal(size=(N_CLASSES, h, w, channels))
    smooth = gaussian_filter(noise, (0, h / 10, w / 10, 0))
    smooth /= smooth.std(axis=(1, 2, 3), keepdims=True)
    return smooth.astype(np.float32)


def _make_block(kind: str, labels: np.ndarray, seed: int, templates: np.ndarray) -> np.ndarray:
    """uint8 images (n, h, w[, 3]) of the given classes: shifted template + own smooth noise."""
    from scipy.ndimage import gaussian_filter

    (h, w), mode, _ = KINDS[kind]
    rng = np.random.default_rng(seed)
    n = len(labels)
    shifts = rng.integers(-h // 10, h // 10 + 1, size=(n, 2))
    out = np.empty((n, h, w, templates.shape[3]), dtype=np.float32)
    for k, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        out[k] = np.roll(templates[label], (dy, dx), axis=(0, 1))
    # Noise at a quarter of the resolution, upsampled: smooth, and cheap for the large photos.
    small = rng.normal(size=(n, -(-h // 4), -(-w // 4), out.shape[3])).astype(np.float32)
    small = gaussian_filter(small, (0, 1, 1, 0))
    noise = small.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w]
    pixels = np.clip(128 + 45 * out + 60 * noise, 0, 255).astype(np.uint8)
    for k in range(_COPY_EVERY - 1, n, _COPY_EVERY):      # a re-exposed copy of the previous image
        pixels[k] = np.clip(pixels[k - 1].astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255)
    return pixels[..., 0] if mode == "L" else pixels


def _write_block(kind: str, folder: str, names: list[str], labels: np.ndarray, seed: int,
                 templates: np.ndarray) -> None:
    from PIL import Image

    pixels = _make_block(kind, labels, seed, templates)
    options = {"quality": 90} if kind == "jpeg" else {"compress_level": 6}
    for name, image in zip(names, pixels):
        Image.fromarray(image).save(Path(folder) / name, **options)


def _write_images(kind: str, folder: Path, names: list[str], labels: np.ndarray, seed: int,
                  templates: np.ndarray, n_jobs: int) -> None:
    from joblib import Parallel, delayed

    folder.mkdir(parents=True, exist_ok=True)
    (h, w), _, _ = KINDS[kind]
    block = min(_BLOCK, max(16, _BLOCK_VALUES // (h * w * templates.shape[3])))   # a few hundred MB a worker
    starts = range(0, len(names), block)
    Parallel(n_jobs=n_jobs)(delayed(_write_block)(kind, str(folder), names[s:s + block], labels[s:s + block],
                                                  seed * 1_000_003 + s, templates) for s in starts)


def write_image_set(root: str | Path, n_train: int, kind: str = "png", seed: int = 0, n_jobs: int = -1,
                    log=print) -> Path:
    """Write `n_train` training images (and a tenth as many test images) under `root`; returns `root`.

    Reuses a finished set; a set left half-written by a killed run is written again from the start.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if n_train < 10 * N_CLASSES:
        raise ValueError(f"n_train must be at least {10 * N_CLASSES} (ten images a class), got {n_train}")
    root = Path(root)
    if image_set_ready(root):
        return root
    ext = KINDS[kind][2]
    rng = np.random.default_rng(seed)
    templates = _templates(kind, seed)
    # One label a group: grouped folds need it.
    labels = rng.integers(0, N_CLASSES, size=-(-n_train // _GROUP_SIZE)).repeat(_GROUP_SIZE)[:n_train]
    names = [f"{i:07d}{ext}" for i in range(n_train)]
    n_test = max(n_train // _TEST_SHARE, 1)
    test_ids = [f"t{i:07d}" for i in range(n_test)]
    test_labels = rng.integers(0, N_CLASSES, size=n_test)
    log(f"[scale-data] writing {n_train} + {n_test} {kind} images to {root}")
    _write_images(kind, root / "train", names, labels, seed, templates, n_jobs)
    _write_images(kind, root / "test", [f"{i}{ext}" for i in test_ids], test_labels, seed + 1, templates, n_jobs)
    pd.DataFrame({"image": [f"train/{n}" for n in names], "label": [f"c{k}" for k in labels],
                  "group": [f"g{i // _GROUP_SIZE}" for i in range(n_train)]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": "c0"}).to_csv(root / "sample_submission.csv", index=False)
    (root / _DONE).write_text(f"{n_train} {kind} seed {seed}\n")
    return root
