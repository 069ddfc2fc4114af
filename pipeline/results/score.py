"""`make score`: the submission, each fold, every voting mode and each step of the chain scored on held-back labels.

Writes ``score.csv`` (every metric) and ``score.md``, and prints it: the summary first (the submission's held-back
score against its out-of-fold estimate and the plain vote, what each step did), then the table.

The submission's probabilities are recomputed from ensemble.json's ``submission`` entry
(:func:`pipeline.ensemble.record.apply_submission`), and each step of the chain is scored toggled: the
submission without each applied step, and with each step that was not applied, so the held-back labels
show what every decision of the chain did.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.ensemble.record import apply_submission
from pipeline.ensemble.voting import VOTING_MODES, vote, vote_scores
from pipeline.fileio import read_text_csv, write_csv_atomic, write_text_atomic
from pipeline.metrics import classification_metrics, log_loss
from pipeline.predict.probs import class_ids, read_fold_probs, read_test_probs
from pipeline.results.comparisons import seed_score_rows
from pipeline.results.pseudo import source_score_rows
from pipeline.results.shift_check import shift_score_rows
from pipeline.results.cv_table import markdown_table
from pipeline.results.submission import submission_format, submission_metrics
from pipeline.results.summary import as_markdown, as_text, score_items

__all__ = ["vote_metrics", "chain_variants", "true_labels", "score"]


def vote_metrics(y: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    """The metrics of a vote: its decisions, ROC-AUC from its scores, the log-loss where they are probabilities."""
    scores = vote_scores(probs, mode)
    probabilities = mode in ("soft", "geometric")
    return {**classification_metrics(y, scores, vote(probs, mode)),
            "log_loss": log_loss(y, scores) if probabilities else float("nan")}


def _label(step: dict) -> str:
    fitted = step["fitted"]
    if step["step"] == "logit_adjust":
        return f"logit adjustment tau={fitted['tau']:g}"
    if step["step"] == "prior_shift":
        return f"prior-shift correction ({fitted.get('method')})"
    if step["step"] in ("views", "checkpoints"):
        return f"{step['step']} {'+'.join(fitted[step['step']])}"
    return step["step"].replace("_", " ")


def _differs(step: dict) -> bool:
    """Whether a selection step's applied choice differs from what stands without it."""
    key = step["step"]
    return step["applied"] and step["baseline"] is not None and step["fitted"][key] != step["baseline"][key]


def chain_variants(record: dict) -> list[tuple[str, dict, str | None]]:
    """(name, submission entry, the step toggled) of the submission (no step) and of each step toggled: an
    applied step removed, a step that was not applied added (the selection steps: their choice swapped with
    what stood instead)."""
    entry, steps = record["submission"], record.get("chain", [])
    mode = entry["voting"]
    applied = [_label(s) for s in steps if (s["applied"] and s["baseline"] is None) or _differs(s)]
    name = " + ".join([f"{mode} vote", *applied])
    out = [(name + " (submission)", entry, None)]
    for s in steps:
        factor = np.asarray(s["fitted"].get("log_factor", np.zeros(len(entry["classes"]))))
        if s["step"] in ("views", "checkpoints"):
            if s["baseline"] is None or s["fitted"][s["step"]] == s["baseline"][s["step"]]:
                continue
            other = s["baseline"] if s["applied"] else s["fitted"]
            variant = {**entry, s["step"]: other[s["step"]]}
        else:
            toggled = np.asarray(entry["log_factor"]) + (-factor if s["applied"] else factor)
            variant = {**entry, "log_factor": toggled.tolist()}
        if s["step"] in ("views", "checkpoints"):
            what = f"with {_label({**s, 'fitted': other})} instead"
        else:
            what = f"without {_label(s)}" if s["applied"] else f"+ {_label(s)} (not applied)"
        out.append((f"submission {what}", variant, s["step"]))
    return out


def true_labels(cfg: Config, ids, classes: list) -> np.ndarray:
    """The held-back labels (``data.test_labels``) of the test `ids`, as class indices."""
    if not cfg.data.test_labels:
        raise ValueError("data.test_labels is not set: scoring needs the true test labels")
    truth = read_text_csv(cfg.data.test_labels).set_index(cfg.data.id_column)
    missing = sorted(set(ids) - set(truth.index))
    if missing:
        raise ValueError(f"{cfg.data.test_labels}: no true label for {len(missing)} test id(s), e.g. {missing[:5]}")
    return class_ids(truth.loc[ids, cfg.data.target_column], classes, str(cfg.data.test_labels))


def _chain_rows(record: dict, frames: list, y: np.ndarray, plain: dict) -> list[dict]:
    """The submission's chain and its toggles; a submission that is one of the `plain` rows takes its place."""
    rows = []
    for name, entry, step in chain_variants(record):
        probs, _, _ = apply_submission(entry, frames)
        row = {"model": name, **vote_metrics(y, probs, entry["voting"]), **({"step": step} if step else {})}
        bare = name.removesuffix(" (submission)")
        if bare in plain:      # the submission is one of the plain rows: that row, scored as submitted
            plain[bare] = row
        else:
            rows.append(row)
    return rows


def score(cfg: Config, log=print) -> pd.DataFrame:
    """Score the submission, each fold alone, every voting mode and each toggled step on the held-back labels.

    Each vote is scored from its own scores (soft/geometric: the averaged probabilities, hard: the
    vote shares, rank: the rank averages), so ROC-AUC ranks rows by what the vote computed. A label
    submission's row has no ROC-AUC; a probability submission is scored from the probabilities it holds.
    The competition metric (``competition.metric``) is the first column.
    """
    ids, probs, classes = read_test_probs(cfg)
    y = true_labels(cfg, ids, classes)
    rows = [{"model": f"fold {k}", **classification_metrics(y, probs[k]), "log_loss": log_loss(y, probs[k])}
            for k in range(len(probs))]
    settings = cfg.exp_dir / "ensemble.json"
    record = json.loads(settings.read_text()) if settings.is_file() else {}
    plain = {f"{mode} vote": {"model": f"{mode} vote", **vote_metrics(y, probs, mode)} for mode in VOTING_MODES}
    shift = record.get("prior_shift") or {}
    for row in shift_score_rows(y, probs, shift, cfg.ensemble.voting, vote_metrics):
        plain[row["model"]] = row
    chain = _chain_rows(record, read_fold_probs(cfg, "test_probs.csv")[0], y, plain) if "submission" in record else []
    rows += list(plain.values()) + chain
    rows.append({"model": "submission.csv", **submission_metrics(
        cfg.exp_dir / "submission.csv", submission_format(cfg, classes), cfg.data.id_column,
        cfg.data.target_column, ids, y, classes)})
    rows += seed_score_rows(cfg, y) + source_score_rows(cfg, ids, y, classes)   # one seed alone; the source round
    table = pd.DataFrame(rows)
    metric = cfg.competition.metric
    table = table[["model", metric] + [c for c in table.columns if c not in ("model", metric)]]
    write_csv_atomic(cfg.exp_dir / "score.csv", table)
    items = score_items(record, table, metric) if "submission" in record else []
    narrow = [c for c in ["model", metric, "f1_macro", "accuracy", "roc_auc", "log_loss"] if c in table.columns]
    narrow = list(dict.fromkeys(narrow))
    write_text_atomic(cfg.exp_dir / "score.md", "\n".join(
        [f"# Held-back score: {cfg.experiment}", "", *([as_markdown(items), ""] if items else []),
         markdown_table(table, narrow), ""]))
    log((as_text(items) + "\n\n" if items else "") + table[narrow].to_string(index=False, float_format="%.4f"))
    return table
