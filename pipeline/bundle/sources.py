"""What a bundle is made of, read from a finished experiment, and the refusals: every check runs before
anything is written, and each failure is one line naming the file and what to run.

Refused: no ensemble.json (or one older than a fold's weights, or one without the ``submission`` entry of
``pipeline.ensemble.record``); a fold (or a seed of it, or a checkpoint the submission votes with) missing;
weights whose sidecar fingerprint differs from the config's training fingerprint; weights trained on other
classes than the ensemble voted; a submission format, view, merge, voting mode or metric that the template
cannot reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.bundle import predict_template as template
from pipeline.config import Config, seed_config
from pipeline.data.manifest import train_fingerprint
from pipeline.ensemble.record import RECORD_FORMAT
from pipeline.fileio import read_text_csv
from pipeline.predict.fold import checkpoint_path
from pipeline.train.models import read_sidecar

__all__ = ["BundleRefused", "Member", "OofViews", "Sources", "gather_sources", "oof_views"]


class BundleRefused(ValueError):
    """The experiment cannot be bundled as it stands: the message says why and what to run."""


@dataclass(frozen=True)
class Member:
    """One model of the ensemble: fold `fold`, seed `seed` (None outside a seeds run), checkpoint `checkpoint`."""

    fold: int
    seed: int | None
    checkpoint: str
    weights: Path

    @property
    def file_name(self) -> str:
        seed = f"-seed_{self.seed}" if self.seed is not None else ""
        return f"weights/fold_{self.fold}{seed}-{self.checkpoint}.safetensors"


@dataclass(frozen=True)
class OofViews:
    """The out-of-fold rows with each of the submission's TTA views: labels `y`, `folds`, and
    ``{view: (K, N, C)}`` (its probabilities under each of the submission's K checkpoints)."""

    y: np.ndarray
    folds: np.ndarray
    views: dict


@dataclass(frozen=True)
class Sources:
    ensemble: dict           # ensemble.json
    ensemble_path: Path
    classes: list
    model: dict              # {"name", "heads"} from the weights' sidecar
    members: list            # [Member], fold by fold, seed by seed, checkpoint by checkpoint
    sample_columns: list

    @property
    def submission(self) -> dict:
        """ensemble.json's ``submission`` entry: the views, merge, checkpoints, factors and vote it was made with."""
        return self.ensemble["submission"]


def _ensemble_record(cfg: Config) -> tuple[dict, Path]:
    path = cfg.exp_dir / "ensemble.json"
    if not path.is_file():
        raise BundleRefused(f"{path} is missing: run `make ensemble` first (the bundle reproduces its submission)")
    record = json.loads(path.read_text())
    if (record.get("submission") or {}).get("format") != RECORD_FORMAT:
        raise BundleRefused(f"{path} has no `submission` entry of format {RECORD_FORMAT} (written by an older "
                            "ensemble stage): run `make ensemble`")
    return record, path


def _check_reproducible(record: dict, path: Path) -> None:
    entry = record["submission"]
    kind = record.get("submission_format")
    if kind not in template.FORMATS:
        raise BundleRefused(f"{path}: submission format {kind!r} is not one the bundle can write "
                            f"({', '.join(template.FORMATS)})")
    if entry["voting"] not in template.VOTING_MODES:
        raise BundleRefused(f"{path}: voting {entry['voting']!r} is not one the bundle can reproduce "
                            f"({', '.join(template.VOTING_MODES)})")
    if entry["merge"] not in template.MERGE_MODES:
        raise BundleRefused(f"{path}: TTA merge {entry['merge']!r} is not one the bundle can reproduce")
    if record.get("metric") not in template.METRICS:
        raise BundleRefused(f"{path}: metric {record.get('metric')!r} is not one the bundle can score the "
                            "prior-shift correction with")
    if entry["views"] == ["all"] or entry["checkpoints"] == ["all"]:
        raise BundleRefused(f"{path}: the submission was made from the folds' merged columns (their test files "
                            "predate the per-view columns): rerun `make predict ensemble`")
    for name in entry["views"]:
        try:
            template.view_function(name)
        except template.BundleError:
            raise BundleRefused(f"{path}: the bundle cannot reproduce the TTA view {name!r}") from None


def _seed_runs(cfg: Config) -> list[tuple[int | None, Config]]:
    return [(s, seed_config(cfg, s)) for s in cfg.seeds] if cfg.seeds else [(None, cfg)]


def _member(one: Config, k: int, seed, name: str, record: dict, path: Path) -> tuple[Member, dict]:
    """Fold `k`'s checkpoint `name` (of seed `seed`), checked present, of this config's training, of the
    ensemble's classes and not newer than ensemble.json; with its sidecar."""
    where = f"fold {k}" + (f" (seed {seed})" if seed is not None else "")
    weights = checkpoint_path(one, k, name)
    if not weights.is_file():
        raise BundleRefused(f"{where}: {weights} is missing: run `make train` "
                            f"({'all folds' if seed is None else 'every seed'}) and `make ensemble`")
    side = read_sidecar(weights)
    wanted = train_fingerprint(one)
    if side.get("fingerprint") != wanted:
        raise BundleRefused(f"{where}: {weights} was trained with another config or other images "
                            f"(fingerprint {side.get('fingerprint')}, this config's {wanted}): run `make train "
                            "ensemble` with this config, or bundle the config that trained them")
    if side["classes"] != record["classes"]:
        raise BundleRefused(f"{where}: {weights} has classes {side['classes'][:10]}, {path} voted "
                            f"{record['classes'][:10]}: run `make ensemble`")
    if weights.stat().st_mtime > path.stat().st_mtime:
        raise BundleRefused(f"{where}: {weights} is newer than {path}: run `make ensemble` so the bundle "
                            "reproduces the current models")
    return Member(k, seed, name, weights), side


def _members(cfg: Config, record: dict, path: Path) -> tuple[list, dict]:
    """Every fold x seed x checkpoint the submission votes with (:func:`_member`); the model's sidecar fields."""
    members, model = [], None
    for seed, one in _seed_runs(cfg):
        for k in range(cfg.folds.n_splits):
            for name in record["submission"]["checkpoints"]:
                member, side = _member(one, k, seed, name, record, path)
                model = model or {"name": side["model"], "heads": side.get("heads", "single")}
                members.append(member)
    return members, model


def gather_sources(cfg: Config) -> Sources:
    """Everything the bundle is built from, checked; raises BundleRefused before anything is written."""
    if cfg.data.high_bit_depth != "refuse":
        raise BundleRefused(f"data.high_bit_depth: {cfg.data.high_bit_depth!r}: the bundle's predict.py decodes "
                            "8-bit images only and cannot scale 16-bit ones as training did")
    record, path = _ensemble_record(cfg)
    _check_reproducible(record, path)
    members, model = _members(cfg, record, path)
    sample = read_text_csv(cfg.data.sample_submission)
    return Sources(record, path, list(record["classes"]), model, members, list(sample.columns))


def oof_views(inputs, entry: dict) -> OofViews:
    """The out-of-fold rows of the ensemble's inputs (:class:`pipeline.results.ensemble_stage.Inputs`) with each
    of the submission's views under each of its checkpoints: what the time budget chooses among."""
    cands = inputs.candidates
    k = [cands.checkpoints.index(c) for c in entry["checkpoints"]]
    views = {v: np.asarray(inputs.oof_probs[k, cands.views.index(v)], dtype=np.float64) for v in entry["views"]}
    return OofViews(np.asarray(inputs.y), np.asarray(inputs.folds), views)
