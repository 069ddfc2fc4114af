"""Writing the submission in the sample submission's exact shape, and checking one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .fileio import write_csv_atomic

__all__ = ["write_submission", "validate_submission", "SubmissionError"]


class SubmissionError(ValueError):
    """A submission that the competition would reject."""


def write_submission(sample_path: str | Path, id_column: str, target_column: str,
                     ids, labels, out_path: str | Path) -> pd.DataFrame:
    """Fill the sample's target column; keep its columns, ids and row order untouched."""
    sample = pd.read_csv(sample_path)
    ids = pd.Series(ids).astype(str).to_numpy()
    if len(ids) != len(sample) or (sample[id_column].astype(str).to_numpy() != ids).any():
        raise SubmissionError(f"predicted ids do not match {sample_path} row for row; "
                              "the sample changed after prediction: rerun `make ensemble`")
    sub = sample.copy()
    sub[target_column] = list(labels)
    write_csv_atomic(out_path, sub)
    return sub


def validate_submission(path: str | Path, sample_path: str | Path, id_column: str, target_column: str,
                        classes: list | None = None) -> list[str]:
    """Every reason the competition would reject `path` (an empty list when it is valid)."""
    sub, sample = pd.read_csv(path), pd.read_csv(sample_path)
    problems = []
    if list(sub.columns) != list(sample.columns):
        problems.append(f"columns {list(sub.columns)} differ from the sample's {list(sample.columns)}")
        return problems
    if len(sub) != len(sample):
        problems.append(f"{len(sub)} rows, the sample has {len(sample)}")
    elif (sub[id_column].astype(str).to_numpy() != sample[id_column].astype(str).to_numpy()).any():
        bad = (sub[id_column].astype(str).to_numpy() != sample[id_column].astype(str).to_numpy()).argmax()
        problems.append(f"ids differ from the sample's (first at line {bad + 2}); keep the sample's order")
    blank = sub[target_column].isna() | (sub[target_column].astype(str).str.strip() == "")
    if blank.any():
        problems.append(f"{int(blank.sum())} blank value(s) in '{target_column}' (first at line "
                        f"{int(blank.to_numpy().argmax()) + 2})")
    if classes is not None:
        allowed = {str(c) for c in classes}
        unknown = sorted(set(sub[target_column].dropna().astype(str)) - allowed)
        if unknown:
            problems.append(f"labels not among the training classes: {unknown[:10]}")
    return problems
