"""The predict stage of one fold: its checkpoints predict the validation rows (every TTA view) and the test set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.allocator import keep_freed_memory
from pipeline.config import Config
from pipeline.data.batches import image_loader
from pipeline.data.bit_depth import scaling_for
from pipeline.data.cache import BatchNormalize, decoded_for, make_dataset
from pipeline.data.tables import load_fold_table, read_test_table
from pipeline.device import loader_workers, resolve_device
from pipeline.fileio import folder_lock, write_csv_atomic
from pipeline.metrics import metric_value
from pipeline.predict.probs import CKPT_PREFIX, PROB_PREFIX, candidate_frame, class_ids
from pipeline.predict.tta import parse_views, predict_tta, predict_tta_with_views
from pipeline.train.models import load_trained_model

__all__ = ["AUTO_CHECKPOINTS", "predict_fold", "checkpoint_names", "checkpoint_path"]

_CKPT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


AUTO_CHECKPOINTS = ["best", "last"]   # `ensemble.checkpoints: auto` predicts both; the ensemble chooses


def checkpoint_names(cfg: Config, checkpoints=None) -> list[str]:
    """The checkpoints each fold predicts with (config key ``ensemble.checkpoints``, default [best]; ``auto``:
    best and last, for the ensemble to choose from)."""
    names = checkpoints if checkpoints is not None else cfg.ensemble.checkpoints
    if names == "auto":
        return list(AUTO_CHECKPOINTS)
    if isinstance(names, str) or not names:
        raise ValueError(f"ensemble.checkpoints: expected a non-empty list such as [best, last], got {names!r}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _CKPT_NAME.match(name):
            raise ValueError(f"ensemble.checkpoints: {name!r} is not a checkpoint name (letters, digits, "
                             "'_', '-', '.'; 'best' is weights.safetensors, NAME is NAME.safetensors)")
        if name not in out:
            out.append(name)
    return out


def checkpoint_path(cfg: Config, fold: int, name: str) -> Path:
    """``best`` → ``fold_<k>/weights.safetensors`` (the train target); NAME → ``fold_<k>/NAME.safetensors``."""
    return cfg.fold_dir(fold) / ("weights.safetensors" if name == "best" else f"{name}.safetensors")


def _checkpoint_paths(cfg: Config, fold: int, names: list[str]) -> dict[str, Path]:
    paths = {n: checkpoint_path(cfg, fold, n) for n in names}
    missing = [f"'{n}' ({p})" for n, p in paths.items() if not p.is_file()]
    if missing:
        how = ("run `make train`" if list(paths) == ["best"] else
               "the trainer writes weights.safetensors ('best') and, when it keeps it, last.safetensors "
               "('last'): retrain this fold with such a trainer, or drop the name from ensemble.checkpoints")
        raise FileNotFoundError(f"fold {fold}: checkpoint(s) listed in ensemble.checkpoints are missing: "
                                f"{', '.join(missing)}; {how}")
    return paths


def _predict_images(model, dataset, normalize, views, cfg: Config, device, per_view: bool):
    """TTA probabilities for a dataset's images: (merged (N, C), per-view (V, N, C) or None)."""
    loader = image_loader(dataset, cfg.tta.batch_size, device, loader_workers(cfg.train.num_workers, device))
    merged, each = [], []
    for images, _ in loader:
        images = normalize(images.to(device, non_blocking=True))   # uint8 cache batches → floats
        if per_view:
            v, m = predict_tta_with_views(model, images, views, cfg.tta.merge)
            each.append(v.float().cpu())
        else:
            m = predict_tta(model, images, views, cfg.tta.merge)
        merged.append(m.float().cpu())
    return torch.cat(merged).numpy(), (torch.cat(each, dim=1).numpy() if per_view else None)


def _probs_frame(keys: dict, classes: list, views, merged: dict, per_view: dict) -> pd.DataFrame:
    """A fold's probability file: the `keys` columns, then the probabilities merged over views and averaged over
    checkpoints (``prob_*``), each view averaged over checkpoints, and with several checkpoints each checkpoint
    merged and each (checkpoint, view) pair alone (:mod:`pipeline.predict.probs`). `merged` holds each
    checkpoint's (N, C) merged probabilities, `per_view` its (V, N, C) per-view ones."""
    names = [v.name for v in views]
    mean_view = np.mean(list(per_view.values()), axis=0)
    cols: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in keys.items()}
    mean_merged = np.mean(list(merged.values()), axis=0)
    parts = [pd.DataFrame(cols), pd.DataFrame({f"{PROB_PREFIX}{name}": mean_merged[:, c] for c, name in enumerate(classes)}),
             candidate_frame({"all": mean_view}, names, classes)]
    if len(merged) > 1:
        parts.append(pd.DataFrame({f"{CKPT_PREFIX}{ckpt}:{PROB_PREFIX}{name}": probs[:, c]
                                   for ckpt, probs in merged.items() for c, name in enumerate(classes)}))
        parts.append(candidate_frame(per_view, names, classes))
    return pd.concat(parts, axis=1)


