"""A small synthetic dataset in the competition's exact layout (drawn shapes instead of faces),
so the whole pipeline runs without the real data: every class, mixed extensions, a hidden junk file."""

from __future__ import annotations

import hashlib
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.competitions.mask.labels import GENDERS, MASK_OF_STEM, PHOTO_STEMS, age_group, encode_class
from pipeline.competitions.mask.layout import people_csv
from pipeline.fileio import atomic_dir

__all__ = ["make_mask_sample"]


# Ages per age group, taken in turn by the people of each (gender, age group): the
# borderline 58/59/60 are among the first four, so the cut-off trick has cases.
_SAMPLE_AGES = ((25, 19, 29, 22, 27), (45, 58, 59, 30, 52), (60, 70, 61, 65, 80))
_MASK_COLOURS = ((236, 236, 236), (150, 190, 230), (40, 40, 45), (230, 170, 190), (150, 150, 150))
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # what `._name` junk files start with


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _hair_colour(age: int) -> tuple[int, int, int]:
    """Dark brown at 15 to light grey at 80: age is visible, continuously."""
    t = min(max((age - 15) / 65, 0.0), 1.0)
    return tuple(int(round(a + (b - a) * t)) for a, b in zip((45, 30, 20), (215, 215, 210)))


def _draw_person(size: tuple[int, int], person: dict, mask: str, rng: np.random.Generator) -> Image.Image:
    """A drawn 'photo': background, shoulders, hair (long for women), face, and the mask state.

    `mask` is a photo stem: mask1..5 draw a mask over the nose and mouth in one of five
    colours, incorrect_mask draws it low (nose out), normal draws none.
    """
    w, h = size
    img = Image.new("RGB", size, person["background"])
    d = ImageDraw.Draw(img)
    jx, jy = (float(v) for v in rng.uniform(-0.02, 0.02, size=2))
    cx, cy = w * (0.5 + jx), h * (0.47 + jy)
    rx, ry = 0.25 * w, 0.24 * h
    hair = _hair_colour(person["age"])
    d.polygon([(cx - 0.45 * w, h), (cx - 0.3 * w, cy + 0.3 * h), (cx + 0.3 * w, cy + 0.3 * h),
               (cx + 0.45 * w, h)], fill=person["clothes"])
    if person["gender"] == 1:  # long hair behind the face, down to the shoulders
        d.rounded_rectangle([cx - 1.2 * rx, cy - 1.15 * ry, cx + 1.2 * rx, cy + 1.35 * ry],
                            radius=int(0.4 * rx), fill=hair)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=person["skin"])
    d.chord([cx - 1.02 * rx, cy - 1.1 * ry, cx + 1.02 * rx, cy + 0.2 * ry], 180, 360, fill=hair)
    eye_y, eye_dx, er = cy - 0.08 * ry, 0.4 * rx, max(1.0, 0.08 * rx)
    for ex in (cx - eye_dx, cx + eye_dx):
        d.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], fill=(25, 25, 30))
    line = max(1, int(round(0.02 * w)))
    d.line([(cx, cy + 0.05 * ry), (cx - 0.08 * rx, cy + 0.3 * ry)], fill=(120, 80, 60), width=line)  # nose
    d.line([(cx - 0.3 * rx, cy + 0.55 * ry), (cx + 0.3 * rx, cy + 0.55 * ry)], fill=(170, 60, 60), width=line)
    if mask != "normal":
        colour = _MASK_COLOURS[int(mask[-1]) - 1] if mask.startswith("mask") else _MASK_COLOURS[person["mask_colour"]]
        top, bottom = (cy + 0.0 * ry, cy + 0.9 * ry) if mask != "incorrect_mask" else (cy + 0.42 * ry, cy + 1.1 * ry)
        d.rounded_rectangle([cx - 0.88 * rx, top, cx + 0.88 * rx, bottom], radius=int(0.15 * rx), fill=colour)
        for side in (-1, 1):  # ear loops
            d.line([(cx + side * 0.88 * rx, top + 0.1 * ry), (cx + side * rx, cy - 0.05 * ry)],
                   fill=colour, width=line)
    return img


def _save_photo(img: Image.Image, path: Path) -> None:
    if path.suffix.lower() == ".png":
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=90)


def _random_person(rng: np.random.Generator, gender: int, age: int) -> dict:
    def colour(lo, hi):
        return tuple(int(v) for v in rng.integers(lo, hi, size=3))
    skin = tuple(int(v) for v in np.array([225, 185, 150]) * rng.uniform(0.7, 1.05))
    return {"gender": gender, "age": age, "skin": tuple(min(255, s) for s in skin),
            # studio-like backgrounds and dark clothes vary little, so that hair, face
            # and mask, not a person's colours, carry the classes
            "background": tuple(int(v) for v in np.full(3, rng.integers(150, 200)) + rng.integers(-12, 13, 3)),
            "clothes": colour(30, 90),
            "mask_colour": int(rng.integers(len(_MASK_COLOURS)))}


