"""The submission's format: what the competition wants in each row, read from the sample submission.

    labels               id,label          one class per row (the default)
    probability          id,target         a binary competition's probability of the positive class
    class_probabilities  id,cat,dog,...    one column per class holding its probability; rows sum to 1

``competition.submission: auto`` reads it from the sample: one column per class (every class, nothing
else beside the id) is ``class_probabilities``; for two classes, a target column holding fractions
(such as the usual placeholder 0.5) is ``probability``; anything else is ``labels``. The choice and
its reason are printed, so a wrong guess is seen, and the key can name the format outright.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import ConfigError

__all__ = ["FORMATS", "SubmissionFormat", "detect_format", "format_for_config", "fill", "scores_of", "labels_of",
           "check_values"]

FORMATS = ("labels", "probability", "class_probabilities")
# Probabilities are written with this many decimals: enough that no two rows tie by rounding alone.
_DECIMALS = 8
# Rows of per-class probabilities must sum to 1 within this (the written decimals round each cell).
_SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SubmissionFormat:
    kind: str                 # one of FORMATS
    classes: tuple            # the model's classes, in their order
    positive: str | None      # probability: the class whose probability is written
    why: str                  # how the format was decided (printed by the ensemble)


def _fractions(values: pd.Series) -> bool:
    """Every value a number in [0, 1] and at least one strictly between (0.5, not only 0s and 1s)."""
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    return bool(len(numbers) and numbers.notna().all() and numbers.between(0, 1).all()
                and ((numbers > 0) & (numbers < 1)).any())


def detect_format(sample: pd.DataFrame, id_column: str, target_column: str, classes, setting: str = "auto",
                  positive_class: str | None = None) -> SubmissionFormat:
    """The format `setting` names, checked against the sample, or (``auto``) the one the sample shows.

    >>> sample = pd.DataFrame({"id": ["a", "b"], "cat": ["0", "0"], "dog": ["0", "0"]})
    >>> detect_format(sample, "id", "label", ["cat", "dog"]).kind
    'class_probabilities'
    >>> detect_format(pd.DataFrame({"id": ["a"], "y": ["0.5"]}), "id", "y", ["0", "1"]).positive
    '1'
    """
    classes = tuple(str(c) for c in classes)
    others = [c for c in sample.columns if c != id_column]
    per_class = sorted(others) == sorted(classes)
    binary_fractions = len(classes) == 2 and target_column in sample.columns and _fractions(sample[target_column])
    if setting == "auto":
        if per_class:
            setting, why = "class_probabilities", f"the sample's columns beside '{id_column}' are the classes"
        elif binary_fractions:
            setting, why = "probability", f"two classes and the sample's '{target_column}' holds fractions"
        else:
            setting, why = "labels", f"the sample has a '{target_column}' column for the labels"
    else:
        why = "competition.submission"
    _check_setting(setting, sample, others, classes, id_column, target_column)
    return SubmissionFormat(setting, classes, _positive(setting, classes, positive_class), why)


def _check_setting(setting, sample, others, classes, id_column, target_column) -> None:
    if setting == "class_probabilities" and sorted(others) != sorted(classes):
        missing, extra = sorted(set(classes) - set(others)), sorted(set(others) - set(classes))
        raise ConfigError(f"competition.submission: class_probabilities needs one sample column per class beside "
                          f"'{id_column}'; the sample lacks {missing[:10]} and has extra {extra[:10]}")
    if setting in ("labels", "probability") and target_column not in sample.columns:
        raise ConfigError(f"data.target_column: '{target_column}' is not a column of the sample submission "
                          f"(its columns: {list(sample.columns)})")
    if setting == "probability" and len(classes) != 2:
        raise ConfigError(f"competition.submission: probability is for two classes; this data has {len(classes)}. "
                          "Use class_probabilities (one column per class) or labels")


def _positive(setting: str, classes: tuple, positive_class: str | None) -> str | None:
    if setting != "probability":
        return None
    if positive_class is None:
        return classes[1]   # the second in the pipeline's order: "1" of 0/1, "yes" of no/yes
    if str(positive_class) not in classes:
        raise ConfigError(f"competition.positive_class: '{positive_class}' is not a class; the classes are "
                          f"{list(classes)}")
    return str(positive_class)


def format_for_config(cfg, sample: pd.DataFrame, classes) -> SubmissionFormat:
    """The submission format of an experiment (``competition.submission``) for its sample and classes."""
    c = cfg.competition
    return detect_format(sample, cfg.data.id_column, cfg.data.target_column, classes, c.submission,
                         c.positive_class)


def _text(values) -> list[str]:
    return [f"{v:.{_DECIMALS}f}" for v in np.asarray(values, dtype=np.float64)]


def fill(sample: pd.DataFrame, fmt: SubmissionFormat, target_column: str, labels, scores: np.ndarray) -> pd.DataFrame:
    """The sample with its prediction columns filled: the labels, or the vote's (N, C) `scores` as
    probabilities (each row renormalised to sum to 1)."""
    sub = sample.copy()
    if fmt.kind == "labels":
        sub[target_column] = [str(v) for v in labels]
        return sub
    scores = np.asarray(scores, dtype=np.float64)
    probs = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)
    if fmt.kind == "probability":
        sub[target_column] = _text(probs[:, fmt.classes.index(fmt.positive)])
    else:
        for k, name in enumerate(fmt.classes):
            sub[_column_of(sample, name)] = _text(probs[:, k])
    return sub


def _column_of(sample: pd.DataFrame, name: str) -> str:
    return next(c for c in sample.columns if str(c) == name)


def scores_of(sub: pd.DataFrame, fmt: SubmissionFormat, target_column: str) -> np.ndarray:
    """A probability submission read back as (N, C) probabilities in the classes' order (for scoring)."""
    if fmt.kind == "probability":
        p = pd.to_numeric(sub[target_column]).to_numpy(dtype=np.float64)
        out = np.empty((len(p), 2))
        positive = fmt.classes.index(fmt.positive)
        out[:, positive], out[:, 1 - positive] = p, 1 - p
        return out
    return np.stack([pd.to_numeric(sub[_column_of(sub, name)]).to_numpy(dtype=np.float64)
                     for name in fmt.classes], axis=1)


