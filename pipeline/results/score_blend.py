"""`make score EXPS="a b"`: a blend's and a stack's submissions scored on held-back test labels, beside
each member and the plain vote of the members.

Scores every folder of those experiments that exists, ``<output_dir>/blend-a-b`` and
``<output_dir>/stack-a-b``, and writes ``score.csv`` into each. The true labels are the first
member's ``data.test_labels`` (the demo's ``data/demo/test_labels.csv``); they are read here and
nowhere else, after every choice was fitted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fileio import read_table, read_text_csv, write_csv_atomic
from pipeline.metrics import classification_metrics, log_loss
from pipeline.results.blend import load_members
from pipeline.predict.probs import class_ids, prob_columns
from pipeline.results.submission import submission_format, submission_metrics
from pipeline.ensemble.voting import soft_vote

__all__ = ["COMBINED_KINDS", "score_combined"]

COMBINED_KINDS = ("blend", "stack")   # the folders `make ensemble EXPS=` and `make stack EXPS=` write


def _true_labels(cfg, ids: pd.Series, classes: list) -> np.ndarray:
    if not cfg.data.test_labels:
        raise ValueError(f"experiment '{cfg.experiment}': data.test_labels is not set: scoring needs the true "
                         "test labels")
    truth = read_text_csv(cfg.data.test_labels).set_index(cfg.data.id_column)
    missing = sorted(set(ids) - set(truth.index))
    if missing:
        raise ValueError(f"{cfg.data.test_labels}: no true label for {len(missing)} test id(s), e.g. {missing[:5]}")
    return class_ids(truth.loc[ids, cfg.data.target_column], classes, str(cfg.data.test_labels))


def _probability_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    return {**classification_metrics(y, probs), "log_loss": log_loss(y, probs)}


def _folder_rows(folder: Path, y: np.ndarray, first) -> list[dict]:
    """The folder's own test probabilities and its submission.csv (in the competition's format)."""
    ids, classes, d = first.test_ids, first.classes, first.cfg.data
    probs = read_table(folder / "test_probs.csv")
    if not probs["id"].astype(str).equals(ids.astype(str)):
        raise ValueError(f"{folder / 'test_probs.csv'} covers other test ids than its members: it is stale; "
                         f"rerun `make {'stack' if folder.name.startswith('stack') else 'ensemble'} EXPS=...`")
    sub = submission_metrics(folder / "submission.csv", submission_format(first.cfg, classes), d.id_column,
                             d.target_column, ids, y, classes)
    test = probs[prob_columns(classes)].to_numpy(np.float64)
    return [{"model": f"{folder.name} (test_probs.csv)", **_probability_metrics(y, test)},
            {"model": f"{folder.name}: submission.csv (submission)", **sub}]


def score_combined(experiments: list[str], output_dir: str | Path = "outputs", log=print) -> list[Path]:
    """Score ``blend-<names>`` and ``stack-<names>`` (those that exist) on the held-back test labels."""
    names = list(experiments)
    folders = [Path(output_dir) / f"{kind}-{'-'.join(names)}" for kind in COMBINED_KINDS]
    found = [f for f in folders if (f / "submission.csv").is_file()]
    if not found:
        raise FileNotFoundError(f"neither {folders[0]} nor {folders[1]} holds a submission.csv: run "
                                f"`make ensemble EXPS=\"{' '.join(names)}\"` or `make stack EXPS=...` first")
    members = load_members(names, output_dir, log=log)
    first = members[0]
    y = _true_labels(first.cfg, first.test_ids, first.classes)
    base = [{"model": f"{m.name} (soft vote of its folds)", **_probability_metrics(y, m.test)} for m in members]
    base.append({"model": "plain vote (soft, uniform weights)",
                 **_probability_metrics(y, soft_vote(np.stack([m.test for m in members])))})
    written = []
    for folder in found:
        table = pd.DataFrame(base + _folder_rows(folder, y, first))
        metric = first.cfg.competition.metric   # the headline, first as in every other table
        table = table[["model", metric] + [c for c in table.columns if c not in ("model", metric)]]
        write_csv_atomic(folder / "score.csv", table)
        log(f"[score] {folder}:\n" + table.to_string(index=False, float_format="%.4f"))
        written.append(folder / "score.csv")
    return written
