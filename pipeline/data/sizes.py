"""A few images' sizes, read from their headers (nothing decoded), and what they say about augment.image_size.

Opening every image at resolve time would cost seconds per thousand images at every `make`: these
helpers look at a handful, evenly spaced through the table.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["sample_images", "typical_size", "size_warning", "MUCH_LARGER"]

# Images whose shorter side is this many times augment.image_size (or more) are "much larger".
MUCH_LARGER = 4


def sample_images(paths, n: int = 8) -> list[tuple[int, int, str]]:
    """``(width, height, PIL mode)`` of up to `n` of `paths`, evenly spaced; unreadable files are skipped
    (the data check reports them)."""
    paths = list(paths)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)) if paths else []
    found = []
    for i in picks:
        try:
            with Image.open(paths[i]) as img:
                found.append((img.size[0], img.size[1], img.mode))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return found


def typical_size(sampled: list[tuple[int, int, str]]) -> tuple[int, int]:
    """The median width and height of `sample_images`' result."""
    return int(np.median([w for w, _, _ in sampled])), int(np.median([h for _, h, _ in sampled]))


def size_warning(sampled: list[tuple[int, int, str]], image_size: int, crop=None) -> str | None:
    """A warning when the images (after augment.pre_resize_crop) are MUCH_LARGER times augment.image_size or more.

    >>> size_warning([(512, 384, "RGB")] * 3, 32) is not None, size_warning([(48, 48, "RGB")], 32)
    (True, None)
    """
    if not sampled:
        return None
    width, height = typical_size(sampled)
    seen = (min(crop[1], width), min(crop[0], height)) if crop else (width, height)
    shrink = min(seen) / image_size
    if shrink < MUCH_LARGER:
        return None
    cropped = f", {seen[0]}x{seen[1]} after augment.pre_resize_crop" if crop else ""
    return (f"augment.image_size is {image_size}, but the training images are about {width}x{height} (median of "
            f"{len(sampled)} sampled{cropped}): the model sees them shrunk {shrink:.0f}x and their detail is lost. "
            f"Raise augment.image_size (e.g. {min(224, min(seen)) // 8 * 8}) unless that is what you want.")
