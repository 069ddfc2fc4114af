#!/usr/bin/env python3
"""Offline inference of a K-fold x TTA ensemble: the test images in, the submission out.

    python predict.py --images DIR --sample sample_submission.csv --out submission.csv [--device cuda]

`python -m pipeline bundle` copies this file, unchanged, into the bundle as ``predict.py``, beside the
files it reads: ``bundle.json`` (the classes, the model, the image geometry, the folds' weights),
``decisions.json`` (ensemble.json's submission: the views, the merge, the checkpoints, the out-of-fold
factors, the prior-shift correction to fit again, the vote), ``weights/`` and, when the prior-shift
correction needs them, ``oof.safetensors`` (out-of-fold probabilities and labels).
It imports torch, timm, numpy, pandas, safetensors, Pillow (which timm installs) and the standard
library; albumentations only when an image has to be cropped or resized. Nothing of the pipeline.

It repeats what the pipeline's predict, merge-seeds and ensemble stages do, in their order, so its
submission is the ensemble's:

1. every test image decoded (Pillow, RGB), centre-cropped and resized as the training cache did;
2. normalised by the same lookup table, in batches of the predict stage's size;
3. every fold's models (each seed, each checkpoint) on the submission's TTA views in one pass;
4. each view's probabilities rounded as the pipeline's probability files hold them (the ensemble reads
   those), the seeds averaged, per checkpoint the views merged, the checkpoints averaged;
5. the per-class factor: the logit adjustment and class bias fitted out of fold, plus the prior-shift
   correction fitted (and with ``auto`` decided) again on these test predictions as the ensemble's chain
   does; then the vote and the submission, in the sample's format, columns and row order.

``--budget`` has no place here: `python -m pipeline bundle --budget` chose the folds and views at build
time, from timings measured then (``bundle.json``'s ``timing``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

BUNDLE_FORMAT = "pipeline-bundle/2"
DECISIONS_FORMAT = "pipeline-bundle-decisions/2"
METRICS = ("f1_macro", "accuracy", "roc_auc", "log_loss", "qwk")
VOTING_MODES = ("soft", "hard", "geometric", "rank")
MERGE_MODES = ("mean", "geometric_mean", "max", "logit_mean")
FORMATS = ("labels", "probability", "class_probabilities")

_LOG_FLOOR = 1e-15        # probabilities floored before logs (voting, logit adjustment, class bias)
_TIE = 1e-9               # hard vote: shares closer than this are a tie
_PRIOR_FLOOR = 1e-6       # EM / BBSE: a class's estimated share never falls below this
_DECIMALS = 8             # probability submissions: decimals written
_MASK_HEADS = (3, 2, 3)   # the mask competition's heads: mask x gender x age = 18 classes


class BundleError(Exception):
    """Something the user can fix: a missing image, a damaged bundle, a sample of another competition."""


# ---- the bundle's files ----------------------------------------------------------------------------

def load_bundle(folder) -> tuple[dict, dict]:
    """(bundle.json, decisions.json) of the bundle in `folder`, their formats checked."""
    folder = Path(folder)
    out = []
    for name, fmt in (("bundle.json", BUNDLE_FORMAT), ("decisions.json", DECISIONS_FORMAT)):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path} is missing: upload the whole bundle folder, not predict.py alone")
        record = json.loads(path.read_text())
        if record.get("format") != fmt:
            raise BundleError(f"{path}: format {record.get('format')!r}, this predict.py reads {fmt!r}; "
                              "rebuild the bundle with the pipeline that made this predict.py")
        out.append(record)
    return out[0], out[1]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(partial(fh.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(folder, manifest: dict) -> None:
    """Every weights file is there, byte for byte the one the bundle was built with."""
    for fold in manifest["folds"]:
        for member in fold["members"]:
            path = Path(folder) / member["file"]
            if not path.is_file():
                raise BundleError(f"{path} is missing: upload the whole bundle folder")
            if file_sha256(path) != member["sha256"]:
                raise BundleError(f"{path} differs from the file the bundle was built with (sha256): a damaged "
                                  "or replaced copy; upload the bundle again")


def library_warnings(built: dict) -> list[str]:
    """Libraries whose version differs from the build's: the last digits of the probabilities may move."""
    from importlib import metadata

    notes = []
    for name, version in sorted(built.items()):
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if here != version:
            notes.append(f"{name} {here} here, {version} at build time")
    return notes


# ---- the test images ------------------------------------------------------------------------------

