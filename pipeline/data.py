"""The competition's CSVs and images → datasets, and the albumentations pipelines.

`read_train_table` and `read_test_table` turn a user's CSVs into one normal form
(`image` path, `label`, `group`; or `id`, `image`), checking the columns the
config names. `ImageDataset` decodes images for a DataLoader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from PIL import Image

from .config import AugmentConfig, Config, ConfigError
from .fileio import read_table, read_text_csv

__all__ = [
    "DataError",
    "read_csv_checked",
    "read_train_table",
    "load_fold_table",
    "model_classes",
    "read_test_table",
    "class_list",
    "ImageDataset",
    "build_transform",
    "load_rgb",
]


class DataError(ValueError):
    """A problem in the user's data: the message names the file, row or column."""


def read_csv_checked(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV as text (every cell exactly as written) and check it has rows and the configured columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (check the path in the config)")
    try:
        frame = read_text_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header with columns {required}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}. "
                        "Fix the CSV or the data.*_column keys in the config.")
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame


def _safe_join(root: Path, rel: str, where: str) -> Path:
    """Join an image path to its root, refusing paths that escape the root (`../`, absolute)."""
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise DataError(f"{where}: image path '{rel}' escapes the data root {root}; "
                        "use paths relative to the image root")
    return root / candidate


def read_train_table(cfg: Config) -> pd.DataFrame:
    """Return the training rows as columns `image` (full path), `label`, `group`, `stratify`, `true_label`.

    Every value is the exact text of the train CSV: labels `01` and `1` are two classes, `NA` is
    a label, a group `000041` keeps its zeros. `stratify` is what the folds are stratified on (the
    label unless data.stratify_column is set); `true_label` is what validation is scored on (the
    label unless data.true_label_column is set). `source` is the image path as written in the CSV.
    """
    d = cfg.data
    extra = [c for c in (d.group_column, d.stratify_column, d.true_label_column) if c]
    cols = [d.image_column, d.label_column] + extra
    raw = read_csv_checked(d.train_csv, cols, "train CSV")
    blank = raw[d.label_column].str.strip() == ""
    if blank.any():
        rows = (np.flatnonzero(blank.to_numpy()) + 2).tolist()[:10]  # +2: header line, 1-based
        raise DataError(f"{d.train_csv}: blank label in column '{d.label_column}' at line(s) {rows}; "
                        "fill or drop those rows")
    root = Path(d.image_root)
    images = [str(_safe_join(root, p, f"{d.train_csv} line {i + 2}")) for i, p in enumerate(raw[d.image_column])]
    groups = raw[d.group_column] if d.group_column else pd.Series(range(len(raw))).astype(str)
    label = raw[d.label_column].to_numpy(dtype=object)
    column = lambda name: raw[name].to_numpy(dtype=object) if name else label  # noqa: E731
    return pd.DataFrame({"image": images, "label": label, "group": groups.to_numpy(dtype=object),
                         "stratify": column(d.stratify_column), "true_label": column(d.true_label_column),
                         "source": raw[d.image_column].to_numpy(dtype=object)})


def model_classes(table: pd.DataFrame) -> list:
    """The classes a model is trained on: every label and every true label of `read_train_table`'s rows."""
    return class_list(pd.concat([table["label"], table["true_label"]]))


def load_fold_table(cfg: Config) -> pd.DataFrame:
    """The train table with each row's fold, checked against the folds file it came from."""
    table = read_train_table(cfg)
    path = cfg.folds_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make folds` (or `python -m pipeline folds`) first")
    folds = read_table(path)
    same = len(folds) == len(table) and (folds["label"].to_numpy(dtype=object)
                                         == table["label"].to_numpy(dtype=object)).all()
    if not same:
        raise ValueError(f"{path} does not match {cfg.data.train_csv} (rows or labels differ): "
                         "the train CSV changed since the folds were made; rerun `make folds`")
    table["fold"] = folds["fold"].to_numpy()
    return table


def read_test_table(cfg: Config) -> pd.DataFrame:
    """Return the sample submission's rows in order, with the image path of each id."""
    d = cfg.data
    cols = [d.id_column, d.target_column] + ([d.test_path_column] if d.test_path_column else [])
    sample = read_csv_checked(d.sample_submission, cols, "sample submission")
    root = Path(d.test_root or d.image_root)
    if d.test_path_column:
        rel = sample[d.test_path_column]
    else:
        rel = sample[d.id_column].map(lambda i: d.test_image_template.format(id=i))
    images = [str(_safe_join(root, r, f"{d.sample_submission} line {i + 2}")) for i, r in enumerate(rel)]
    return pd.DataFrame({"id": sample[d.id_column].to_numpy(dtype=object), "image": images})


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def class_list(labels) -> list[str]:
    """The distinct labels as text, in a stable order: numerically when every label is an integer
    (`2` before `10`, `01` before `02`), else alphabetically.

    Labels are compared as the exact text of the CSV, so `01` and `1` are different classes.

    >>> class_list(["10", "2", "01", "2"]), class_list(["b", "NA", "a"])
    (['01', '2', '10'], ['NA', 'a', 'b'])
    """
    texts = pd.unique(pd.Series(labels, dtype=object).map(str))
    if all(_INTEGER.match(t) for t in texts):
        return sorted(texts, key=lambda t: (int(t), t))
    return sorted(texts)


def load_rgb(path: str) -> np.ndarray:
    """Decode an image as an RGB uint8 array (grayscale, palette and RGBA are converted)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _user_transforms(specs: list, key: str) -> list:
    """Build albumentations transforms from `[{Name: {param: value}}, ...]`."""
    out = []
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if isinstance(spec, str):
            spec = {spec: {}}
        if not (isinstance(spec, dict) and len(spec) == 1):
            raise ConfigError(f"{where}: expected {{TransformName: {{param: value}}}}, got {spec!r}")
        (name, params), = spec.items()
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"{where}: '{name}' is not an albumentations transform "
                              "(names are case-sensitive, e.g. HorizontalFlip, Affine, RandomBrightnessContrast)")
        try:
            out.append(cls(**(params or {})))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: invalid parameters for {name}: {exc}") from None
    return out


def geometry_steps(size: int, crop=None) -> list:
    """The deterministic first steps: [centre crop to `crop` = (h, w)] → resize to size x size.

    The decode cache (pipeline/cache.py) stores images after exactly these steps.
    """
    steps = [A.CenterCrop(*crop, pad_if_needed=True)] if crop else []
    return steps + [A.Resize(size, size)]


def finishing_steps(aug: AugmentConfig, train: bool, normalize: bool = True) -> list:
    """What follows the geometry: (training augmentations) → [normalise → CHW tensor]."""
    steps = _user_transforms(aug.train, "augment.train") if train else []
    if normalize:
        steps += [A.Normalize(mean=aug.mean, std=aug.std), A.ToTensorV2()]
    return steps


def build_transform(aug: AugmentConfig, train: bool) -> A.Compose:
    """Resize → (training augmentations) → normalise → CHW tensor."""
    return A.Compose(geometry_steps(aug.image_size, aug.pre_resize_crop) + finishing_steps(aug, train))


class ImageDataset(torch.utils.data.Dataset):
    """Images from paths, with integer targets (or -1 where unknown, e.g. the test set)."""

    def __init__(self, paths, targets=None, transform=None):
        self.paths = list(paths)
        self.targets = np.asarray(targets if targets is not None else [-1] * len(self.paths), dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_rgb(self.paths[i])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return image, int(self.targets[i])
