"""`make score`: the submission, each fold and every voting mode scored on held-back test labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import read_text_csv, write_csv_atomic
from pipeline.metrics import classification_metrics, log_loss
from pipeline.ensemble.class_bias import apply_bias
from pipeline.predict.probs import class_ids, read_test_probs
from pipeline.results.pseudo import source_score_rows
from pipeline.results.comparisons import seed_score_rows
from pipeline.results.submission import submission_format, submission_metrics
from pipeline.results.shift_check import apply_shift, shift_score_rows
from pipeline.ensemble.voting import VOTING_MODES, logit_adjust, vote, vote_scores

__all__ = ["score"]


def _vote_metrics(y: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    """The metrics of a vote: its decisions, ROC-AUC from its scores, the log-loss where they are probabilities."""
    scores = vote_scores(probs, mode)
    probabilities = mode in ("soft", "geometric")
    return {**classification_metrics(y, scores, vote(probs, mode)),
            "log_loss": log_loss(y, scores) if probabilities else float("nan")}


def _fitted_rows(y: np.ndarray, probs: np.ndarray, record: dict, mode: str) -> list[dict]:
    """The held-back score of each choice the ensemble fitted out of fold (ensemble.json), whether or not
    it was applied, the applied one marked as the submission; `probs` after any prior-shift correction."""
    adjustment, bias = record.get("logit_adjust", {}), record.get("class_bias")
    tau = float(adjustment.get("tau", 0.0))
    shift = record.get("prior_shift") or {}
    shifted = f" + prior-shift correction ({shift['method']})" if shift.get("applied") else ""
    voting = f"{mode} vote{shifted}"   # `probs` come corrected when the submission was
    rows = []
    if tau:
        adjusted = logit_adjust(probs, np.asarray(adjustment["prior"]), tau)
        chosen = " (submission)" if not (bias and bias["applied"]) else ""
        rows.append({"model": f"{voting} + logit adjustment tau={tau:g}{chosen}",
                     **_vote_metrics(y, adjusted, mode)})
    if bias:
        base = logit_adjust(probs, np.asarray(adjustment["prior"]), tau) if tau else probs
        name = f"{voting}{' + logit adjustment' if tau else ''} + class bias"
        rows.append({"model": name + (" (submission)" if bias["applied"] else " (not applied)"),
                     **_vote_metrics(y, apply_bias(base, bias["bias"]), mode)})
    return rows


def score(cfg: Config, log=print) -> pd.DataFrame:
    """Score the submission, each fold alone and every voting mode on the held-back test labels.

    Each vote is scored from its own scores (soft/geometric: the averaged probabilities, hard: the
    vote shares, rank: the rank averages), so ROC-AUC ranks rows by what the vote computed. A label
    submission's row has no ROC-AUC; a probability submission is scored from the probabilities it holds.
    The competition metric (``competition.metric``) is the first column.
    """
    if not cfg.data.test_labels:
        raise ValueError("data.test_labels is not set: scoring needs the true test labels")
    ids, probs, classes = read_test_probs(cfg)
    truth = read_text_csv(cfg.data.test_labels).set_index(cfg.data.id_column)
    missing = sorted(set(ids) - set(truth.index))
    if missing:
        raise ValueError(f"{cfg.data.test_labels}: no true label for {len(missing)} test id(s), e.g. {missing[:5]}")
    y = class_ids(truth.loc[ids, cfg.data.target_column], classes, str(cfg.data.test_labels))
    rows = [{"model": f"fold {k}", **classification_metrics(y, probs[k]), "log_loss": log_loss(y, probs[k])}
            for k in range(len(probs))]
    settings = cfg.exp_dir / "ensemble.json"
    record = json.loads(settings.read_text()) if settings.is_file() else {}
    shift, bias = record.get("prior_shift", {}), record.get("class_bias", {})
    tau = record.get("logit_adjust", {}).get("tau")
    plain = not tau and not shift.get("applied") and not bias.get("applied")
    for mode in VOTING_MODES:
        chosen = " (submission)" if mode == cfg.ensemble.voting and plain else ""
        rows.append({"model": f"{mode} vote{chosen}", **_vote_metrics(y, probs, mode)})
    rows += shift_score_rows(y, probs, shift, cfg.ensemble.voting, _vote_metrics,
                             submission=not tau and not bias.get("applied"))
    rows += _fitted_rows(y, apply_shift(probs, shift), record, cfg.ensemble.voting)
    rows.append({"model": "submission.csv", **submission_metrics(
        cfg.exp_dir / "submission.csv", submission_format(cfg, classes), cfg.data.id_column,
        cfg.data.target_column, ids, y, classes)})
    rows += seed_score_rows(cfg, y) + source_score_rows(cfg, ids, y, classes)   # one seed alone; the source round
    table = pd.DataFrame(rows)
    metric = cfg.competition.metric
    table = table[["model", metric] + [c for c in table.columns if c not in ("model", metric)]]
    write_csv_atomic(cfg.exp_dir / "score.csv", table)
    log(table.to_string(index=False, float_format="%.4f"))
    return table
