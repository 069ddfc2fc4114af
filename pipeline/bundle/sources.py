"""What a bundle is made of, read from a finished experiment, and the refusals: every check runs before
anything is written, and each failure is one line naming the file and what to run.

Refused: no ensemble.json (or one older than a fold's weights); a fold (or a seed of it, or a checkpoint
the ensemble votes with) missing; weights whose sidecar fingerprint differs from the config's training
fingerprint; weights trained on other classes than the ensemble voted; a submission format, view, merge or
voting mode that the template cannot reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.bundle import predict_template as template
from pipeline.config import Config, seed_config
from pipeline.data.manifest import train_fingerprint
from pipeline.fileio import read_text_csv
from pipeline.predict.fold import checkpoint_path
from pipeline.predict.probs import class_ids, prob_columns, read_fold_probs, stack_folds, view_columns
from pipeline.predict.tta import parse_views
from pipeline.train.models import read_sidecar

__all__ = ["BundleRefused", "Member", "OofViews", "Sources", "gather_sources", "read_oof_views"]


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
    """The out-of-fold rows with every TTA view's probabilities: labels `y`, `folds`, ``{view: (N, C)}``."""

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
    views: list              # canonical view names, in the predict stage's order
    sample_columns: list


def _ensemble_record(cfg: Config) -> tuple[dict, Path]:
    path = cfg.exp_dir / "ensemble.json"
    if not path.is_file():
        raise BundleRefused(f"{path} is missing: run `make ensemble` first (the bundle reproduces its submission)")
    return json.loads(path.read_text()), path


def _check_reproducible(cfg: Config, record: dict, path: Path, views: list) -> None:
    kind = record.get("submission_format")
    if kind not in template.FORMATS:
        raise BundleRefused(f"{path}: submission format {kind!r} is not one the bundle can write "
                            f"({', '.join(template.FORMATS)})")
    if record.get("voting") not in template.VOTING_MODES:
        raise BundleRefused(f"{path}: voting {record.get('voting')!r} is not one the bundle can reproduce "
                            f"({', '.join(template.VOTING_MODES)})")
    if cfg.tta.merge not in template.MERGE_MODES:
        raise BundleRefused(f"tta.merge: {cfg.tta.merge!r} is not one the bundle can reproduce")
    for name in views:
        try:
            template.view_function(name)
        except template.BundleError:
            raise BundleRefused(f"tta.views: the bundle cannot reproduce the view {name!r}") from None


def _seed_runs(cfg: Config) -> list[tuple[int | None, Config]]:
    return [(s, seed_config(cfg, s)) for s in cfg.seeds] if cfg.seeds else [(None, cfg)]


def _members(cfg: Config, record: dict, path: Path) -> tuple[list, dict]:
    """Every fold x seed x checkpoint's weights, checked present, of this config's training, of the
    ensemble's classes and not newer than ensemble.json. Returns them and the model's sidecar fields."""
    members, model = [], None
    for seed, one in _seed_runs(cfg):
        wanted = train_fingerprint(one)
        for k in range(cfg.folds.n_splits):
            where = f"fold {k}" + (f" (seed {seed})" if seed is not None else "")
            for name in record["checkpoints"]:
                weights = checkpoint_path(one, k, name)
                if not weights.is_file():
                    raise BundleRefused(f"{where}: {weights} is missing: run `make train` "
                                        f"({'all folds' if seed is None else 'every seed'}) and `make ensemble`")
                side = read_sidecar(weights)
                if side.get("fingerprint") != wanted:
                    raise BundleRefused(f"{where}: {weights} was trained with another config or other images "
                                        f"(fingerprint {side.get('fingerprint')}, this config's {wanted}): "
                                        "run `make train ensemble` with this config, or bundle the config that "
                                        "trained them")
                if side["classes"] != record["classes"]:
                    raise BundleRefused(f"{where}: {weights} has classes {side['classes'][:10]}, {path} voted "
                                        f"{record['classes'][:10]}: run `make ensemble`")
                if weights.stat().st_mtime > path.stat().st_mtime:
                    raise BundleRefused(f"{where}: {weights} is newer than {path}: run `make ensemble` so the "
                                        "bundle reproduces the current models")
                model = model or {"name": side["model"], "heads": side.get("heads", "single")}
                members.append(Member(k, seed, name, weights))
    return members, model


def gather_sources(cfg: Config) -> Sources:
    """Everything the bundle is built from, checked; raises BundleRefused before anything is written."""
    record, path = _ensemble_record(cfg)
    views = [v.name for v in parse_views(cfg.tta.views)]
    _check_reproducible(cfg, record, path, views)
    members, model = _members(cfg, record, path)
    sample = read_text_csv(cfg.data.sample_submission)
    return Sources(record, path, list(record["classes"]), model, members, views, list(sample.columns))


def _oof_table(cfg: Config, record: dict) -> tuple[pd.DataFrame, list]:
    frames, classes = read_fold_probs(cfg, record["oof_source"])
    return stack_folds(frames), classes


def read_oof_views(cfg: Config, record: dict) -> tuple[OofViews, np.ndarray]:
    """The ensemble's out-of-fold table (``oof_source``: oof_tta.csv, else oof.csv): its rows' TTA views
    (none in oof.csv) and the merged probabilities the ensemble fitted its choices on."""
    oof, classes = _oof_table(cfg, record)
    y = class_ids(oof["label"], classes, record["oof_source"])
    views = {v: oof[cols].to_numpy() for v, cols in view_columns(oof, classes).items()}
    merged = oof[prob_columns(classes)].to_numpy()
    return OofViews(y, oof["fold"].to_numpy(), views), merged