def _write_sample(root: Path, n_people: int, n_eval: int, image_size: tuple[int, int], seed: int) -> None:
    plan, render, test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    # Person k gets (gender, age group) combination k % 6, so every combination has
    # n_people // 6 people or one more: 24 people give 4 per combination, enough for a
    # 3-fold split stratified on person_label with every class in every fold.
    specs = []
    for k in range(n_people):
        gender, group = divmod(k % 6, 3)
        ages = _SAMPLE_AGES[group]
        specs.append((gender, ages[(k // 6) % len(ages)]))
    order = plan.permutation(n_people)  # ids are handed out in a shuffled order: they reveal nothing
    ids = sorted(int(v) for v in plan.choice(np.arange(1, 7000), size=n_people, replace=False))
    exts = plan.choice([".jpg", ".jpeg", ".png"], size=(n_people, len(PHOTO_STEMS)), p=[0.7, 0.15, 0.15])
    exts[0, :3] = [".jpg", ".jpeg", ".png"]  # every extension occurs, whatever the seed
    images = root / "train" / "images"
    images.mkdir(parents=True)
    rows = []
    for row, k in enumerate(order):
        gender, age = specs[k]
        pid = f"{ids[row]:06d}"
        path = f"{pid}_{GENDERS[gender]}_Asian_{age}"
        folder = images / path
        folder.mkdir()
        person = _random_person(render, gender, age)
        for j, stem in enumerate(PHOTO_STEMS):
            _save_photo(_draw_person(image_size, person, stem, render), folder / f"{stem}{exts[row, j]}")
        if row % 5 == 0:  # macOS junk, as in the real archive
            (folder / "._mask1.jpg").write_bytes(_APPLEDOUBLE)
        rows.append({"id": pid, "gender": GENDERS[gender], "race": "Asian", "age": age, "path": path})
    pd.DataFrame(rows).to_csv(people_csv(root), index=False, lineterminator="\n")

    (root / "eval" / "images").mkdir(parents=True)
    ids, truth = [], []
    for _ in range(n_eval):
        gender, group = int(test.integers(2)), int(test.integers(3))
        age = int(test.choice(_SAMPLE_AGES[group]))
        stem = PHOTO_STEMS[int(test.integers(len(PHOTO_STEMS)))]
        image_id = hashlib.sha1(test.bytes(16)).hexdigest() + ".jpg"
        _save_photo(_draw_person(image_size, _random_person(test, gender, age), stem, test),
                    root / "eval" / "images" / image_id)
        ids.append(image_id)
        truth.append(encode_class(MASK_OF_STEM[stem], gender, age_group(age)))
    pd.DataFrame({"ImageID": ids, "ans": ""}).to_csv(root / "eval" / "info.csv", index=False, lineterminator="\n")
    # Not part of the competition's layout: the sample's test truth, for `data.test_labels`.
    pd.DataFrame({"ImageID": ids, "ans": truth}).to_csv(root / "eval_truth.csv", index=False, lineterminator="\n")


def make_mask_sample(out_dir: str | Path, n_people: int = 24, seed: int = 0,
                     image_size: tuple[int, int] = (384, 512), n_eval: int = 24) -> Path:
    """Write a synthetic dataset in the competition's exact layout to `out_dir` (replacing it).

    `n_people` people (ids 6 digits, folder `<id>_<gender>_Asian_<age>`) with the seven
    photos each, mixed .jpg/.jpeg/.png, some `._mask1.jpg` junk files; `n_eval` test
    images `eval/images/<sha1>.jpg` listed in `eval/info.csv` with an empty `ans`. The
    test truth goes to `<out_dir>/eval_truth.csv` (outside the layout). Images are
    drawn shapes of `image_size` = (width, height): hair colour shows the age, long
    hair the gender, a rectangle the mask. The same arguments give identical files;
    the folder is written beside `out_dir` and renamed into place. Returns `out_dir`.
    """
    n_people = _check_int("n_people", n_people, 1)
    n_eval = _check_int("n_eval", n_eval, 1)
    seed = _check_int("seed", seed, 0)
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 16 for v in image_size)):
        raise ValueError(f"image_size must be (width, height) in pixels, each at least 16, got {image_size!r}")
    out = Path(out_dir)
    target = out.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir exists and is not a folder: {out_dir!r}")
    with atomic_dir(target) as tmp:
        _write_sample(tmp, n_people, n_eval, (int(image_size[0]), int(image_size[1])), seed)
    return out
