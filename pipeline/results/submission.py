"""Writing the submission in the sample submission's exact shape, and checking one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.fileio import read_text_csv, write_csv_atomic
from pipeline.results.formats import SubmissionFormat, check_values, fill, format_for_config, scores_of

__all__ = ["write_submission", "validate_submission", "validate_for_config", "submission_format",
           "submission_metrics", "SubmissionError"]


class SubmissionError(ValueError):
    """A submission that the competition would reject."""


def write_submission(sample_path: str | Path, id_column: str, target_column: str,
                     ids, labels, out_path: str | Path, fmt: SubmissionFormat | None = None,
                     scores=None) -> pd.DataFrame:
    """Fill the sample's target column (or, for a probability `fmt`, its probability columns from the
    vote's (N, C) `scores`); keep its columns, ids (as written) and row order untouched.

    `ids` are the predicted rows' ids as text; they must equal the sample's, row for row, or the
    predictions are of another test set (the sample changed after the predict stage).
    """
    sample = read_text_csv(sample_path)
    ids = pd.Series(ids, dtype=object).to_numpy()
    if len(ids) != len(sample) or (sample[id_column].to_numpy(dtype=object) != ids).any():
        raise SubmissionError(f"the test predictions do not cover the ids of {sample_path} row for row: the "
                              "sample submission changed after the predict stage. `make ensemble` predicts "
                              "again (it depends on the sample submission); without Make run "
                              "`python -m pipeline predict` and then `python -m pipeline ensemble`")
    sub = fill(sample, fmt or SubmissionFormat("labels", (), None, ""), target_column, labels, scores)
    write_csv_atomic(out_path, sub)
    return sub


def submission_format(cfg, classes) -> SubmissionFormat:
    """The format an experiment's (or a blend's first member's) submission is written in."""
    return format_for_config(cfg, read_text_csv(cfg.data.sample_submission), classes)


def submission_metrics(path: str | Path, fmt: SubmissionFormat, id_column: str, target_column: str,
                       ids, y, classes: list) -> dict:
    """The metrics of the submission file `path` as written, its rows matched by id to `ids` (the order
    of the true labels `y`): a label submission by its labels (no ROC-AUC or log-loss), a probability
    submission by the probabilities it holds."""
    from pipeline.metrics import classification_metrics, label_metrics, log_loss
    from pipeline.predict.probs import class_ids

    by_id = read_text_csv(path).set_index(id_column)
    ids = [str(i) for i in ids]
    missing = sorted(set(ids) - set(by_id.index))
    if missing:
        raise SubmissionError(f"{path}: no row for {len(missing)} test id(s), e.g. {missing[:5]}")
    sub = by_id.loc[ids].reset_index()
    if fmt.kind == "labels":
        predicted = class_ids(sub[target_column], classes, str(path))
        return {**label_metrics(y, predicted, len(classes)), "roc_auc": float("nan"), "log_loss": float("nan")}
    scores = scores_of(sub, fmt, target_column)
    return {**classification_metrics(y, scores), "log_loss": log_loss(y, scores)}


def _first_line(mask) -> int:
    return int(pd.Series(mask).to_numpy().argmax()) + 2  # +2: header line, 1-based


def validate_submission(path: str | Path, sample_path: str | Path, id_column: str, target_column: str,
                        classes: list | None = None, fmt: SubmissionFormat | None = None) -> list[str]:
    """Every reason the competition would reject `path` (an empty list when it is valid).

    Checks, comparing cells as the exact text in the files: the columns (names and order), the
    row count, no duplicate ids, the same ids as the sample (naming missing and extra ones) in
    the sample's order, no blank id or target, and (with `classes`) every label among the classes.
    A probability `fmt` checks the values instead: numbers in [0, 1], per-class rows summing to 1.
    """
    for p, what in ((path, "submission"), (sample_path, "sample submission")):
        if not Path(p).is_file():
            return [f"{what} {p} does not exist"]
    try:
        sub = read_text_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        return [f"not a readable CSV: {str(exc).splitlines()[0]}"]
    sample = read_text_csv(sample_path)
    if list(sub.columns) != list(sample.columns):
        return [f"columns {list(sub.columns)} differ from the sample's {list(sample.columns)} "
                "(names and order must match)"]
    problems = []
    sub_ids, sample_ids = sub[id_column].str.strip(), sample[id_column].str.strip()
    if len(sub) != len(sample):
        problems.append(f"{len(sub)} rows, the sample has {len(sample)}")
    dup = sub_ids.duplicated(keep="first")
    if dup.any():
        problems.append(f"{int(dup.sum())} duplicate id(s), e.g. '{sub_ids[dup].iloc[0]}' (line {_first_line(dup)})")
    missing = sorted(set(sample_ids) - set(sub_ids))
    extra = sorted(set(sub_ids) - set(sample_ids))
    if missing:
        problems.append(f"{len(missing)} id(s) of the sample are missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in the sample, e.g. {extra[:5]}")
    if not missing and not extra and not dup.any() and len(sub) == len(sample):
        moved = sub_ids.to_numpy() != sample_ids.to_numpy()
        if moved.any():
            problems.append(f"ids are in another order than the sample's (first difference at line "
                            f"{_first_line(moved)}); keep the sample's order")
    labels = fmt is None or fmt.kind == "labels"
    for column in dict.fromkeys([id_column, target_column] if labels else [id_column]):
        blank = sub[column].str.strip() == ""
        if blank.any():
            problems.append(f"{int(blank.sum())} blank value(s) in '{column}' (first at line {_first_line(blank)})")
    if not labels:
        problems += check_values(sub, fmt, target_column)
    elif classes is not None:
        allowed = {str(c) for c in classes}
        values = sub[target_column].str.strip()
        unknown = sorted(set(values[values != ""]) - allowed)
        if unknown:
            problems.append(f"{len(unknown)} label(s) not among the training classes, e.g. {unknown[:10]}; "
                            f"allowed: {sorted(allowed)[:20]}")
    return problems


def validate_for_config(cfg, path: str | Path | None = None) -> Path:
    """Check a submission (default: the experiment's) against the config's sample and classes.

    The classes are those the fold models were trained on (fold 0's sidecar), or else the train
    CSV's labels. Raises SubmissionError listing every problem; returns the path when valid.
    """
    from pipeline.data.tables import model_classes, read_train_table
    from pipeline.results.formats import format_for_config
    from pipeline.train.models import read_sidecar

    path = Path(path) if path is not None else cfg.exp_dir / "submission.csv"
    try:
        classes = read_sidecar(cfg.fold_dir(0) / "weights.safetensors")["classes"]
    except FileNotFoundError:   # no trained fold (yet): the classes training would use
        classes = model_classes(read_train_table(cfg))
    sample = Path(cfg.data.sample_submission)
    fmt = format_for_config(cfg, read_text_csv(sample), classes) if sample.is_file() else None
    problems = validate_submission(path, cfg.data.sample_submission, cfg.data.id_column,
                                   cfg.data.target_column, classes, fmt)
    if problems:
        raise SubmissionError(f"{path} would be rejected:\n  - " + "\n  - ".join(problems))
    return path
