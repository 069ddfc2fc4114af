"""What the benchmark runs: the demo data, its datasets and loaders, large JPEGs, and timed steps.

The step functions each return the seconds one piece of work took (bare forward + backward +
step on in-memory tensors, the real training loop over a loader, bare and TTA prediction,
a loader alone). :mod:`pipeline.tools.bench` combines them into its phases.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import AugmentConfig, load_config
from pipeline.data.batches import image_loader
from pipeline.data.cache import CachedImageDataset, cached_transform, make_dataset
from pipeline.data.tables import read_train_table
from pipeline.tools.measure import sync

__all__ = ["demo_augment", "demo_table", "photo_augment", "photo_table", "training_rows", "make_loader",
           "bench_dataset", "write_large_images", "bare_train", "pipeline_train", "bare_predict", "pipeline_predict",
           "loader_only", "PHOTO_CLASSES", "PHOTO_VIEWS"]

REPO = Path(__file__).resolve().parents[2]
DEMO_AUGMENT = [  # configs/demo.yaml's augment.train, used when that file is not at hand
    {"Affine": {"translate_px": [-2, 2], "scale": [0.9, 1.1], "rotate": [-10, 10], "p": 0.7}},
    {"RandomBrightnessContrast": {"p": 0.3}},
]
PHOTO_AUGMENT = [  # configs/mask.yaml's augment.train, used when that file is not at hand
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "rotate": [-10, 10], "p": 0.7}},
    {"RandomBrightnessContrast": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5}},
    {"HueSaturationValue": {"hue_shift_limit": 5, "sat_shift_limit": 15, "val_shift_limit": 10, "p": 0.3}},
]
PHOTO_CROP = [320, 256]       # configs/mask.yaml's augment.pre_resize_crop: the face, before the resize
PHOTO_CLASSES = 18            # the mask competition's classes
PHOTO_VIEWS = ["identity", "hflip"]


# ---- data ---------------------------------------------------------------------------------------

def demo_augment(image_size: int) -> AugmentConfig:
    """The demo's augmentations (configs/demo.yaml, else a copy of them) at `image_size`."""
    demo = REPO / "configs" / "demo.yaml"
    if demo.is_file():
        aug = load_config(demo).augment
        aug.image_size = image_size
        return aug
    return AugmentConfig(image_size=image_size, train=DEMO_AUGMENT)


def photo_augment(image_size: int) -> AugmentConfig:
    """The mask competition's augmentations and face crop (configs/mask.yaml, else a copy) at `image_size`."""
    mask = REPO / "configs" / "mask.yaml"
    if mask.is_file():
        aug = load_config(mask).augment
        aug.image_size = image_size
        return aug
    return AugmentConfig(image_size=image_size, train=PHOTO_AUGMENT, pre_resize_crop=PHOTO_CROP)


