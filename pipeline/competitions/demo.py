"""The embedded demo dataset: scikit-learn's handwritten digits as a Kaggle-style competition.

`make_demo_dataset(out)` turns `sklearn.datasets.load_digits()` (1797 real 8x8
grayscale scans, 10 classes) into the files a competition would ship, so the
whole pipeline can run end to end without a download:

    <out>/train.csv              image,label,group   e.g. train/g0007_2.png,seven,g0007
    <out>/train/<group>_<k>.png  k = 0 is the base digit, k >= 1 its shifted copies
    <out>/sample_submission.csv  id,label            label is a placeholder ("zero")
    <out>/test/<id>.png          id like t0001; the pipeline maps id -> "test/{id}.png"
    <out>/test_labels.csv        id,label            the truth, read only by scoring

The data is made deliberately awkward in the ways real competitions are:

* Labels are strings ("zero" ... "nine"), so the pipeline must map its integer
  targets back to the original values when it writes a submission.
* Training images come in *groups*: one base digit plus `group_size - 1` copies
  shifted by a pixel or two, all in the group's own colour tint. Near-duplicates
  in both a training and a validation fold would inflate validation scores, so
  the folds must be split by group (like one person's photos in a face dataset).
* The training classes are long-tailed: group counts per class decay
  geometrically from head to tail, the largest class having at least 10x the
  groups of the smallest at `scale=1.0`. Which digit is the head is seeded.
* The test set is balanced (`test_per_class` base digits per class, one image
  each, no copies) and listed in a shuffled order the submission must keep.

Everything is deterministic for a seed (byte-identical CSVs and PNGs), and the
folder appears atomically: it is written beside `<out>` and renamed into place,
so a killed run never leaves a `train.csv` that looks complete.
"""

from __future__ import annotations

import colorsys
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.fileio import atomic_dir

__all__ = ["make_demo_dataset", "CLASS_NAMES", "DEMO_TASKS"]

DEMO_TASKS = ("digits", "odd")

# Digit d is labelled CLASS_NAMES[d]: strings, so label mapping is really exercised.
CLASS_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four",
                                "five", "six", "seven", "eight", "nine")

# Head-to-tail ratio of the group counts at scale 1.0: above 10 so that the
# rounded counts still give a ratio of at least 10:1.
_HEAD_TO_TAIL = 12.0
# load_digits stores pixel intensities as 0..16.
_DIGIT_MAX = 16.0
# Brightness jitter of the shifted copies: small, so a group still looks alike.
_GAIN_JITTER = 0.06


# --------------------------------------------------------------------------- validation

def _check_int(name: str, value, minimum: int) -> int:
    """Return `value` as int, or raise ValueError naming the argument (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def _check_scale(scale) -> float:
    """Scale must be in (0, 1]: above 1 the head class would need more digits than exist."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1] (the digits dataset has ~180 images per class), got {scale!r}")
    return float(scale)


# --------------------------------------------------------------------------- planning

def _rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams per purpose, so the class order can be recomputed alone.

    Spawning from one SeedSequence keeps every stream determined by `seed` while a
    change in how many numbers one stage draws cannot shift another stage's draws.
    """
    order, split, render = np.random.SeedSequence(seed).spawn(3)
    return {"order": np.random.default_rng(order),
            "split": np.random.default_rng(split),
            "render": np.random.default_rng(render)}


def _test_count(test_per_class: int, scale: float) -> int:
    """Test images per class after scaling (at least one, so every class is scored)."""
    return max(1, round(test_per_class * scale))


def _group_counts_by_rank(head: int, n_classes: int, scale: float, min_groups: int) -> list[int]:
    """Training groups per class, from the head (rank 0) to the tail (rank n_classes - 1).

    Counts decay geometrically from `head` to `head / _HEAD_TO_TAIL`, then are
    multiplied by `scale` and floored at `min_groups`, so that every class keeps
    enough groups for a stratified group K-fold split. The >=10:1 ratio therefore
    holds at scale 1.0 (given a head of at least ~10 * min_groups); smaller scales
    trade it away for speed, since the floor flattens the tail.
    """
    ranks = np.arange(n_classes) / max(n_classes - 1, 1)
    base = head * (1.0 / _HEAD_TO_TAIL) ** ranks
    return [max(min_groups, round(b * scale)) for b in base]


def _class_group_counts(targets: np.ndarray, seed: int, test_per_class: int, scale: float,
                        min_groups: int) -> dict[str, int]:
    """Number of training groups of each class name, exactly as `make_demo_dataset` makes them.

    The head is the number of digits the smallest class has left after the test
    hold-out, so any class can take any rank. Which digit gets which rank is a
    seeded permutation.
    """
    n_classes = len(CLASS_NAMES)
    per_class = np.bincount(targets, minlength=n_classes)
    n_test = _test_count(test_per_class, scale)
    head = int(per_class.min()) - n_test
    if head < min_groups:
        raise ValueError(f"test_per_class={test_per_class} (scaled to {n_test}) leaves only {head} digits "
                         f"in the smallest class, fewer than min_groups_per_class={min_groups}")
    by_rank = _group_counts_by_rank(head, n_classes, scale, min_groups)
    order = _rngs(seed)["order"].permutation(n_classes)  # order[rank] = digit
    return {CLASS_NAMES[digit]: by_rank[rank] for rank, digit in enumerate(order)}


# --------------------------------------------------------------------------- rendering

def _random_tint(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (foreground, background) RGB pair with strong contrast: one bright, one dark colour.

    Hue and saturation are free, so tints differ visibly between groups; the value
    gap keeps the digit legible whichever way round the colours fall.
    """
    bright = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.75, 1.0))
    dark = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.05, 0.35))
    pair = (np.array(bright) * 255, np.array(dark) * 255)
    return pair if rng.random() < 0.5 else pair[::-1]


