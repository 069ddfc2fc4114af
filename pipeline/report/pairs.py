"""Suspected duplicate pairs as a figure (two images side by side per row), for the EDA page and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.report.plots import new_figure

__all__ = ["image_thumb", "pairs_figure"]


def image_thumb(path: str, size: int = 96) -> np.ndarray | None:
    """An RGB thumbnail of at most `size` px, or None when the image cannot be read."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def pairs_figure(pairs: pd.DataFrame, limit: int = 8):
    """The first `limit` rows of a leaks.csv table (strongest first): image a | image b, fold and similarity."""
    shown = pairs.head(limit)
    fig = new_figure(4.6, 2.2 * len(shown) + 0.2)
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for r, row in enumerate(shown.itertuples(index=False)):
        for k, (img, fold) in enumerate([(row.image_a, row.fold_a), (row.image_b, row.fold_b)]):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            thumb = image_thumb(img, 128)
            if thumb is not None:
                ax.imshow(thumb, interpolation="nearest")
            ax.set_title(f"{Path(img).name}\nfold {fold}, {row.label}", fontsize=7)
        axes[r, 0].set_ylabel(f"similarity {row.similarity:.3f}", fontsize=8)
    return fig
