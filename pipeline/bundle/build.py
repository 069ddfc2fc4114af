"""`make bundle`: a finished experiment → ``outputs/<exp>/bundle/``, an offline inference folder to upload.

    predict.py         the template (pipeline/bundle/predict_template.py), copied unchanged
    bundle.json        classes, model, image geometry and normalisation, test-image paths, submission format,
                       each fold's weights (file, sha256), library versions, timing, budget choice
    decisions.json     ensemble.json's submission: TTA views and merge, checkpoints, the OOF-fitted factors,
                       the prior-shift correction to refit on the test predictions, vote (pipeline/bundle/decisions.py)
    config.yaml        the resolved config, for the record (predict.py does not read it)
    weights/           fold_<k>[-seed_<s>]-<checkpoint>.safetensors, the submission's checkpoints only
    oof.safetensors    out-of-fold probabilities and labels (only when the prior-shift correction needs them)

The chain is run again on the experiment's files (nothing written) when the prior-shift correction needs its
nested rows or a budget its per-view rows; its submission entry must be ensemble.json's, else the record is
stale and the bundle is refused.

Every refusal comes before anything is written, and the folder is replaced only once complete.
"""

from __future__ import annotations

import os
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from pipeline.bundle import predict_template as template
from pipeline.bundle.budget import Timing, select_within_budget
from pipeline.bundle.decisions import decisions_from_ensemble, needs_oof, shift_arrays
from pipeline.bundle.sources import BundleRefused, Sources, gather_sources, oof_views
from pipeline.bundle.timing import measure_timing
from pipeline.config import Config, config_to_dict
from pipeline.data.cache import BatchNormalize
from pipeline.data.tables import read_test_table, read_train_table
from pipeline.fileio import atomic_dir, file_sha256, write_json_atomic
from pipeline.results.ensemble_stage import ChainResult, chain_settings, read_inputs, run_chain

__all__ = ["build_bundle", "bundle_size", "TEMPLATE", "SEED_AVERAGE_FORMAT", "DEFAULT_TIMING_IMAGES"]

TEMPLATE = Path(template.__file__)
# merge-seeds writes each fold's seed average with this float format (pipeline.predict.seeds), and the
# ensemble reads those rounded numbers: the bundle rounds the same way.
SEED_AVERAGE_FORMAT = "%.7g"
DEFAULT_TIMING_IMAGES = 64
# The libraries whose versions decide predict.py's numbers; it warns when the target's differ.
_LIBRARIES = ("torch", "timm", "numpy", "pandas", "safetensors", "pillow", "albumentations")


def _versions() -> dict:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _timing_device(device: str, budget) -> torch.device:
    """The device the timings are measured on: the target's, when this machine has it."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise BundleRefused(f"--device {device!r}: expected auto, cpu, cuda or cuda:<n>")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        if budget is not None:
            raise BundleRefused(f"--device {device}: this machine has no CUDA device, so the budget cannot be timed "
                                "on it; build the bundle on a machine with the target's GPU, or budget for --device cpu")
        return torch.device("cpu")
    return torch.device(device)


def _lut(cfg: Config) -> list:
    """albumentations' Normalize of every value 0..255, per channel (256, 3): the pipeline's own table."""
    return BatchNormalize(cfg.augment.mean, cfg.augment.std).lut.reshape(256, 3).tolist()


def _manifest(cfg: Config, sources: Sources, folds: list, oof: bool, device: str, batch_size: int) -> dict:
    record = sources.ensemble
    return {
        "format": template.BUNDLE_FORMAT, "experiment": cfg.experiment,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"), "ensemble_sha256": file_sha256(sources.ensemble_path),
        "classes": sources.classes, "model": sources.model,
        "image": {"size": cfg.augment.image_size, "crop": cfg.augment.pre_resize_crop, "mean": cfg.augment.mean,
                  "std": cfg.augment.std, "lut": _lut(cfg)},
        "test_images": {"id_column": cfg.data.id_column, "template": cfg.data.test_image_template,
                        "path_column": cfg.data.test_path_column},
        "submission": {"kind": record["submission_format"], "positive": record.get("positive_class"),
                       "target_column": cfg.data.target_column, "columns": sources.sample_columns},
        "folds": folds, "seed_average_format": SEED_AVERAGE_FORMAT if cfg.seeds else None,
        "oof": "oof.safetensors" if oof else None, "batch_size": batch_size, "device": device,
        "versions": _versions(), "timing": None, "budget": None}


def _copy_weights(tmp: Path, sources: Sources) -> list:
    """weights/ in the bundle; bundle.json's ``folds``: each fold's members with their file and sha256."""
    folds: dict = {}
    (tmp / "weights").mkdir()
    for m in sources.members:
        shutil.copyfile(m.weights, tmp / m.file_name)
        folds.setdefault(m.fold, []).append({"seed": m.seed, "checkpoint": m.checkpoint, "file": m.file_name,
                                             "sha256": file_sha256(tmp / m.file_name)})
    return [{"fold": k, "members": members} for k, members in folds.items()]


def _write_oof(tmp: Path, arrays: dict) -> None:
    save_file({name: torch.from_numpy(np.array(a, dtype=np.int64 if name == "labels" else np.float64, order="C"))
               for name, a in arrays.items()}, str(tmp / "oof.safetensors"))
    os.chmod(tmp / "oof.safetensors", 0o644)   # safetensors writes it private; the bundle is for uploading


def _write_config(tmp: Path, cfg: Config) -> None:
    resolved = cfg.exp_dir / "config.yaml"
    text = resolved.read_text() if resolved.is_file() else yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    (tmp / "config.yaml").write_text(text)


def _timing_images(cfg: Config, n: int) -> list:
    """The first `n` local test images, or training images where the test images are not here."""
    try:
        paths = read_test_table(cfg)["image"].tolist()
        if not all(Path(p).is_file() for p in paths[:n]):
            raise FileNotFoundError
    except (FileNotFoundError, ValueError):
        paths = read_train_table(cfg)["image"].tolist()
    return paths[:n]


def _apply_budget(tmp: Path, cfg: Config, manifest: dict, decisions: dict, oof, budget: float, n_images: int,
                  log) -> None:
    """Keep the folds and views that fit (budget.py); delete the dropped folds' weights; record the choice."""
    selection = select_within_budget(Timing.from_record(manifest["timing"]), oof, budget, n_images,
                                     decisions["tta"]["merge"], cfg.competition.metric)
    for line in selection.describe(budget, n_images):
        log(f"[bundle] {line}")
    for fold in manifest["folds"]:
        if fold["fold"] in selection.dropped_folds:
            for member in fold["members"]:
                (tmp / member["file"]).unlink()
    manifest["folds"] = [f for f in manifest["folds"] if f["fold"] in selection.folds]
    decisions["tta"]["views"] = list(selection.views)
    manifest["budget"] = {
        "seconds": budget, "images": n_images, "device": manifest["timing"]["measured_on"]["device"],
        "estimated_seconds": round(selection.seconds, 1), "whole_ensemble_seconds": round(selection.full_seconds, 1),
        "kept_folds": selection.folds, "kept_views": selection.views, "dropped_folds": selection.dropped_folds,
        "dropped_views": selection.dropped_views, "metric": selection.metric,
        "nested_oof_estimate": selection.estimate, "oof_estimate_every_view": selection.full_estimate}


