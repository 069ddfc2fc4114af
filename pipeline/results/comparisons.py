"""Rows that compare the ensemble with other runs on the same folds: each seed alone (a `seeds` run)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Config, seed_config
from pipeline.ensemble.voting import vote, vote_scores
from pipeline.metrics import classification_metrics
from pipeline.predict.probs import class_ids, prob_columns, read_fold_probs, read_test_probs, stack_folds
from pipeline.results.cv_table import metrics_row

__all__ = ["seed_cv_rows", "seed_score_rows", "seeds_note"]


def _seed_oof(one: Config) -> tuple[pd.DataFrame, list, str]:
    """One seed's stacked out-of-fold table: TTA (oof_tta.csv) where every fold has it, else oof.csv."""
    name = "oof_tta.csv" if all((one.fold_dir(k) / "oof_tta.csv").is_file()
                                for k in range(one.folds.n_splits)) else "oof.csv"
    frames, classes = read_fold_probs(one, name)
    return stack_folds(frames), classes, "TTA" if name == "oof_tta.csv" else "no TTA"


def seed_cv_rows(cfg: Config) -> list[dict]:
    """CV rows of each seed alone (out-of-fold), to compare with the seed-averaged rows above them."""
    rows = []
    for s in cfg.seeds or []:
        oof, classes, what = _seed_oof(seed_config(cfg, s))
        y = class_ids(oof["label"], classes, f"seed {s} oof")
        rows.append(metrics_row(f"seed {s} alone: out-of-fold, {what}", y, oof[prob_columns(classes)].to_numpy()))
    return rows


def seed_score_rows(cfg: Config, y: np.ndarray) -> list[dict]:
    """`make score` rows of each seed alone, its folds voted as the submission's are (test labels `y`)."""
    rows = []
    mode = cfg.ensemble.voting
    for s in cfg.seeds or []:
        _, probs, _ = read_test_probs(seed_config(cfg, s))
        rows.append({"model": f"seed {s} alone, {mode} vote",
                     **classification_metrics(y, vote_scores(probs, mode), vote(probs, mode))})
    return rows


def seeds_note(cfg: Config) -> list[str]:
    """The CV table's note on the seeds, or none for a single-seed run."""
    if not cfg.seeds:
        return []
    return [f"Seeds {', '.join(map(str, cfg.seeds))}: each fold trained once per seed on the same folds; the "
            "fold and out-of-fold rows average the seeds' probabilities within each fold (seed_<s>/fold_<k>/ → "
            "fold_<k>/); the 'seed s alone' rows are one seed's own out-of-fold score."]
