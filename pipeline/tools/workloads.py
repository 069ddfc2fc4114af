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
from pipeline.data.cache import CachedImageDataset, cached_transform, make_dataset
from pipeline.data.tables import read_train_table
from pipeline.tools.measure import sync

__all__ = ["demo_augment", "demo_table", "training_rows", "make_loader", "bench_dataset", "write_large_images",
           "bare_train", "pipeline_train", "bare_predict", "pipeline_predict", "loader_only"]

REPO = Path(__file__).resolve().parents[2]
DEMO_AUGMENT = [  # configs/demo.yaml's augment.train, used when that file is not at hand
    {"Affine": {"translate_px": [-2, 2], "scale": [0.9, 1.1], "rotate": [-10, 10], "p": 0.7}},
    {"RandomBrightnessContrast": {"p": 0.3}},
]


# ---- data ---------------------------------------------------------------------------------------

def demo_augment(image_size: int) -> AugmentConfig:
    """The demo's augmentations (configs/demo.yaml, else a copy of them) at `image_size`."""
    demo = REPO / "configs" / "demo.yaml"
    if demo.is_file():
        aug = load_config(demo).augment
        aug.image_size = image_size
        return aug
    return AugmentConfig(image_size=image_size, train=DEMO_AUGMENT)


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
    """A DataLoader set up as training's: seeded shuffling and workers, pinned memory on CUDA."""
    from pipeline.device import seed_worker

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker if workers else None, persistent_workers=False)


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

def bare_train(model, optimizer, loss_fn, x, y, steps: int, device) -> float:
    """Seconds for `steps` forward+backward+step on in-memory tensors."""
    model.train()
    sync(device)
    tick = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()
    sync(device)
    return time.perf_counter() - tick


def pipeline_train(model, optimizer, loss_fn, loader, device, normalize=None) -> float:
    """Seconds for one `train.train_one_epoch` over `loader` (the real training loop; uint8
    batches are normalised by `StepTools.normalize`, as `train.fit` does with the cache)."""
    from pipeline.train.loop import StepTools, train_one_epoch

    sync(device)
    tick = time.perf_counter()
    train_one_epoch(model, loader, optimizer, loss_fn, device, 0, StepTools(normalize=normalize))
    sync(device)
    return time.perf_counter() - tick


def bare_predict(model, x, n_batches: int, device) -> float:
    """Seconds for `n_batches` forward passes of the in-memory batch `x`."""
    model.eval()
    sync(device)
    tick = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            model(x)
    sync(device)
    return time.perf_counter() - tick


def pipeline_predict(model, loader, views, device, normalize) -> float:
    """Seconds for `tta.predict_tta` (mean over `views`) on every batch of `loader`, probabilities to the CPU."""
    from pipeline.predict.tta import predict_tta

    model.eval()
    sync(device)
    tick = time.perf_counter()
    out = [predict_tta(model, normalize(images.to(device, non_blocking=True)), views, "mean").float().cpu()
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

