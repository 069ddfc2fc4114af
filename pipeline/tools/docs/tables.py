"""Helpers every block shares: a run's files read back by part and model, durations, OOF-against-test rows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

__all__ = ["minutes", "read_run", "oof_tta", "soft_vote", "oof_and_test", "runs_block"]


def minutes(seconds: float) -> str:
    """
    >>> minutes(511.4), minutes(42.0)
    ('8 min 31 s', '42 s')
    """
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def read_run(folder: Path) -> tuple[pd.Series, pd.Series, str]:
    """(cv.csv by part, score.csv by model, in the competition metric; that metric's name)."""
    score = pd.read_csv(folder / "score.csv")
    metric = score.columns[1]          # score.csv's first metric is the competition's
    return pd.read_csv(folder / "cv.csv").set_index("part")[metric], score.set_index("model")[metric], metric


def oof_tta(cv: pd.Series) -> float:
    return cv[cv.index.str.startswith("out-of-fold, TTA (")].iloc[0]


def soft_vote(score: pd.Series) -> float:
    """The plain soft vote of the folds on the test set (whether or not a correction made the submission)."""
    return score[score.index.str.fullmatch(r"soft vote( \(submission\))?")].iloc[0]


def oof_and_test(folder: Path, metric: str = "f1_macro") -> tuple[float, float, float, float]:
    """(OOF TTA score, the submission's test score, the fold models' lowest and highest test score)."""
    cv = pd.read_csv(folder / "cv.csv").set_index("part")
    score = pd.read_csv(folder / "score.csv").set_index("model")
    oof = cv.loc[[p for p in cv.index if p.startswith("out-of-fold, TTA (")][0], metric]
    folds = score.loc[[m for m in score.index if re.fullmatch(r"fold \d+", m)], metric]
    return oof, score.loc["submission.csv", metric], folds.min(), folds.max()


def runs_block(runs: list[tuple[str, Path]]) -> str:
    """OOF against held-back test macro-F1 of several runs, one row each."""
    lines = ["| run | OOF macro-F1 (TTA) | test macro-F1, submission | test, one fold model |",
             "| --- | --- | --- | --- |"]
    for label, folder in runs:
        oof, test, low, high = oof_and_test(folder)
        lines.append(f"| {label} | {oof:.3f} | {test:.3f} | {low:.3f} – {high:.3f} |")
    return "\n".join(lines) + "\n"
