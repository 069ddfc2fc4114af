"""A long-tailed product-photo benchmark with a balanced held-back test set, from Debian's fashion-MNIST.

    python -m pipeline.tools.fashion_lt --out data/fashion-lt      # then: make folds train ensemble score
                                                                    #         CONFIG=data/fashion-lt/config.yaml

The case the prior-shift correction exists for, and one where a TTA view hurts: ten classes of 28×28
product photos, trained on a long tail (the head class ``head`` images, each next class fewer, down to
``head / ratio``), tested on a balanced set of ``test_per_class`` images per class drawn from fashion-MNIST's
own test split; the views are the identity, a left-right flip (photos of clothes are roughly symmetric)
and an upside-down flip (they are not). The config is the demo's (oversampling, label smoothing, six
epochs: what makes posteriors miscalibrated). Needs ``apt-get install dataset-fashion-mnist``; nothing in
the pipeline or its tests depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.tools.leak_sources import FASHION_DIR, read_idx_images, read_idx_labels

__all__ = ["CLASSES", "tail_counts", "make_fashion_lt", "main"]

CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
VIEWS = ["identity", "hflip", "vflip"]


def tail_counts(head: int, ratio: float, n_classes: int) -> np.ndarray:
    """Images per class, geometric from `head` down to `head / ratio`.

    >>> tail_counts(400, 20, 4).tolist()
    [400, 147, 54, 20]
    """
    return np.round(head * (1.0 / ratio) ** (np.arange(n_classes) / (n_classes - 1))).astype(int)


def _read(split: str) -> tuple[np.ndarray, np.ndarray]:
    images = FASHION_DIR / f"{split}-images-idx3-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(f"{images} is missing: install Debian's fashion-MNIST (apt-get install "
                                "dataset-fashion-mnist)")
    return read_idx_images(images), read_idx_labels(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz")


def _write_images(images: np.ndarray, folder: Path, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / f"{name}.png")


def make_fashion_lt(out: str | Path, head: int = 400, ratio: float = 20.0, test_per_class: int = 100,
                    seed: int = 0, experiment: str = "fashion-lt") -> Path:
    """Write the benchmark's images, CSVs and config into `out`; returns the config's path."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CLASSES))               # which class is the head is chosen by the seed
    counts = dict(zip(order.tolist(), tail_counts(head, ratio, len(CLASSES)).tolist()))
    images, labels = _read("train")
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c, n in counts.items()])
    names = [f"tr{i:05d}" for i in range(len(chosen))]
    _write_images(images[chosen], out / "train", names)
    pd.DataFrame({"image": [f"train/{n}.png" for n in names], "label": [CLASSES[c] for c in labels[chosen]],
                  "group": names}).to_csv(out / "train.csv", index=False)
    test_images, test_labels = _read("t10k")
    picked = np.concatenate([rng.choice(np.flatnonzero(test_labels == c), size=test_per_class, replace=False)
                             for c in range(len(CLASSES))])
    picked = rng.permutation(picked)
    ids = [f"te{i:05d}" for i in range(len(picked))]
    _write_images(test_images[picked], out / "test", ids)
    pd.DataFrame({"id": ids, "label": CLASSES[0]}).to_csv(out / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids, "label": [CLASSES[c] for c in test_labels[picked]]}).to_csv(out / "test_labels.csv",
                                                                                        index=False)
    return _write_config(out, experiment)


def _write_config(out: Path, experiment: str) -> Path:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    cfg["experiment"] = experiment
    cfg["data"] = {"train_csv": str(out / "train.csv"), "image_root": str(out), "image_column": "image",
                   "label_column": "label", "group_column": "group", "id_column": "id", "target_column": "label",
                   "sample_submission": str(out / "sample_submission.csv"), "test_image_template": "test/{id}.png",
                   "test_labels": str(out / "test_labels.csv")}
    cfg["tta"] = {"views": VIEWS, "merge": "mean"}
    cfg.pop("report", None)
    cfg.pop("tune", None)
    path = out / "config.yaml"
    path.write_text("# A long-tailed fashion-MNIST benchmark with a balanced test set (pipeline.tools.fashion_lt)\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the images, CSVs and config.yaml")
    parser.add_argument("--head", type=int, default=400, help="images of the largest class")
    parser.add_argument("--ratio", type=float, default=20.0, help="largest class / smallest class")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_fashion_lt(args.out, args.head, args.ratio, args.test_per_class, args.seed)
    print(f"[fashion-lt] {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