def _upscale(digit: np.ndarray, size: int) -> np.ndarray:
    """8x8 intensities 0..16 -> size x size float coverage in [0, 1] (bicubic, then clipped)."""
    small = Image.fromarray((digit / _DIGIT_MAX).astype(np.float32))  # float32 -> mode "F"
    big = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(big, 0.0, 1.0)  # bicubic overshoots slightly at strokes' edges


def _shift(coverage: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling the uncovered border with background (0)."""
    h, w = coverage.shape
    out = np.zeros_like(coverage)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        coverage[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _random_offset(rng: np.random.Generator, max_shift: int) -> tuple[int, int]:
    """A non-zero translation of up to `max_shift` pixels per axis (zero would duplicate the base)."""
    while True:
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        if dy or dx:
            return dy, dx


def _colourise(coverage: np.ndarray, fg: np.ndarray, bg: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Blend background to foreground by coverage, times a brightness gain, as RGB uint8."""
    rgb = (bg + (fg - bg) * coverage[..., None]) * gain
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _save_png(rgb: np.ndarray, path: Path) -> None:
    """Save as RGB PNG; PIL writes no timestamp chunk, so equal pixels give equal bytes."""
    Image.fromarray(rgb).save(path, format="PNG")


# --------------------------------------------------------------------------- writing

def _split_digits(targets: np.ndarray, counts: dict[str, int], n_test: int,
                  rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Pick, per class, `n_test` test digits and `counts[class]` training base digits (disjoint)."""
    test, train = [], []
    for digit, name in enumerate(CLASS_NAMES):
        idx = rng.permutation(np.flatnonzero(targets == digit))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:n_test + counts[name]].tolist())
    return test, train


def _label(digit: int, task: str) -> str:
    """A digit's label: its name, or for the binary task whether it is odd ("1") or even ("0")."""
    return CLASS_NAMES[digit] if task == "digits" else str(digit % 2)


def _write_train(root: Path, images: np.ndarray, targets: np.ndarray, bases: list[int],
                 image_size: int, group_size: int, rng: np.random.Generator, task: str = "digits") -> None:
    """Render each training group (base + shifted, jittered copies in one tint) and write train.csv."""
    (root / "train").mkdir()
    # Shuffle before numbering so a group id says nothing about its class.
    bases = [bases[i] for i in rng.permutation(len(bases))]
    width = max(4, len(str(len(bases) - 1)))
    max_shift = max(1, image_size // 16)  # "a pixel or two" at the default 32 px
    rows = []
    for g, base in enumerate(bases):
        group = f"g{g:0{width}d}"
        fg, bg = _random_tint(rng)
        coverage = _upscale(images[base], image_size)
        for k in range(group_size):
            if k == 0:
                rgb = _colourise(coverage, fg, bg)
            else:
                gain = 1.0 + rng.uniform(-_GAIN_JITTER, _GAIN_JITTER)
                rgb = _colourise(_shift(coverage, *_random_offset(rng, max_shift)), fg, bg, gain)
            rel = f"train/{group}_{k}.png"
            _save_png(rgb, root / rel)
            rows.append((rel, _label(targets[base], task), group))
    _write_csv(root / "train.csv", pd.DataFrame(rows, columns=["image", "label", "group"]))


def _write_test(root: Path, images: np.ndarray, targets: np.ndarray, picks: list[int],
                image_size: int, rng: np.random.Generator, task: str = "digits") -> None:
    """Render the test images (own tint each) and write sample_submission.csv and test_labels.csv.

    Ids are assigned in one random order and rows listed in another, so neither the
    id nor the row position reveals the class, and the file order is not sorted:
    the pipeline has to keep the sample submission's order as given.
    """
    (root / "test").mkdir()
    width = max(4, len(str(len(picks))))
    ids = [f"t{i + 1:0{width}d}" for i in range(len(picks))]
    id_of = dict(zip(rng.permutation(len(picks)).tolist(), ids))  # pick position -> id
    for pos, index in enumerate(picks):
        fg, bg = _random_tint(rng)
        _save_png(_colourise(_upscale(images[index], image_size), fg, bg), root / "test" / f"{id_of[pos]}.png")
    row_order = rng.permutation(len(picks)).tolist()
    order_ids = [id_of[p] for p in row_order]
    truth = [_label(targets[picks[p]], task) for p in row_order]
    # The binary task asks for the probability of "1" (odd), with the usual 0.5 placeholder.
    placeholder = CLASS_NAMES[0] if task == "digits" else "0.5"
    _write_csv(root / "sample_submission.csv", pd.DataFrame({"id": order_ids, "label": placeholder}))
    _write_csv(root / "test_labels.csv", pd.DataFrame({"id": order_ids, "label": truth}))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    """CSV with a fixed line ending, so the bytes do not depend on the platform."""
    frame.to_csv(path, index=False, lineterminator="\n")


# --------------------------------------------------------------------------- public API

def make_demo_dataset(out_dir: str | Path, seed: int = 0, image_size: int = 32, group_size: int = 4,
                      test_per_class: int = 30, scale: float = 1.0,
                      min_groups_per_class: int = 6, task: str = "digits") -> dict[str, Path]:
    """Write the digits demo competition to `out_dir` (replacing it) and return its file paths.

    Arguments:
        out_dir: folder to create; an existing one is replaced only once the new one is complete.
        seed: fixes every random choice; the same arguments give byte-identical files.
        image_size: side of the square RGB PNGs, upscaled from the 8x8 scans.
        group_size: images per training group (the base digit and its shifted copies).
        test_per_class: balanced test digits per class (times `scale`, at least 1).
        scale: in (0, 1]; multiplies the per-class group counts and `test_per_class`, for
            quick tiny datasets in tests. The >=10:1 head/tail ratio is kept only at 1.0.
        min_groups_per_class: floor on groups per class, so 5-fold stratified group splits work.
        task: ``digits`` (ten classes "zero" ... "nine") or ``odd`` (two classes, "1" for an odd digit,
            "0" for an even one, and a sample submission asking for the probability of "1").

    Returns `{"root", "train_csv", "sample_submission", "test_labels"}` as Paths under `out_dir`.
    Raises ValueError naming the argument for an invalid value.
    """
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 8)
    group_size = _check_int("group_size", group_size, 1)
    test_per_class = _check_int("test_per_class", test_per_class, 1)
    scale = _check_scale(scale)
    min_groups_per_class = _check_int("min_groups_per_class", min_groups_per_class, 1)
    if task not in DEMO_TASKS:
        raise ValueError(f"task must be one of {DEMO_TASKS}, got {task!r}")
    out = Path(out_dir)
    target = out.resolve()
    if target.parent == target:
        raise ValueError(f"out_dir must name a folder to create, got {out_dir!r}")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir exists and is not a folder: {out_dir!r}")

    digits = load_digits()
    images, targets = digits.images, digits.target
    counts = _class_group_counts(targets, seed, test_per_class, scale, min_groups_per_class)
    rng = _rngs(seed)
    test, bases = _split_digits(targets, counts, _test_count(test_per_class, scale), rng["split"])

    with atomic_dir(target) as tmp:
        _write_train(tmp, images, targets, bases, image_size, group_size, rng["render"], task)
        _write_test(tmp, images, targets, test, image_size, rng["render"], task)
    return {"root": out, "train_csv": out / "train.csv",
            "sample_submission": out / "sample_submission.csv", "test_labels": out / "test_labels.csv"}