def read_sample(path, manifest: dict) -> pd.DataFrame:
    """The sample submission, every cell its exact text; its columns must be the build's sample's."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"sample submission {path} does not exist")
    sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    want = manifest["submission"]["columns"]
    if list(sample.columns) != want:
        raise BundleError(f"{path}: columns {list(sample.columns)}, the competition's sample has {want}: "
                          "is this the right competition's sample submission?")
    if sample.empty:
        raise BundleError(f"{path}: no rows")
    return sample


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def image_paths(sample: pd.DataFrame, images, spec: dict) -> list[Path]:
    """Each sample row's image under `images` (the folder the pipeline's test_root / image_root was),
    by the template ``test/{id}.png`` or the sample's path column; paths that lead out of it are refused."""
    root = Path(images)
    if not root.is_dir():
        raise BundleError(f"--images {root} is not a folder")
    if spec["path_column"]:
        relative = sample[spec["path_column"]].tolist()
    else:
        relative = [spec["template"].format(id=i) for i in sample[spec["id_column"]]]
    real_root = os.path.realpath(root)
    paths, missing = [], []
    for line, rel in enumerate(relative, start=2):
        part = Path(rel)
        if part.is_absolute() or ".." in part.parts or not _inside(real_root, os.path.realpath(root / part)):
            raise BundleError(f"sample line {line}: image path '{rel}' leads out of --images {root}; not opened")
        paths.append(root / part)
        if not paths[-1].is_file():
            missing.append(str(paths[-1]))
    if missing:
        raise BundleError(f"{len(missing)} test image(s) missing, e.g. {missing[:3]}: --images must be the folder "
                          f"that holds {spec['path_column'] or spec['template']}")
    return paths


_GEOMETRY = threading.local()


def _geometry(size: int, crop):
    """The cache's albumentations steps ([CenterCrop] -> Resize), one Compose per thread (they keep state)."""
    key = (size, tuple(crop) if crop else None)
    if getattr(_GEOMETRY, "key", None) != key:
        import albumentations as A   # only when an image must be cropped or resized

        steps = [A.CenterCrop(*crop, pad_if_needed=True)] if crop else []
        _GEOMETRY.compose, _GEOMETRY.key = A.Compose(steps + [A.Resize(size, size)]), key
    return _GEOMETRY.compose


def decode(path, size: int, crop=None) -> np.ndarray:
    """uint8 (size, size, 3): the pixels the pipeline's decode cache holds for this image."""
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "F") or img.mode.startswith("I;"):   # 16/32-bit: convert("RGB") would clip them
                raise BundleError(f"{path} is a {img.mode} (16/32-bit) image; the pipeline refused such images at "
                                  "training time (data.high_bit_depth: refuse) and this predict.py decodes 8-bit ones")
            image = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot decode image {path}: {exc}") from None
    if crop is None and image.shape[:2] == (size, size):
        return image    # albumentations' Resize returns such an image unchanged
    return _geometry(size, crop)(image=image)["image"]


def decode_pool() -> ThreadPoolExecutor:
    """Threads that decode a batch's images in parallel (Pillow and OpenCV release the GIL)."""
    return ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))


def decode_batch(paths, size: int, crop, pool: ThreadPoolExecutor | None) -> np.ndarray:
    images = list(pool.map(lambda p: decode(p, size, crop), paths)) if pool else [decode(p, size, crop) for p in paths]
    return np.stack(images)


