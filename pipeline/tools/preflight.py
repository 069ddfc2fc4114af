"""Build everything a config names, once and cheaply, before any stage does real work.

The config's own checks (pipeline/config/) see keys, types and ranges. What only the libraries
can judge is built here, without data, weights or a GPU: the model (on torch's "meta" device, so
no memory and no download), every training augmentation with its parameters (albumentations'
strict mode: a misspelt parameter is an error, not silently dropped), every TTA view, the loss
with the real number of classes when the train CSV is readable, the optimizer and the schedule;
`model.pretrained: true` needs its weights in a local cache or a reachable hub (pipeline/train/pretrained.py).
An error names the key and says what is allowed, in the first seconds instead of after training. A
warning (to standard error) says when a few sampled training images are much larger than
augment.image_size (pipeline/data/sizes.py).

`resolve` runs it at Make's parse time; the result is remembered in ``stamps/preflight.json``
(the config and the classes it was checked with), so a `make` with an unchanged config pays
nothing, and a changed one pays a few seconds of imports once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline.config import Config, ConfigError, config_to_dict
from pipeline.fileio import write_text_if_changed

__all__ = ["preflight", "build_everything"]


def _train_table(cfg: Config):
    """The rows training would use, or None when the train CSV cannot be read yet (demo, mask)."""
    from pipeline.data.tables import read_train_table

    try:
        return read_train_table(cfg)
    except (OSError, ValueError):
        return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)   # resolve's standard output is Make's variables


def build_everything(cfg: Config, classes: list[str] | None) -> None:
    """Construct the model, augmentations, TTA views, loss, optimizer and scheduler; raise ConfigError."""
    import numpy as np
    import torch

    from pipeline.data.transforms import build_transform
    from pipeline.train.losses import build_loss
    from pipeline.train.models import create_model
    from pipeline.train.pretrained import check_pretrained_available
    from pipeline.train.optim import build_optimizer, build_scheduler
    from pipeline.predict.tta import canonical_views, parse_views

    n_classes = len(classes) if classes else _default_classes(cfg)
    build_transform(cfg.augment, train=True)
    try:
        views = [v.name for v in parse_views(cfg.tta.views)]
        unknown = [name for name in canonical_views(cfg.tta.select) if name not in views]
        if unknown:
            raise ValueError(f"tta.select: {unknown} not among tta.views {views} (the views predicted; the select "
                             "list keeps a subset of them)")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    build_loss(cfg.loss, np.ones(n_classes, dtype=np.int64))
    if cfg.model.pretrained_file and not Path(cfg.model.pretrained_file).is_file():
        raise ConfigError(f"model.pretrained_file: {cfg.model.pretrained_file} does not exist")
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_file": None})
    with torch.device("meta"):     # shapes only: no memory, no download
        model = create_model(model_cfg, n_classes, classes)
    check_pretrained_available(cfg.model)     # after create_model: an unknown name is said as such first
    optimizer = build_optimizer(cfg, model)
    build_scheduler(cfg, optimizer, updates_per_epoch=1)
    if cfg.train.amp == "fp16" and cfg.train.device == "cpu":
        raise ConfigError("train.amp: fp16 needs CUDA, and train.device is 'cpu'; use bf16 or off")


def _default_classes(cfg: Config) -> int:
    if cfg.model.heads == "mask":
        from pipeline.competitions.mask.labels import N_CLASSES
        return N_CLASSES
    for listed in (cfg.loss.class_weights, cfg.loss.focal_alpha):
        if isinstance(listed, list):
            return len(listed)
    return 2


# The sections whose values are built here: a change elsewhere (voting, paths) needs no rebuild.
_BUILT = ("model", "augment", "tta", "loss", "train")
# Which images the size warning looks at: another data set is looked at again.
_IMAGES = ("layout", "train_csv", "image_root", "image_column", "train_image_template")


def preflight(cfg: Config, train_table=None, log=_stderr) -> bool:
    """Check `cfg` by building everything it names, and warn (to `log`) when a few sampled training images are
    much larger than augment.image_size, unless these sections, classes and images passed before; returns True
    when the full check ran. `train_table`: `read_train_table(cfg)`, when the caller has read it already
    (Make runs resolve at every call: the table is read once for both)."""
    from pipeline.data.sizes import sample_images, size_warning
    from pipeline.data.tables import model_classes

    table = train_table if train_table is not None else _train_table(cfg)
    classes = model_classes(table) if table is not None else None
    built = {k: v for k, v in config_to_dict(cfg).items() if k in _BUILT}
    images = {k: getattr(cfg.data, k) for k in _IMAGES}
    key = hashlib.sha256(json.dumps([built, classes, images], sort_keys=True, default=str).encode())
    stamp = cfg.exp_dir / "stamps" / "preflight.json"
    record = json.dumps({"checked": key.hexdigest()[:16]}) + "\n"
    if stamp.is_file() and stamp.read_text() == record:
        return False
    build_everything(cfg, classes)
    sampled = sample_images(table["image"]) if table is not None else []
    warning = size_warning(sampled, cfg.augment.image_size, cfg.augment.pre_resize_crop)
    if warning:
        log(f"[resolve] warning: {warning}")
    write_text_if_changed(stamp, record)
    return True