def _check_budget(budget, images_count) -> None:
    if budget is None:
        return
    if not budget > 0:
        raise BundleRefused(f"--budget {budget}: expected a positive number of seconds")
    if images_count is not None and images_count < 1:
        raise BundleRefused(f"--images-count {images_count}: expected a positive number of test images")


def _chain_again(cfg: Config, sources: Sources) -> tuple[object, ChainResult]:
    """The ensemble's inputs and chain, run again in memory; refused when its submission is not ensemble.json's."""
    inputs = read_inputs(cfg, log=lambda *_: None)
    result = run_chain(inputs, chain_settings(cfg), cfg.competition.metric, cfg.ensemble.voting)
    if result.record["submission"] != sources.submission:
        raise BundleRefused(f"{sources.ensemble_path} is not what the experiment's files give now (a fold predicted "
                            "again, or the config's ensemble keys changed): run `make ensemble`")
    return inputs, result


def _decisions(cfg: Config, sources: Sources, budget) -> tuple[dict, dict | None, object]:
    """decisions.json, oof.safetensors' arrays (None: not needed) and the ensemble's inputs (None: not read)."""
    margin = cfg.ensemble.auto_margin
    decisions = decisions_from_ensemble(sources.ensemble, margin)
    if not needs_oof(decisions) and budget is None:
        return decisions, None, None
    inputs, result = _chain_again(cfg, sources)
    if not needs_oof(decisions):
        return decisions, None, inputs
    method = decisions["prior_shift"]["method"]
    arrays, calibration = shift_arrays(result.before_shift, inputs.y, method, result.prior)
    return decisions_from_ensemble(sources.ensemble, margin, calibration), arrays, inputs


def bundle_size(folder) -> int:
    """Bytes of every file in the bundle folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def build_bundle(cfg: Config, out=None, budget: float | None = None, images_count: int | None = None,
                 device: str = "auto", batch_size: int | None = None,
                 timing_images: int = DEFAULT_TIMING_IMAGES, log=print) -> Path:
    """Write the bundle of `cfg`'s finished experiment to `out` (default ``outputs/<exp>/bundle``).

    `device` and `batch_size` are predict.py's defaults (the predict stage's batch size unless given) and
    what the timings are measured with. With `budget` (seconds for `images_count` test images, by default
    as many as the local sample submission has), only the folds and views that fit are kept (budget.py).
    """
    sources = gather_sources(cfg)                                   # every refusal, before any write
    _check_budget(budget, images_count)
    timing_device = _timing_device(device, budget)
    decisions, arrays, inputs = _decisions(cfg, sources, budget)
    batch_size = batch_size or cfg.tta.batch_size
    out = Path(out) if out is not None else cfg.exp_dir / "bundle"
    with atomic_dir(out) as tmp:
        manifest = _manifest(cfg, sources, _copy_weights(tmp, sources), arrays is not None, device, batch_size)
        if arrays is not None:
            _write_oof(tmp, arrays)
        shutil.copyfile(TEMPLATE, tmp / "predict.py")
        _write_config(tmp, cfg)
        manifest["timing"] = measure_timing(tmp, manifest, decisions, _timing_images(cfg, timing_images),
                                            timing_device, batch_size, log)
        if budget is not None:
            _apply_budget(tmp, cfg, manifest, decisions, oof_views(inputs, sources.submission), budget,
                          images_count or len(read_test_table(cfg)), log)
        write_json_atomic(tmp / "decisions.json", decisions)
        write_json_atomic(tmp / "bundle.json", manifest)
    views, files = decisions["tta"]["views"], sum(len(f["members"]) for f in manifest["folds"])
    log(f"[bundle] {out}: {len(manifest['folds'])} fold(s) x {len(views)} view(s) ({', '.join(views)}), {files} weights "
        f"files, {bundle_size(out) / 2**20:.1f} MiB; `make bundle-check` runs it on the local test images")
    return out