def normalize(batch: np.ndarray, lut: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) by the pipeline's lookup table (albumentations' Normalize
    of every value 0..255 per channel), so the numbers are its own."""
    return torch.from_numpy(lut[batch, np.arange(3)]).permute(0, 3, 1, 2).contiguous()


# ---- the TTA views (on normalised batches) ---------------------------------------

def _hflip(x):
    return x.flip(3)


def _vflip(x):
    return x.flip(2)


def _rot(x, k: int):
    if k % 2 and x.shape[-2] != x.shape[-1]:
        raise BundleError(f"view rot{90 * k} needs square images, got {tuple(x.shape[-2:])}")
    return torch.rot90(x, k, dims=(2, 3))


def _pad_or_crop(size: int, target: int) -> tuple[int, int]:
    diff = target - size
    before = diff // 2 if diff >= 0 else -((-diff) // 2)
    return before, diff - before


def _reflect_pad(x, top: int, bottom: int, left: int, right: int):
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        t, b, l, r = (min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1))
        x = F.pad(x, (l, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x


def _scale(x, factor: float):
    h, w = x.shape[-2:]
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    if (new_h, new_w) == (h, w):
        return x
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    (top, bottom), (left, right) = _pad_or_crop(new_h, h), _pad_or_crop(new_w, w)
    y = y[..., max(0, -top):new_h - max(0, -bottom), max(0, -left):new_w - max(0, -right)]
    return _reflect_pad(y, max(0, top), max(0, bottom), max(0, left), max(0, right))


def _brightness(x, delta: float):
    return x + delta


def _contrast(x, factor: float):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return mean + factor * (x - mean)


_FIXED_VIEWS = {"identity": lambda x: x, "hflip": _hflip, "vflip": _vflip, "rot90": partial(_rot, k=1),
                "rot180": partial(_rot, k=2), "rot270": partial(_rot, k=3)}
_PARAM_VIEWS = {"scale": _scale, "brightness": _brightness, "contrast": _contrast}


def view_function(name: str):
    """The function of a view named as the pipeline names it (``hflip``, ``scale_0.9``, ...)."""
    if name in _FIXED_VIEWS:
        return _FIXED_VIEWS[name]
    prefix, _, value = name.partition("_")
    if prefix not in _PARAM_VIEWS:
        raise BundleError(f"decisions.json: unknown view {name!r}")
    return partial(_PARAM_VIEWS[prefix], **{"delta" if prefix == "brightness" else "factor": float(value)})


def view_probs(model, x, views):
    """Each view's probabilities (V, B, C) of the batch `x`, every view stacked into ONE forward pass, the
    softmax in float32 at least (as the predict stage writes them)."""
    with torch.inference_mode():
        logits = model(torch.cat([fn(x) for fn in views])).reshape(len(views), x.shape[0], -1)
    return (logits.float() if logits.element_size() < 4 else logits).softmax(-1)


# ---- the models --------------------------------------------------------------------------------------

class MaskHeads(torch.nn.Module):
    """The mask competition's model: one backbone, heads mask 3 x gender 2 x age 3, returning the 18
    classes' log-probabilities (the product of the heads' softmaxes)."""

    def __init__(self, name: str):
        super().__init__()
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=0.0)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(self.backbone.num_features, n) for n in _MASK_HEADS])

    def forward(self, x):
        features = self.backbone(x)
        lm, lg, la = (F.log_softmax(head(features).float(), dim=1) for head in self.heads)
        return (lm[:, :, None, None] + lg[:, None, :, None] + la[:, None, None, :]).reshape(-1, 18)


def build_model(spec: dict, n_classes: int, weights, device) -> torch.nn.Module:
    """The trained model: timm's architecture (no pretrained download), the bundle's weights, eval mode."""
    if spec["heads"] == "mask":
        model = MaskHeads(spec["name"])
    else:
        model = timm.create_model(spec["name"], pretrained=False, num_classes=n_classes, drop_rate=0.0)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()


def load_members(folder, manifest: dict, device) -> list[dict]:
    """Every model of every fold, loaded once: [{fold, seed, checkpoint, model}] in the bundle's order."""
    out = []
    for fold in manifest["folds"]:
        for member in fold["members"]:
            model = build_model(manifest["model"], len(manifest["classes"]), Path(folder) / member["file"], device)
            out.append({"fold": fold["fold"], "seed": member["seed"], "checkpoint": member["checkpoint"],
                        "model": model})
    return out


# ---- the probabilities as the pipeline's files hold them ---------------------------------------------

def as_written(probs: np.ndarray, float_format: str | None = None) -> np.ndarray:
    """`probs` (..., C) written to CSV and read back as the pipeline does (pandas, `float_format`): the
    ensemble reads the rounded numbers of test_probs.csv, so the bundle rounds the same way."""
    flat = probs.reshape(-1, probs.shape[-1]) if probs.ndim != 2 else probs
    if probs.ndim == 3:                                  # (V, N, C): one column per view and class, as the files
        flat = probs.transpose(1, 0, 2).reshape(probs.shape[1], -1)
    frame = pd.DataFrame({f"p{c}": flat[:, c] for c in range(flat.shape[1])})
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False, float_format=float_format)),
                       keep_default_na=False).to_numpy(dtype=np.float64)
    if probs.ndim == 3:
        return back.reshape(probs.shape[1], probs.shape[0], probs.shape[2]).transpose(1, 0, 2)
    return back.reshape(probs.shape)


