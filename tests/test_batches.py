"""The loaders' batches: the cache's items handed over already stacked, equal to what torch's default collate makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.config import AugmentConfig
from pipeline.data.batches import StackedSamples, collate_samples, image_loader
from pipeline.data.cache import BatchNormalize, CachedImageDataset, build_cache, cached_transform, make_dataset

AUG = AugmentConfig(image_size=24, train=[{"Affine": {"rotate": [-10, 10], "p": 0.7}},
                                          {"RandomBrightnessContrast": {"p": 0.5}}])


@pytest.fixture
def decoded(demo_dir, tmp_path):
    import pandas as pd

    paths = [str(demo_dir / p) for p in pd.read_csv(demo_dir / "train.csv")["image"][:20]]
    return paths, build_cache(paths, 24, None, tmp_path / "cache")


class OneByOne(torch.utils.data.Dataset):
    """The dataset read item by item (no batch read): what torch's DataLoader and default collate make of it."""

    def __init__(self, dataset):
        self.dataset, self.transform = dataset, dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]


def _batches(loader, seed: int) -> list:
    loader.dataset.transform.set_random_seed(seed)
    return list(loader)


@pytest.mark.parametrize("kind,workers", [("train", 0), ("predict", 0), ("float items", 0), ("no cache", 0),
                                          ("train", 1), ("predict", 1)])
def test_loader_batches_equal_the_default_collate_s(decoded, kind, workers):
    """Training's augmented uint8 items, prediction's untouched ones, per-image-normalised float items and the
    uncached dataset's, in the main process and in a worker: each batch (images and targets, values, dtype,
    shape) as torch's own collate makes it of the items read one by one."""
    paths, cache = decoded
    rows, targets = np.arange(20)[::-1], np.arange(20) % 4
    if kind == "float items":
        ds = CachedImageDataset(cache, rows, targets, cached_transform(AUG, True, normalize=True))
    else:
        ds = make_dataset(AUG, paths, rows, targets, train=kind != "predict",
                          decoded=None if kind == "no cache" else cache)
    ours = image_loader(ds, 6, torch.device("cpu"), workers, shuffle=True, generator=torch.Generator().manual_seed(1))
    torch_s = DataLoader(OneByOne(ds), batch_size=6, shuffle=True, num_workers=workers,
                         generator=torch.Generator().manual_seed(1), worker_init_fn=ours.worker_init_fn)
    got, expected = _batches(ours, 3), _batches(torch_s, 3)
    assert len(got) == len(expected) == 4
    for (images, t), (images_ref, t_ref) in zip(got, expected):
        assert images.dtype == images_ref.dtype and t.dtype == t_ref.dtype == torch.int64
        assert torch.equal(images, images_ref) and torch.equal(t, t_ref)


def test_a_stacked_batch_becomes_tensors_without_a_copy(decoded):
    """The cache's batch read is the batch: its tensors are views of the arrays the dataset stacked."""
    _, cache = decoded
    for transform in (cached_transform(AUG, True, normalize=False), cached_transform(AUG, False, normalize=False)):
        ds = CachedImageDataset(cache, None, np.arange(20), transform)
        samples = ds.__getitems__([3, 1, 4])
        assert isinstance(samples, StackedSamples)
        images, targets = collate_samples(samples)
        assert np.shares_memory(images.numpy(), samples.images) and np.shares_memory(targets.numpy(), samples.targets)
        assert targets.tolist() == [3, 1, 4] and tuple(images.shape) == (3, 24, 24, 3)


def test_stacked_batches_normalise_like_item_by_item_ones(decoded):
    """What training feeds the model: BatchNormalize over a loader batch equals the per-image pipeline's."""
    paths, cache = decoded
    norm = BatchNormalize(AUG.mean, AUG.std)
    fast = make_dataset(AUG, paths, None, None, train=False, decoded=cache)
    slow = make_dataset(AUG, paths, None, None, train=False)
    (images, _), = list(image_loader(fast, 20, torch.device("cpu")))
    (reference, _), = list(image_loader(slow, 20, torch.device("cpu")))
    assert torch.equal(norm(images), reference)