def _score(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    return metric_value(metric, y, probs) if len(y) else float("nan")


def predict_fold(cfg: Config, fold: int, log=print, checkpoints=None) -> Path:
    """Predict one fold's validation rows (every view) and the test set (merged) with TTA.

    Each checkpoint in ``ensemble.checkpoints`` (default ``[best]``) predicts; their probabilities are
    averaged. Writes ``fold_<k>/oof_tta.csv`` first, then ``fold_<k>/test_probs.csv`` (the Make target),
    both atomically, holding the fold's lock (a fold being trained is predicted once it is done).
    Every view of a batch goes through the model in one forward pass.
    """
    if not 0 <= fold < cfg.folds.n_splits:
        raise ValueError(f"fold {fold} does not exist: folds.n_splits is {cfg.folds.n_splits}")
    with folder_lock(cfg.fold_dir(fold), f"fold {fold} of {cfg.exp_dir}", log):
        return _predict_fold(cfg, fold, log, checkpoints)


def _predict_fold(cfg: Config, fold: int, log, checkpoints) -> Path:
    device = resolve_device(cfg.train.device)
    keep_freed_memory()
    paths = _checkpoint_paths(cfg, fold, checkpoint_names(cfg, checkpoints))
    views = parse_views(cfg.tta.views)
    normalize = BatchNormalize(cfg.augment.mean, cfg.augment.std).to(device)
    table = load_fold_table(cfg)
    rows = np.flatnonzero(table["fold"].to_numpy() == fold)
    labels = table["true_label"].to_numpy()[rows]
    train_paths = table["image"].to_numpy()
    test = read_test_table(cfg)
    # The training images' cache is the one training built; the test set gets its own.
    scaling = scaling_for(cfg)   # high-bit images: the training images' window, for the test images too
    val_set = make_dataset(cfg.augment, train_paths, rows, decoded=decoded_for(cfg, train_paths, log=log),
                           scaling=scaling)
    test_set = make_dataset(cfg.augment, test["image"].to_numpy(), decoded=decoded_for(cfg, test["image"], log=log),
                            scaling=scaling)
    classes, oof_merged, oof_views, test_merged, test_views = None, {}, {}, {}, {}
    for name, path in paths.items():
        model, meta = load_trained_model(path, device)
        if classes is not None and meta["classes"] != classes:
            raise ValueError(f"fold {fold}: checkpoint '{name}' ({path}) has classes {meta['classes']}, "
                             f"'{next(iter(paths))}' has {classes}; retrain the fold")
        classes = meta["classes"]
        oof_merged[name], oof_views[name] = _predict_images(model, val_set, normalize, views, cfg, device, True)
        test_merged[name], test_views[name] = _predict_images(model, test_set, normalize, views, cfg, device, True)
    merged = np.mean(list(oof_merged.values()), axis=0)
    per_view = np.mean(list(oof_views.values()), axis=0)
    y = class_ids(labels, classes, f"{cfg.folds_file} fold {fold}")
    frame = _probs_frame({"row": rows, "label": labels, "fold": np.full(len(rows), fold)}, classes, views,
                         oof_merged, oof_views)
    oof_out, out = cfg.fold_dir(fold) / "oof_tta.csv", cfg.fold_dir(fold) / "test_probs.csv"
    write_csv_atomic(oof_out, frame, float_format="%.7g")   # float32 precision; about half the text
    # The test file holds the same columns (at full precision): the ensemble chooses views and checkpoints
    # on the OOF rows and applies the choice to these.
    write_csv_atomic(out, _probs_frame({"id": test["id"].to_numpy()}, classes, views, test_merged, test_views))
    metric = cfg.competition.metric
    ckpts = f" x {len(paths)} checkpoints ({', '.join(paths)})" if len(paths) > 1 else ""
    log(f"[predict] fold {fold}: {len(views)} views ({', '.join(v.name for v in views)}){ckpts}; "
        f"validation {metric} {_score(metric, y, per_view[0]):.4f} identity → {_score(metric, y, merged):.4f} TTA "
        f"({len(rows)} rows → {oof_out.name}); {len(test)} test images → {out}")
    return out