def merge_views(probs, mode: str, axis: int = 0) -> np.ndarray:
    """The views' probabilities merged along `axis` from probabilities, as the ensemble merges them."""
    p = np.asarray(probs, dtype=np.float64)
    if mode == "mean":
        return p.mean(axis=axis)
    if mode in ("geometric_mean", "logit_mean"):
        logs = np.log(np.maximum(p, _LOG_FLOOR)).mean(axis=axis)
        e = np.exp(logs - logs.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if mode == "max":
        top = p.max(axis=axis)
        return top / top.sum(axis=-1, keepdims=True)
    raise BundleError(f"decisions.json: unknown TTA merge {mode!r}; known: {', '.join(MERGE_MODES)}")


def fold_probabilities(per_member: list[np.ndarray], members: list[dict], manifest: dict,
                       decisions: dict) -> np.ndarray:
    """(F, N, C) float64, each fold's chosen predictions as the ensemble reads them from test_probs.csv: each
    (seed, checkpoint)'s per-view probabilities as the predict stage writes them, its seeds averaged as
    merge-seeds writes them, then per checkpoint the views merged, the checkpoints averaged."""
    folds = []
    for fold in manifest["folds"]:
        by_checkpoint: dict = {}
        for probs, member in zip(per_member, members):
            if member["fold"] == fold["fold"]:
                by_checkpoint.setdefault(member["checkpoint"], []).append(as_written(probs))
        per_checkpoint = []
        for name in decisions["checkpoints"]:
            seeds = by_checkpoint[name]
            views = seeds[0] if manifest["seed_average_format"] is None else \
                as_written(np.mean(seeds, axis=0), manifest["seed_average_format"])
            per_checkpoint.append(merge_views(views, decisions["tta"]["merge"], axis=0))
        folds.append(np.mean(per_checkpoint, axis=0))
    return np.stack(folds)


def apply_log_factor(probs, log_factor) -> np.ndarray:
    """``p * exp(log_factor)`` per class, renormalised (probabilities floored at 1e-15 first)."""
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _LOG_FLOOR)) + np.asarray(log_factor,
                                                                                             dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the prior-shift correction, fitted on the test predictions ----------------------------------------

def _rows(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def _prior(prior) -> np.ndarray:
    q = np.asarray(prior, dtype=np.float64)
    return q / q.sum()


def em_prior(probs, train_prior, max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """The test class mix by EM (Saerens et al. 2002) from posteriors that assume `train_prior`."""
    p = _rows(probs)
    pi = _prior(train_prior)
    q = pi.copy()
    for _ in range(max_iter):
        post = p * (q / pi)
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
        new = np.maximum(post.mean(axis=0), _PRIOR_FLOOR)
        new /= new.sum()
        if np.abs(new - q).max() < tol:
            return new
        q = new
    return q


def bbse_prior(oof_probs, oof_y, test_probs) -> np.ndarray:
    """The test class mix by black-box shift estimation (Lipton et al. 2018) from the OOF confusion matrix."""
    p, t = _rows(oof_probs), _rows(test_probs)
    y = np.asarray(oof_y, dtype=np.int64)
    n_classes = p.shape[1]
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (p.argmax(axis=1), y), 1.0 / len(y))
    mu = np.bincount(t.argmax(axis=1), minlength=n_classes) / len(t)
    w = np.linalg.lstsq(joint, mu, rcond=None)[0]
    q = np.maximum(w * joint.sum(axis=0), _PRIOR_FLOOR)
    return q / q.sum()


def chi2_sf(x: float, dof: int) -> float:
    """P(chi-square with `dof` degrees of freedom > x), the regularised upper incomplete gamma
    Q(dof/2, x/2) in closed form (integer and half-integer shapes), summed in log space."""
    if x <= 0:
        return 1.0
    a, h = dof / 2.0, x / 2.0
    log_h = math.log(h)
    if dof % 2 == 0:
        return min(1.0, sum(math.exp(-h + i * log_h - math.lgamma(i + 1)) for i in range(int(a))))
    tail = math.erfc(math.sqrt(h))
    return min(1.0, tail + sum(math.exp(-h + (i + 0.5) * log_h - math.lgamma(i + 1.5)) for i in range(int(a))))


def shift_test(oof_probs, test_probs) -> tuple[float, float]:
    """(G, p-value) of the G-test that the OOF and test rows have the same predicted-class shares."""
    p, t = _rows(oof_probs), _rows(test_probs)
    n_classes = p.shape[1]
    table = np.stack([np.bincount(p.argmax(axis=1), minlength=n_classes),
                      np.bincount(t.argmax(axis=1), minlength=n_classes)]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    # scipy's chi2_contingency(correction=False, lambda_="log-likelihood"): 2 * xlogy(observed, observed /
    # expected), summed over the whole table (an empty cell adds 0)
    g = float(np.sum(2.0 * (table * np.log(np.where(table > 0, table / expected, 1.0)))))
    return g, chi2_sf(g, table.shape[1] - 1)


class Estimator:
    """A fitted way to estimate a test mix and the per-class log factor that corrects for it (``em``: EM from
    the models' prior; ``bbse``: the OOF confusion matrix; ``calibrated_em``: the folds' probabilities
    calibrated by the fitted temperature and bias, EM from the OOF labels' mix, the folds averaged)."""

    def __init__(self, method: str, reference, calibration: dict | None = None, oof=None, oof_y=None):
        self.method, self.reference = method, np.asarray(reference, dtype=np.float64)
        self.calibration, self.oof, self.oof_y = calibration, oof, oof_y

    def calibrate(self, probs) -> np.ndarray:
        c = self.calibration
        logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _LOG_FLOOR)) / c["temperature"] + \
            np.asarray(c["bias"], dtype=np.float64)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def estimate(self, probs) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "calibrated_em":
            per_fold = p if p.ndim == 3 else p[None]
            q = np.mean([em_prior(self.calibrate(f), self.reference) for f in per_fold], axis=0)
            return q / q.sum()
        vote = p.mean(axis=0) if p.ndim == 3 else p
        if self.method == "em":
            return em_prior(vote, self.reference)
        if self.method == "bbse":
            return bbse_prior(self.oof, self.oof_y, vote)
        raise BundleError(f"decisions.json: unknown prior-shift method {self.method!r}")

    def log_factor(self, q) -> np.ndarray:
        shift = np.log(np.asarray(q, dtype=np.float64)) - np.log(self.reference)
        if self.calibration is None:
            return shift
        return self.calibration["temperature"] * (np.asarray(self.calibration["bias"], dtype=np.float64) + shift)


# ---- the competition metric (for the simulated gain of the prior-shift correction) -----------------------

def _f1_macro(y, predicted, n_classes: int) -> float:
    tp = np.bincount(y[predicted == y], minlength=n_classes).astype(np.float64)
    fp = np.bincount(predicted, minlength=n_classes) - tp
    fn = np.bincount(y, minlength=n_classes) - tp
    denominator = 2 * tp + fp + fn
    return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)))


