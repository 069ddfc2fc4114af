"""Images → datasets, and the albumentations pipelines (the tables are `pipeline.data.tables`).

`ImageDataset` decodes images for a DataLoader; `build_transform` is the resize →
augment → normalise pipeline of `augment:`.
"""

from __future__ import annotations

import inspect
import re

import albumentations as A
import numpy as np
import torch
from PIL import Image

from pipeline.config import AugmentConfig, ConfigError
from pipeline.data.bit_depth import REFUSE, Scaling, is_high_bit_depth, to_uint8
from pipeline.data.image_affine import ImageAffine

__all__ = ["ImageDataset", "build_transform", "geometry_steps", "finishing_steps", "load_rgb", "transform_name"]


def load_rgb(path: str, scaling: Scaling = REFUSE) -> np.ndarray:
    """Decode an image as an RGB uint8 array (grayscale, palette and RGBA are converted; 16/32-bit images
    scaled to 8-bit by `scaling`, or refused: `pipeline.data.bit_depth`). Every stage decodes through here."""
    with Image.open(path) as img:
        if is_high_bit_depth(img.mode):
            gray = to_uint8(np.asarray(img), img.mode, scaling, path)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


# Drop-in replacements that give the same pixels for image-only calls, faster (pipeline/data/image_affine.py).
_IMAGE_ONLY = {A.Affine: ImageAffine}


def _user_transforms(specs: list, key: str) -> list:
    """Build albumentations transforms from `[{Name: {param: value}}, ...]`.

    Parameters are checked strictly (albumentations' own `strict=True`): a misspelt one
    (`Affine: {rotat: 10}`) is an error naming it and the valid ones, never silently dropped.
    """
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
        cls = _IMAGE_ONLY.get(cls, cls)
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{where}: the parameters of {name} must be a mapping {{param: value}}, got {params!r}")
        try:
            out.append(cls(**(params or {}), strict=True))
        except (TypeError, ValueError) as exc:
            valid = ", ".join(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "strict"))
            first = re.sub(r"\s*For further information visit \S+", "", " ".join(str(exc).split()))[:300]
            raise ConfigError(f"{where}: invalid parameters for {name}: {first}. Valid parameters: {valid}") from None
    return out


def transform_name(transform) -> str:
    """The albumentations name of a built step, as a config writes it: a drop-in replacement's own
    (`ImageAffine`) is the class it stands in for (`Affine`)."""
    return next(c.__name__ for c in type(transform).__mro__ if c.__module__.startswith("albumentations."))


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

    def __init__(self, paths, targets=None, transform=None, scaling: Scaling = REFUSE):
        self.paths = list(paths)
        self.targets = np.asarray(targets if targets is not None else [-1] * len(self.paths), dtype=np.int64)
        self.transform = transform
        self.scaling = scaling

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_rgb(self.paths[i], self.scaling)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return image, int(self.targets[i])
