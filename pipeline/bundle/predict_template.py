#!/usr/bin/env python3
"""Offline inference of a K-fold x TTA ensemble: the test images in, the submission out.

    python predict.py --images DIR --sample sample_submission.csv --out submission.csv [--device cuda]

`python -m pipeline bundle` copies this file, unchanged, into the bundle as ``predict.py``, beside the
files it reads: ``bundle.json`` (the classes, the model, the image geometry, the folds' weights),
``decisions.json`` (the TTA views, the checkpoints, the post-processing steps, the vote), ``weights/``
and, when the prior-shift correction needs them, ``oof.safetensors`` (out-of-fold probabilities).
It imports torch, timm, numpy, pandas, safetensors, Pillow (which timm installs) and the standard
library; albumentations only when an image has to be cropped or resized. Nothing of the pipeline.

It repeats what the pipeline's predict, merge-seeds and ensemble stages do, in their order, so its
submission is the ensemble's:

1. every test image decoded (Pillow, RGB), centre-cropped and resized as the training cache did;
2. normalised by the same lookup table, in batches of the predict stage's size;
3. every fold's models (each seed, each checkpoint) on every TTA view in one pass, the views merged;
4. the probabilities rounded as the pipeline's probability files hold them (the vote reads those);
5. the decisions: the prior-shift correction re-estimated on these test predictions, the logit
   adjustment and class bias fitted out of fold; then the vote and the submission, in the sample's
   format, columns and row order.

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

BUNDLE_FORMAT = "pipeline-bundle/1"
DECISIONS_FORMAT = "pipeline-bundle-decisions/1"
STEPS = ("prior_shift", "logit_adjust", "class_bias")
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


# ---- the TTA views (on normalised batches) and their merge ---------------------------------------

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


def merge_view_logits(logits, mode: str):
    """(V, B, C) logits -> (B, C) probabilities, as tta.merge says."""
    if not logits.is_floating_point() or logits.element_size() < 4:
        logits = logits.float()
    if mode == "mean":
        return logits.softmax(-1).mean(0)
    if mode == "geometric_mean":
        return logits.log_softmax(-1).mean(0).softmax(-1)
    if mode == "max":
        top = logits.softmax(-1).amax(0)
        return top / top.sum(-1, keepdim=True)
    if mode == "logit_mean":
        return logits.mean(0).softmax(-1)
    raise BundleError(f"decisions.json: unknown TTA merge {mode!r}; known: {', '.join(MERGE_MODES)}")


def tta_probs(model, x, views, merge: str):
    """Merged probabilities (B, C) of the batch `x`: every view stacked into ONE forward pass."""
    with torch.inference_mode():
        logits = model(torch.cat([fn(x) for fn in views])).reshape(len(views), x.shape[0], -1)
    return merge_view_logits(logits, merge)


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
    """`probs` written to CSV and read back as the pipeline does (pandas, `float_format`): the vote reads
    the rounded numbers of test_probs.csv, so the bundle rounds the same way."""
    frame = pd.DataFrame({f"p{c}": probs[:, c] for c in range(probs.shape[1])})
    return pd.read_csv(io.StringIO(frame.to_csv(index=False, float_format=float_format)),
                       keep_default_na=False).to_numpy()


def fold_probabilities(per_member: list[np.ndarray], members: list[dict], manifest: dict) -> np.ndarray:
    """(F, N, C) float64: each fold's checkpoints averaged (test_probs.csv), its seeds averaged (merge-seeds)."""
    folds = []
    for fold in manifest["folds"]:
        seeds: dict = {}
        for probs, member in zip(per_member, members):
            if member["fold"] == fold["fold"]:
                seeds.setdefault(member["seed"], []).append(probs)
        per_seed = [as_written(np.mean(ckpts, axis=0)) for ckpts in seeds.values()]
        if manifest["seed_average_format"] is None:
            folds.append(per_seed[0])
        else:
            folds.append(as_written(np.mean(per_seed, axis=0), manifest["seed_average_format"]))
    return np.stack(folds)


# ---- the decisions -----------------------------------------------------------------------------------