def _qwk(y, predicted, n_classes: int) -> float:
    confusion = np.zeros((n_classes, n_classes))
    np.add.at(confusion, (y, predicted), 1.0)
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / confusion.sum()
    weights = (np.arange(n_classes)[:, None] - np.arange(n_classes)[None, :]) ** 2.0
    denominator = (weights * expected).sum()
    return float(1 - (weights * confusion).sum() / denominator) if denominator > 0 else float("nan")


def _auc(positive, scores) -> float:
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _roc_auc(y, scores) -> float:
    n_classes = scores.shape[1]
    if len(np.unique(y)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return _auc(y == 1, scores[:, 1])
    return float(np.mean([_auc(y == c, scores[:, c]) for c in range(n_classes)]))


def _log_loss(y, probs) -> float:
    sums = probs.sum(axis=1, keepdims=True)
    p = np.where(sums > 0, probs / np.where(sums > 0, sums, 1.0), 1.0 / probs.shape[1])
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], _LOG_FLOOR)).mean())


def metric_gain(name: str, y, probs) -> float:
    """The competition metric of (N, C) `probs` signed so that higher is better; undefined counts as the worst."""
    y, probs = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    predicted, n_classes = probs.argmax(axis=1), probs.shape[1]
    if name == "f1_macro":
        value = _f1_macro(y, predicted, n_classes)
    elif name == "accuracy":
        value = float(np.mean(predicted == y))
    elif name == "qwk":
        value = _qwk(y, predicted, n_classes)
    elif name == "roc_auc":
        value = _roc_auc(y, probs)
    elif name == "log_loss":
        value = -_log_loss(y, probs)
    else:
        raise BundleError(f"decisions.json: unknown metric {name!r}; known: {', '.join(METRICS)}")
    return -math.inf if math.isnan(value) else value