def labels_of(sub: pd.DataFrame, fmt: SubmissionFormat, target_column: str) -> pd.Series:
    """The class each submission row predicts: its label, or the most probable class of its probabilities.

    >>> fmt = SubmissionFormat("probability", ("0", "1"), "1", "")
    >>> labels_of(pd.DataFrame({"y": ["0.2", "0.7"]}), fmt, "y").tolist()
    ['0', '1']
    """
    if fmt.kind == "labels":
        return sub[target_column]
    return pd.Series([fmt.classes[i] for i in scores_of(sub, fmt, target_column).argmax(axis=1)], index=sub.index)


def _first_line(mask: pd.Series) -> int:
    return int(mask.to_numpy().argmax()) + 2  # header line, 1-based


def check_values(sub: pd.DataFrame, fmt: SubmissionFormat, target_column: str) -> list[str]:
    """Every problem with a probability submission's values: not numbers, outside [0, 1], rows not summing to 1."""
    columns = [target_column] if fmt.kind == "probability" else [_column_of(sub, c) for c in fmt.classes]
    problems, numbers = [], {}
    for column in columns:
        values = pd.to_numeric(sub[column].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0))
        if bad.any():
            problems.append(f"{int(bad.sum())} value(s) in '{column}' are not numbers (first at line "
                            f"{_first_line(bad)}: {sub[column][bad].iloc[0]!r})")
        outside = ~bad & ~values.between(0, 1)
        if outside.any():
            problems.append(f"{int(outside.sum())} value(s) in '{column}' are outside [0, 1] (first at line "
                            f"{_first_line(outside)}: {sub[column][outside].iloc[0]})")
        numbers[column] = values
    if fmt.kind == "class_probabilities" and not problems:
        sums = pd.concat(numbers, axis=1).sum(axis=1)
        off = (sums - 1).abs() > _SUM_TOLERANCE
        if off.any():
            problems.append(f"{int(off.sum())} row(s) do not sum to 1 over the class columns (first at line "
                            f"{_first_line(off)}: {sums[off].iloc[0]:.6g})")
    return problems