def _rows(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def _prior(prior) -> np.ndarray:
    q = np.asarray(prior, dtype=np.float64)
    return q / q.sum()


def reweight(probs, train_prior, test_prior) -> np.ndarray:
    """``p * test_prior / train_prior``, renormalised over the classes."""
    p = np.asarray(probs, dtype=np.float64)
    out = p * (_prior(test_prior) / _prior(train_prior))
    return out / out.sum(axis=-1, keepdims=True)


def em_prior(probs, train_prior, max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """The test class mix by EM (Saerens et al. 2002) from the voted test probabilities."""
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


def prior_shift(step: dict, test_probs, oof: dict | None) -> dict:
    """The prior-shift decision re-made on these test predictions (F, N, C), as the ensemble made it:
    EM on their soft vote, BBSE from the OOF confusion matrix, the G-test deciding ``auto``."""
    mode = step["mode"]
    if mode not in ("auto", "em", "bbse"):
        raise BundleError(f"decisions.json: prior_shift mode {mode!r} is not one of auto, em, bbse")
    if oof is None:
        raise BundleError("decisions.json: the prior-shift step needs oof.safetensors, which the bundle lacks")
    voted = np.asarray(test_probs, dtype=np.float64).mean(axis=0)   # EM needs probabilities: the soft vote
    estimates = {"em": em_prior(voted, step["model_prior"]), "bbse": bbse_prior(oof["probs"], oof["labels"], voted)}
    g, p_value = shift_test(oof["probs"], voted)
    method = {"em": "em", "bbse": "bbse", "auto": "em" if p_value < step["alpha"] else None}[mode]
    return {"mode": mode, "alpha": step["alpha"], "applied": method is not None, "method": method,
            "g_statistic": g, "p_value": p_value, "estimates": {k: v.tolist() for k, v in estimates.items()}}


def logit_adjust(probs, prior, tau: float) -> np.ndarray:
    """``p / prior**tau``, renormalised (computed in log space from floored probabilities)."""
    p = np.asarray(probs, dtype=np.float64)
    if tau == 0:
        return p.copy()
    logits = np.log(np.maximum(p, _LOG_FLOOR)) - tau * np.log(np.asarray(prior, dtype=np.float64))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def apply_bias(probs, bias) -> np.ndarray:
    """``p * exp(bias)`` per class, renormalised."""
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.maximum(p, 1e-15)) + np.asarray(bias, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def apply_decisions(probs, decisions: dict, oof: dict | None = None) -> tuple[np.ndarray, dict]:
    """Every fold's (F, N, C) probabilities through the decisions' steps, in their order; returns them and
    what the test-dependent steps decided (``{"prior_shift": ...}``). The one place that reads ``steps``:
    see decisions.json's format in pipeline/bundle/decisions.py."""
    probs, report = np.asarray(probs, dtype=np.float64), {}
    for step in decisions["steps"]:
        kind = step.get("step")
        if kind == "prior_shift":
            report["prior_shift"] = record = prior_shift(step, probs, oof)
            if record["applied"]:
                probs = reweight(probs, step["model_prior"], record["estimates"][record["method"]])
        elif kind == "logit_adjust":
            probs = logit_adjust(probs, step["prior"], float(step["tau"]))
        elif kind == "class_bias":
            probs = apply_bias(probs, step["bias"])
        else:
            raise BundleError(f"decisions.json: unknown step {kind!r}; this predict.py applies {', '.join(STEPS)}")
    return probs, report


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
    """Each member's merged TTA probabilities (N, C) float32 for the images `paths`, batch by batch:
    each batch decoded and normalised once, then through every model."""
    image, views = manifest["image"], [view_function(v) for v in decisions["tta"]["views"]]
    lut = np.asarray(image["lut"], dtype=np.float32)
    merge = decisions["tta"]["merge"]
    out = [[] for _ in members]
    start, done = time.perf_counter(), 0
    with decode_pool() as pool:
        for first in range(0, len(paths), batch_size):
            x = normalize(decode_batch(paths[first:first + batch_size], image["size"], image["crop"], pool), lut)
            x = x.to(device)
            for i, member in enumerate(members):
                out[i].append(tta_probs(member["model"], x, views, merge).float().cpu())
            done += x.shape[0]
            log(f"[predict] {done}/{len(paths)} images, {time.perf_counter() - start:.0f}s")
    return [torch.cat(parts).numpy() for parts in out]


def read_oof(folder, manifest: dict) -> dict | None:
    if not manifest.get("oof"):
        return None
    tensors = load_file(str(Path(folder) / manifest["oof"]))
    return {"probs": tensors["probs"].numpy(), "labels": tensors["labels"].numpy()}


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
    probs = fold_probabilities(per_member, members, manifest)
    probs, report = apply_decisions(probs, decisions, read_oof(folder, manifest))
    mode, classes = decisions["voting"], manifest["classes"]
    sub = fill_submission(sample, manifest["submission"], classes, vote(probs, mode), vote_scores(probs, mode))
    write_csv(sub, out)
    seconds = time.perf_counter() - tick
    shift = report.get("prior_shift")
    log(f"[predict] {mode} vote of {len(manifest['folds'])} folds x {len(decisions['tta']['views'])} views "
        f"({', '.join(decisions['tta']['views'])}) on {len(paths)} images"
        + (f", prior shift {'corrected (' + shift['method'] + ')' if shift['applied'] else 'not corrected'}"
           if shift else "") + f" -> {out} ({seconds:.1f}s on {device})")
    return {"seconds": seconds, "device": str(device), "images": len(paths), **report}


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