def _draw(y, mix, n_rows: int, rng) -> np.ndarray:
    """Row indices drawn to `mix`: multinomial class counts, rows with replacement (the ensemble's draws)."""
    present = np.array([np.any(y == c) for c in range(len(mix))])
    mix = np.where(present, mix, 0.0)
    counts = rng.multinomial(n_rows, mix / mix.sum())
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=n, replace=True)
                           for c, n in enumerate(counts) if n])


def simulate(estimator: Estimator, decided, raw, y, mix, n_rows: int, metric: str, draws: int, seed: int) -> dict:
    """The correction on `draws` simulated test sets of `n_rows` nested OOF rows drawn to the estimated `mix`:
    the gains, and the estimate's L1 errors to the mix each draw holds."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    gains, errors = [], []
    for _ in range(draws):
        idx = _draw(y, np.asarray(mix, dtype=np.float64), n_rows, rng)
        q = estimator.estimate(raw[idx])
        corrected = apply_log_factor(decided[idx], estimator.log_factor(q))
        gains.append(metric_gain(metric, y[idx], corrected) - metric_gain(metric, y[idx], decided[idx]))
        errors.append(float(np.abs(q - np.bincount(y[idx], minlength=len(q)) / len(idx)).sum()))
    return {"gains": np.asarray(gains), "errors": np.asarray(errors)}


def _estimator(record: dict, oof: dict | None, which: str) -> Estimator:
    if record["method"] == "bbse":
        if oof is None:
            raise BundleError("the prior-shift correction (bbse) needs oof.safetensors, which the bundle lacks")
        return Estimator("bbse", record["reference_prior"], oof=oof[which], oof_y=oof["labels"])
    return Estimator(record["method"], record["reference_prior"], record.get(f"{which}_calibration"))


def _auto_verdict(step: dict, oof: dict, q, test_raw) -> tuple[bool, str, dict]:
    """`auto`'s decision as the ensemble's chain makes it: a shift found by the G-test (nested OOF rows against
    the test rows' soft vote), an estimate whose simulated error is under half the shift, and a simulated gain
    above `margin` times its noise."""
    nested = _estimator(step, oof, "nested")
    g, p_value = shift_test(oof["nested"], test_raw.mean(axis=0))
    rows = test_raw.shape[1]
    found = simulate(nested, oof["decided"], oof["nested"], oof["labels"], q, rows, step["metric"], step["draws"],
                     step["seed"])
    gains, errors = found["gains"], found["errors"]
    gain = float(gains.mean())
    noise = float(gains.std(ddof=1)) * math.sqrt(rows / len(oof["nested"]) + 1 / len(gains))
    shift_l1 = float(np.abs(np.asarray(q) - nested.reference).sum())
    report = {"g_statistic": g, "p_value": p_value, "gain": gain, "noise": noise,
              "estimate_l1_error": float(errors.mean()), "shift_l1": shift_l1}
    if p_value >= step["alpha"]:
        return False, f"no shift found (p={p_value:.2g}, not below {step['alpha']:g})", report
    if report["estimate_l1_error"] > shift_l1 / 2:
        return False, "the estimate is unreliable (its simulated error exceeds half the shift)", report
    if gain > 0 and gain > step["margin"] * noise:
        return True, f"its simulated gain {gain:+.4f} exceeds {step['margin']:g} x its noise {noise:.4f}", report
    return False, f"its simulated gain {gain:+.4f} is within {step['margin']:g} x its noise {noise:.4f}", report


def prior_shift(step: dict, selected, factors: list, oof: dict | None) -> tuple[np.ndarray | None, dict]:
    """The prior-shift correction decided and fitted again on these test predictions, as the ensemble's chain
    does: the selected (F, T, C) probabilities through the applied factors one by one, those factors divided
    out again (the probabilities as the models gave them), the test mix estimated, and for ``auto`` the
    decision re-made. Returns the correction's log factor (None: not applied) and what was decided."""
    test, total = np.asarray(selected, dtype=np.float64), None
    for factor in factors:
        test = apply_log_factor(test, factor)
        total = np.asarray(factor, dtype=np.float64) + (0.0 if total is None else total)
    test_raw = test if total is None else apply_log_factor(test, -total)
    full = _estimator(step, oof, "full")
    q = full.estimate(test_raw)
    report = {"setting": step["setting"], "method": step["method"], "estimate": q.tolist()}
    if step["setting"] == "on":
        applied, why = True, "forced on"
    else:
        if oof is None:
            raise BundleError("the prior-shift correction (auto) needs oof.safetensors, which the bundle lacks")
        applied, why, more = _auto_verdict(step, oof, q, test_raw)
        report.update(more)
    report.update(applied=applied, why=why)
    return (full.log_factor(q) if applied else None), report


def submission_log_factor(decisions: dict, selected, oof: dict | None) -> tuple[np.ndarray, dict]:
    """The per-class log factor of the submission: the OOF-fitted factors' sum, plus the prior-shift
    correction re-made on these test predictions (summed in the ensemble's order)."""
    factors = [np.asarray(f, dtype=np.float64) for f in decisions["factors"]]
    total = np.zeros(len(selected[0][0]))
    for factor in factors:
        total = total + factor
    report: dict = {}
    if decisions["prior_shift"] is not None:
        shift, report["prior_shift"] = prior_shift(decisions["prior_shift"], selected, factors, oof)
        if shift is not None:
            total = total + shift
    return total, report


# ---- the vote ------------------------------------------------------------------------------------------

def _weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def soft_vote(p: np.ndarray) -> np.ndarray:
    return np.tensordot(_weights(p.shape[0]), p, axes=1)


def vote_shares(p: np.ndarray) -> np.ndarray:
    n_folds, n_rows, n_classes = p.shape
    w = _weights(n_folds)
    shares = np.zeros((n_rows, n_classes))
    picks = p.argmax(axis=2)
    for k in range(n_folds):
        np.add.at(shares, (np.arange(n_rows), picks[k]), w[k])
    return shares


def hard_vote(p: np.ndarray) -> np.ndarray:
    shares = vote_shares(p)
    tied = np.isclose(shares, shares.max(axis=1, keepdims=True), rtol=0.0, atol=_TIE)
    return np.where(tied, soft_vote(p), -np.inf).argmax(axis=1).astype(np.int64)


def geometric_vote(p: np.ndarray) -> np.ndarray:
    log_mean = np.tensordot(_weights(p.shape[0]), np.log(np.maximum(p, _LOG_FLOOR)), axes=1)
    g = np.exp(log_mean - log_mean.max(axis=1, keepdims=True))
    return g / g.sum(axis=1, keepdims=True)


def rank_average(p: np.ndarray) -> np.ndarray:
    """Per fold and class, each row's average rank among the rows (1..N) / N, averaged over the folds."""
    ranks = np.stack([pd.DataFrame(fold).rank(method="average").to_numpy() for fold in p]) / p.shape[1]
    return np.tensordot(_weights(p.shape[0]), ranks, axes=1)


def vote_scores(probs, mode: str) -> np.ndarray:
    """(N, C) scores of the vote (the vote shares for ``hard``)."""
    p = np.asarray(probs, dtype=np.float64)
    scorers = {"soft": soft_vote, "hard": vote_shares, "geometric": geometric_vote, "rank": rank_average}
    if mode not in scorers:
        raise BundleError(f"decisions.json: unknown voting {mode!r}; known: {', '.join(VOTING_MODES)}")
    return scorers[mode](p)


def vote(probs, mode: str) -> np.ndarray:
    """Class index per row."""
    if mode == "hard":
        return hard_vote(np.asarray(probs, dtype=np.float64))
    return vote_scores(probs, mode).argmax(axis=1).astype(np.int64)


# ---- the submission ------------------------------------------------------------------------------------

def _text(values) -> list[str]:
    return [f"{v:.{_DECIMALS}f}" for v in np.asarray(values, dtype=np.float64)]


def fill_submission(sample: pd.DataFrame, spec: dict, classes: list, picked, scores) -> pd.DataFrame:
    """The sample with its prediction columns filled: the labels' exact text, or the vote's scores as
    probabilities (each row renormalised), in the sample's column and row order."""
    sub = sample.copy()
    kind = spec["kind"]
    if kind == "labels":
        sub[spec["target_column"]] = [str(classes[i]) for i in picked]
        return sub
    scores = np.asarray(scores, dtype=np.float64)
    probs = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)
    if kind == "probability":
        sub[spec["target_column"]] = _text(probs[:, classes.index(spec["positive"])])
        return sub
    if kind == "class_probabilities":
        for k, name in enumerate(classes):
            sub[next(c for c in sample.columns if str(c) == name)] = _text(probs[:, k])
        return sub
    raise BundleError(f"bundle.json: submission format {kind!r} is not one this predict.py writes ({', '.join(FORMATS)})")


