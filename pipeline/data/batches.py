"""Batches: the one way every stage builds its DataLoader, and the collate that stacks a batch without copying it.

torch's default collate turns each image of a batch into a tensor, then stacks them: at 32 px about 0.3 ms for a
batch of 64 right after a forward pass, a share of a bf16 step's time that `make bench` sees. The decode
cache's dataset reads a batch's pixels in one go and hands them over already stacked (`StackedSamples`);
`collate_samples` makes the batch's tensors over those arrays, and leaves every other batch to the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from pipeline.device import seed_worker

__all__ = ["StackedSamples", "collate_samples", "image_loader"]


class StackedSamples(Sequence):
    """A batch as two stacked arrays, `images` and `targets`, for `collate_samples` to use as they are; read
    as a sequence of (image, target) pairs (what any other collate takes), each pair made when asked for."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.targets[i])


def collate_samples(batch: list):
    """(images, targets) tensors over a `StackedSamples` batch's own arrays; any other batch (float items,
    `data.ImageDataset`'s) as torch's default collate makes it."""
    if isinstance(batch, StackedSamples):
        return torch.from_numpy(batch.images), torch.from_numpy(batch.targets)
    return default_collate(batch)


def image_loader(dataset, batch_size: int, device: torch.device, workers: int = 0, shuffle: bool = False,
                 sampler=None, generator: torch.Generator | None = None, drop_last: bool = False,
                 persistent: bool = False) -> DataLoader:
    """The DataLoader of training, validation, prediction and `make bench`: `collate_samples`, pinned memory
    beside a GPU, workers seeded from the loader's generator (`device.seed_worker`), kept alive between passes
    only when `persistent`."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda", generator=generator,
                      worker_init_fn=seed_worker if workers else None, drop_last=drop_last,
                      persistent_workers=persistent and workers > 0)