def photo_table(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(paths, labels) of `n` generated 384x512 photo-like JPEGs with random labels of the mask's 18 classes."""
    paths = write_large_images(folder, n, seed=seed)
    labels = np.random.default_rng(seed).integers(0, PHOTO_CLASSES, n)
    labels[:PHOTO_CLASSES] = np.arange(min(n, PHOTO_CLASSES))     # every class present
    return paths, labels


def demo_table(data_dir: Path | None, tmp: Path, log) -> tuple[list[str], np.ndarray]:
    """(image paths, integer labels) of the demo's training set (data/demo, else a fresh copy)."""
    import pandas as pd
    from pipeline.competitions.demo import make_demo_dataset

    if data_dir is None:
        data_dir = REPO / "data" / "demo"
        if not (data_dir / "train.csv").is_file():
            log(f"[bench] writing the demo dataset to {tmp / 'demo'}")
            data_dir = make_demo_dataset(tmp / "demo", seed=0)["root"]
    demo_yaml = REPO / "configs" / "demo.yaml"
    cfg = load_config(demo_yaml if demo_yaml.is_file() else None,
                      {"data": {"train_csv": str(Path(data_dir) / "train.csv"), "image_root": str(data_dir)}})
    table = read_train_table(cfg)
    labels = pd.factorize(table["label"], sort=True)[0]
    return table["image"].tolist(), labels


def training_rows(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows drawn like a fold's training loader: oversampled (ratio 0.5, as the demo), then shuffled."""
    from pipeline.data.sampling import oversample_indices

    rows = oversample_indices(labels, 0.5, seed)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(rows)
    if len(rows) < n:
        rows = np.resize(rows, n)
    return rows[:n]


def make_loader(dataset, batch_size: int, device, workers: int, shuffle: bool, seed: int = 0):
    """A DataLoader set up as training's (`data.batches.image_loader`), shuffled from `seed`."""
    return image_loader(dataset, batch_size, device, workers, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(seed))


def bench_dataset(kind: str, paths, rows, targets, aug, train: bool, decoded):
    """kind: 'disk' and 'u8' are what training builds with `data.cache` off and on (`cache.make_dataset`);
    'cache' is the cache with albumentations' per-image Normalize (float items), for comparison."""
    if kind == "cache":
        ds = CachedImageDataset(decoded, rows, targets, cached_transform(aug, train, normalize=True))
    else:
        ds = make_dataset(aug, paths, rows, targets, train=train, decoded=decoded if kind == "u8" else None)
    ds.transform.set_random_seed(0)
    return ds


def write_large_images(folder: Path, n: int, width: int = 384, height: int = 512, seed: int = 0) -> list[str]:
    """Photo-like JPEGs: smooth random colour fields plus sensor-like noise (quality 90)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8))
        smooth = np.asarray(base.resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


# ---- timed steps --------------------------------------------------------------------------------

def _autocast(device, tools):
    return torch.autocast(device.type, dtype=tools.amp_dtype, enabled=tools.amp_dtype is not None)


def bare_train(model, optimizer, loss_fn, x, y, steps: int, device, tools=None) -> float:
    """Seconds for `steps` forward+backward+step on in-memory tensors, with `tools`' autocast dtype and
    GradScaler (a `train.loop.StepTools`; default float32). The losses are read once, at the end: the
    model's own pace, with no per-step wait for the device."""
    from pipeline.train.loop import StepTools

    tools = tools or StepTools()
    model.train()
    losses = []
    sync(device)
    tick = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, tools):
            loss = loss_fn(model(x), y)
        if tools.scaler is not None:
            tools.scaler.scale(loss).backward()
            tools.scaler.step(optimizer)
            tools.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    torch.stack(losses).sum().item()
    sync(device)
    return time.perf_counter() - tick


def pipeline_train(model, optimizer, loss_fn, loader, device, tools=None) -> float:
    """Seconds for one `train.train_one_epoch` over `loader` (the real training loop, with `tools`:
    a `train.loop.StepTools` as `train.fit` builds it; uint8 batches are normalised by its `normalize`)."""
    from pipeline.train.loop import train_one_epoch

    sync(device)
    tick = time.perf_counter()
    train_one_epoch(model, loader, optimizer, loss_fn, device, 0, tools)
    sync(device)
    return time.perf_counter() - tick


def bare_predict(model, x, n_batches: int, device, tools=None) -> float:
    """Seconds for `n_batches` forward passes of the in-memory batch `x` (under `tools`' autocast dtype)."""
    from pipeline.train.loop import StepTools

    tools = tools or StepTools()
    model.eval()
    sync(device)
    tick = time.perf_counter()
    with torch.inference_mode(), _autocast(device, tools):
        for _ in range(n_batches):
            model(x)
    sync(device)
    return time.perf_counter() - tick


def pipeline_predict(model, loader, views, device, tools) -> float:
    """Seconds for `tta.predict_tta` (mean over `views`) on every batch of `loader`, probabilities to the
    CPU; batches normalised by `tools.normalize`, under its autocast dtype."""
    from pipeline.predict.tta import predict_tta

    model.eval()
    sync(device)
    tick = time.perf_counter()
    with _autocast(device, tools):
        out = [predict_tta(model, tools.normalize(images.to(device, non_blocking=True)), views, "mean").float().cpu()
               for images, _ in loader]
    torch.cat(out)
    sync(device)
    return time.perf_counter() - tick


def loader_only(loader, device, normalize) -> float:
    """Seconds to get every batch of `loader` onto `device`, normalised (uint8 batches: by `normalize`)."""
    tick = time.perf_counter()
    for images, _ in loader:
        normalize(images.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - tick