def write_csv(frame: pd.DataFrame, out) -> None:
    """Written beside `out` first, then moved into place: a stopped run never leaves half a submission."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# ---- the run ---------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BundleError(f"--device {name}: no CUDA device here; use --device cpu (or auto)")
    return torch.device(name)


def member_probabilities(members: list[dict], paths: list, manifest: dict, decisions: dict, device,
                         batch_size: int, log=print) -> list[np.ndarray]:
    """Each member's per-view probabilities (V, N, C) float32 for the images `paths`, batch by batch: each
    batch decoded and normalised once, then through every model on every view."""
    image, views = manifest["image"], [view_function(v) for v in decisions["tta"]["views"]]
    lut = np.asarray(image["lut"], dtype=np.float32)
    out = [[] for _ in members]
    start, done = time.perf_counter(), 0
    with decode_pool() as pool:
        for first in range(0, len(paths), batch_size):
            x = normalize(decode_batch(paths[first:first + batch_size], image["size"], image["crop"], pool), lut)
            x = x.to(device)
            for i, member in enumerate(members):
                out[i].append(view_probs(member["model"], x, views).float().cpu())
            done += x.shape[0]
            log(f"[predict] {done}/{len(paths)} images, {time.perf_counter() - start:.0f}s")
    return [torch.cat(parts, dim=1).numpy() for parts in out]


def read_oof(folder, manifest: dict) -> dict | None:
    """oof.safetensors: the labels and the OOF probabilities the prior-shift correction is fitted from (``full``:
    the chosen predictions; ``nested``/``decided``: the chain's nested rows without / with its factors)."""
    if not manifest.get("oof"):
        return None
    return {name: t.numpy() for name, t in load_file(str(Path(folder) / manifest["oof"])).items()}


def _summary(decisions: dict, manifest: dict, report: dict, n_images: int) -> str:
    shift = report.get("prior_shift")
    views = decisions["tta"]["views"]
    text = (f"{decisions['voting']} vote of {len(manifest['folds'])} folds x {len(views)} views ({', '.join(views)}) "
            f"x checkpoints {', '.join(decisions['checkpoints'])} on {n_images} images")
    if shift:
        text += f", prior shift {'corrected (' + shift['method'] + ')' if shift['applied'] else 'not corrected'}"
    return text


def predict(folder, images, sample_path, out, device: str | None = None, batch_size: int | None = None,
            log=print) -> dict:
    """Write the submission for the test images; returns what was decided (folds, views, prior shift)."""
    tick = time.perf_counter()
    manifest, decisions = load_bundle(folder)
    for note in library_warnings(manifest["versions"]):
        log(f"[predict] note: {note}; the last digits of the probabilities may differ from the ensemble's")
    sample = read_sample(sample_path, manifest)
    paths = image_paths(sample, images, manifest["test_images"])
    check_weights(folder, manifest)
    device = resolve_device(device or manifest["device"])
    members = load_members(folder, manifest, device)
    per_member = member_probabilities(members, paths, manifest, decisions, device,
                                      batch_size or manifest["batch_size"], log)
    selected = fold_probabilities(per_member, members, manifest, decisions)
    log_factor, report = submission_log_factor(decisions, selected, read_oof(folder, manifest))
    probs = apply_log_factor(selected, log_factor)
    mode, classes = decisions["voting"], manifest["classes"]
    sub = fill_submission(sample, manifest["submission"], classes, vote(probs, mode), vote_scores(probs, mode))
    write_csv(sub, out)
    seconds = time.perf_counter() - tick
    log(f"[predict] {_summary(decisions, manifest, report, len(paths))} -> {out} ({seconds:.1f}s on {device})")
    return {"seconds": seconds, "device": str(device), "images": len(paths), "log_factor": log_factor.tolist(),
            **report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of the test images (the pipeline's test_root)")
    parser.add_argument("--sample", required=True, help="the competition's sample submission CSV")
    parser.add_argument("--out", default="submission.csv", help="where to write the submission")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the bundle's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: the predict stage's; another size may move the last digits)")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent),
                        help="the bundle folder (default: this script's)")
    parser.add_argument("--explain", default=None, help="also write what was decided (JSON) to this file")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        report = predict(args.bundle, args.images, args.sample, args.out, args.device, args.batch_size)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.explain:
        Path(args.explain).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
