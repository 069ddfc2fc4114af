"""The pipeline's stages as functions of a config: each reads files and writes files.

    folds     train CSV                 → folds/<name>.csv
    (train)   see train.fit
    predict   fold weights + test set   → fold_<k>/test_probs.csv     (with TTA)
    ensemble  fold test probabilities   → submission.csv, oof.csv, cv.csv
    score     submission + true labels  → score.csv (and a printed table)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import ImageDataset, build_transform, class_list, read_test_table, read_train_table
from .ensemble import vote
from .fileio import write_csv_atomic
from .folds import assign_folds, fold_class_counts
from .metrics import classification_metrics
from .models import load_trained_model, read_sidecar
from .submission import write_submission
from .train import resolve_device
from .tta import parse_views, predict_tta

__all__ = ["make_folds", "predict_fold", "ensemble", "score", "fold_probs_frame"]

PROB_PREFIX = "prob_"


def make_folds(cfg: Config, log=print) -> Path:
    """Assign a fold to every training row (stratified; grouped when a group column is set).

    The data check runs first, so bad data fails here, before training, with every problem listed.
    """
    from .check import check_data

    report = check_data(cfg).raise_if_failed()
    if report.warnings:
        log(report.format())
    table = read_train_table(cfg)
    groups = table["group"].to_numpy() if cfg.data.group_column else None
    folds = assign_folds(table["stratify"].to_numpy(), cfg.folds.n_splits, cfg.seed, groups=groups)
    raw = pd.read_csv(cfg.data.train_csv)
    out = pd.DataFrame({"row": np.arange(len(raw)), "image": raw[cfg.data.image_column],
                        "label": table["label"], "group": table["group"], "fold": folds})
    write_csv_atomic(cfg.folds_file, out)
    log(f"[folds] {cfg.folds_file}: {len(out)} rows, {out['group'].nunique()} groups, "
        f"{cfg.folds.n_splits} folds; validation rows per class and fold:")
    log(fold_class_counts(table["label"].to_numpy(), folds).to_string())
    if cfg.data.stratify_column:
        log(f"[folds] stratified on '{cfg.data.stratify_column}'")
    return cfg.folds_file


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(PROB_PREFIX)]


def fold_probs_frame(ids, probs: np.ndarray, classes: list) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids})
    for c, name in enumerate(classes):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, c]
    return frame


def predict_fold(cfg: Config, fold: int, log=print) -> Path:
    """Predict the test set with one fold's best weights and the configured TTA views."""
    device = resolve_device(cfg.train.device)
    weights = cfg.fold_dir(fold) / "weights.safetensors"
    model, meta = load_trained_model(weights, device)
    test = read_test_table(cfg)
    loader = torch.utils.data.DataLoader(
        ImageDataset(test["image"], None, build_transform(cfg.augment, train=False)),
        batch_size=cfg.tta.batch_size, num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda")
    views = parse_views(cfg.tta.views)
    probs = [predict_tta(model, images.to(device), views, cfg.tta.merge).float().cpu() for images, _ in loader]
    probs = torch.cat(probs).numpy()
    out = cfg.fold_dir(fold) / "test_probs.csv"
    write_csv_atomic(out, fold_probs_frame(test["id"], probs, meta["classes"]))
    log(f"[predict] fold {fold}: {len(test)} test images x {len(views)} views "
        f"({', '.join(v.name for v in views)}) → {out}")
    return out


def _read_fold_probs(cfg: Config, name: str) -> tuple[list[pd.DataFrame], list]:
    frames, classes = [], None
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make train ensemble` (fold {k} is not done)")
        frame = pd.read_csv(path)
        fold_classes = read_sidecar(cfg.fold_dir(k) / "weights.safetensors")["classes"]
        if classes is not None and fold_classes != classes:
            raise ValueError(f"fold {k} was trained on classes {fold_classes}, fold 0 on {classes}; retrain")
        classes = fold_classes
        frames.append(frame)
    return frames, classes


def _oof_table(cfg: Config) -> tuple[pd.DataFrame, list]:
    frames, classes = _read_fold_probs(cfg, "oof.csv")
    oof = pd.concat(frames).sort_values("row").reset_index(drop=True)
    return oof, classes


def _cv_table(oof: pd.DataFrame, classes: list) -> pd.DataFrame:
    index = {str(c): i for i, c in enumerate(classes)}
    y = oof["label"].astype(str).map(index).to_numpy()
    probs = oof[_prob_columns(oof)].to_numpy()
    rows = [{"part": f"fold {k}", "rows": int((oof["fold"] == k).sum()),
             **classification_metrics(y[oof["fold"] == k], probs[oof["fold"] == k])}
            for k in sorted(oof["fold"].unique())]
    rows.append({"part": "out-of-fold", "rows": len(oof), **classification_metrics(y, probs)})
    return pd.DataFrame(rows)


def ensemble(cfg: Config, log=print) -> Path:
    """Vote the folds' test probabilities into the submission; report the cross-validation score."""
    oof, classes = _oof_table(cfg)
    write_csv_atomic(cfg.exp_dir / "oof.csv", oof)
    cv = _cv_table(oof, classes)
    write_csv_atomic(cfg.exp_dir / "cv.csv", cv)
    log("[ensemble] cross-validation (macro-F1, accuracy):\n" + cv.to_string(index=False, float_format="%.4f"))

    frames, _ = _read_fold_probs(cfg, "test_probs.csv")
    ids = frames[0]["id"]
    for k, f in enumerate(frames):
        if not f["id"].astype(str).equals(ids.astype(str)):
            raise ValueError(f"fold {k}'s test predictions cover other ids than fold 0's; rerun `make ensemble`")
    probs = np.stack([f[_prob_columns(f)].to_numpy() for f in frames])
    picked = vote(probs, cfg.ensemble.voting)
    labels = [classes[i] for i in picked]
    out = cfg.exp_dir / "submission.csv"
    write_submission(cfg.data.sample_submission, cfg.data.id_column, cfg.data.target_column, ids, labels, out)
    log(f"[ensemble] {cfg.ensemble.voting} voting over {len(frames)} folds → {out}")
    return out


def score(cfg: Config, log=print) -> pd.DataFrame:
    """Score the submission, each fold alone and every voting mode on the held-back test labels."""
    if not cfg.data.test_labels:
        raise ValueError("data.test_labels is not set: scoring needs the true test labels")
    truth = pd.read_csv(cfg.data.test_labels)
    frames, classes = _read_fold_probs(cfg, "test_probs.csv")
    order = frames[0]["id"].astype(str)
    truth = truth.set_index(truth[cfg.data.id_column].astype(str)).loc[order]
    index = {str(c): i for i, c in enumerate(classes)}
    y = truth[cfg.data.target_column].astype(str).map(index).to_numpy()
    probs = np.stack([f[_prob_columns(f)].to_numpy() for f in frames])
    rows = [{"model": f"fold {k}", **classification_metrics(y, probs[k])} for k in range(len(frames))]
    for mode in ("soft", "hard"):
        onehot = np.eye(len(classes))[vote(probs, mode)]
        chosen = " (submission)" if mode == cfg.ensemble.voting else ""
        rows.append({"model": f"{mode} vote{chosen}", **classification_metrics(y, onehot)})
    sub = pd.read_csv(cfg.exp_dir / "submission.csv")
    sub_y = sub[cfg.data.target_column].astype(str).map(index).to_numpy()
    rows.append({"model": "submission.csv", **classification_metrics(y, np.eye(len(classes))[sub_y])})
    table = pd.DataFrame(rows)
    write_csv_atomic(cfg.exp_dir / "score.csv", table)
    log(table.to_string(index=False, float_format="%.4f"))
    return table
