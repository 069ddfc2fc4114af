"""`make score`: the submission, each fold and every voting mode scored on held-back test labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import read_text_csv, write_csv_atomic
from pipeline.metrics import classification_metrics, label_metrics
from pipeline.predict.probs import class_ids, read_test_probs
from pipeline.predict.shift_check import apply_shift, shift_score_rows
from pipeline.predict.voting import VOTING_MODES, logit_adjust, vote, vote_scores

__all__ = ["score"]


def _vote_metrics(y: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    """The metrics of a vote: its decisions, and ROC-AUC from its scores."""
    return classification_metrics(y, vote_scores(probs, mode), vote(probs, mode))


def score(cfg: Config, log=print) -> pd.DataFrame:
    """Score the submission, each fold alone and every voting mode on the held-back test labels.

    Each vote is scored from its own scores (soft/geometric: the averaged probabilities, hard: the
    vote shares, rank: the rank averages), so ROC-AUC ranks rows by what the vote computed; the
    submission's row has labels only, so its ROC-AUC is empty.
    """
    if not cfg.data.test_labels:
        raise ValueError("data.test_labels is not set: scoring needs the true test labels")
    ids, probs, classes = read_test_probs(cfg)
    truth = read_text_csv(cfg.data.test_labels).set_index(cfg.data.id_column)
    missing = sorted(set(ids) - set(truth.index))
    if missing:
        raise ValueError(f"{cfg.data.test_labels}: no true label for {len(missing)} test id(s), e.g. {missing[:5]}")
    y = class_ids(truth.loc[ids, cfg.data.target_column], classes, str(cfg.data.test_labels))
    rows = [{"model": f"fold {k}", **classification_metrics(y, probs[k])} for k in range(len(probs))]
    settings = cfg.exp_dir / "ensemble.json"
    recorded = json.loads(settings.read_text()) if settings.is_file() else {}
    adjustment, shift = recorded.get("logit_adjust", {}), recorded.get("prior_shift", {})
    tau = float(adjustment.get("tau", 0.0))
    for mode in VOTING_MODES:
        chosen = " (submission)" if mode == cfg.ensemble.voting and not tau and not shift.get("applied") else ""
        rows.append({"model": f"{mode} vote{chosen}", **_vote_metrics(y, probs, mode)})
    rows += shift_score_rows(y, probs, shift, cfg.ensemble.voting, _vote_metrics, submission=not tau)
    if tau:
        adjusted = logit_adjust(apply_shift(probs, shift), np.asarray(adjustment["prior"]), tau)
        both = f" + prior-shift correction ({shift['method']})" if shift.get("applied") else ""
        rows.append({"model": f"{cfg.ensemble.voting} vote{both} + logit adjustment tau={tau:g} (submission)",
                     **_vote_metrics(y, adjusted, cfg.ensemble.voting)})
    sub = read_text_csv(cfg.exp_dir / "submission.csv")
    sub_y = class_ids(sub[cfg.data.target_column], classes, "submission.csv")
    rows.append({"model": "submission.csv", **label_metrics(y, sub_y, len(classes)), "roc_auc": float("nan")})
    table = pd.DataFrame(rows)
    write_csv_atomic(cfg.exp_dir / "score.csv", table)
    log(table.to_string(index=False, float_format="%.4f"))
    return table
