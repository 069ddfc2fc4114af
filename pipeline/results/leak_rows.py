"""The leak check's rows in the CV table: out-of-fold scores of the rows with a suspected near-duplicate in
another fold against the rest, and the suspected pairs as ``leaks.csv`` (the report shows them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.leak_scan import leak_pairs_table, scan_leaks
from pipeline.data.leaks import rows_in_pairs
from pipeline.data.tables import DataError, load_fold_table
from pipeline.fileio import write_csv_atomic
from pipeline.results.cv_table import metrics_row
from pipeline.predict.probs import class_ids, prob_columns

__all__ = ["leak_cv_rows"]


def leak_cv_rows(cfg: Config, oof: pd.DataFrame, classes: list, log=print) -> tuple[list[dict], list[str]]:
    """CV rows 'rows with a cross-fold near-duplicate' / 'the rest' on `oof`'s probabilities, and a note.

    The gap between the two rows estimates how optimistic the CV is: a row whose near-copy was trained on
    is easier to predict than a test image will be.
    """
    try:
        table = load_fold_table(cfg)
        scan = scan_leaks(cfg, table, table["fold"].to_numpy())
    except (DataError, FileNotFoundError) as exc:   # the training images are not here (moved, another machine)
        note = f"Leak check skipped: the training images are needed and {exc}"
        log(f"[ensemble] {note}")
        return [], [note]
    write_csv_atomic(cfg.exp_dir / "leaks.csv", leak_pairs_table(table, scan.pairs))
    leaked = rows_in_pairs(len(table), scan.pairs)[oof["row"].to_numpy(dtype=np.int64)]
    y = class_ids(oof["label"], classes, "oof.csv")
    probs = oof[prob_columns(classes)].to_numpy()
    parts = {"OOF rows with a cross-fold near-duplicate": leaked, "OOF rows without one": ~leaked}
    rows = [metrics_row(part, y[mask], probs[mask]) for part, mask in parts.items() if mask.any()]
    note = f"Leak check: {scan.describe()}; {int(leaked.sum())} of {len(leaked)} OOF rows have one (leaks.csv)."
    if len(scan.pairs):
        inflation = _inflation(cfg.competition.metric, metrics_row("all", y, probs), rows[-1] if (~leaked).any() else None)
        note += (f" {inflation} If the pairs are the same subject, set data.group_column or folds.auto_groups: "
                 "true and retrain.")
        log(f"[ensemble] warning: {len(scan.pairs)} suspected near-duplicate pair(s) across folds, "
            f"{int(leaked.sum())} of {len(leaked)} OOF rows affected; {inflation} ({cfg.exp_dir / 'leaks.csv'})")
    return rows, [note]


def _inflation(metric: str, everything: dict, rest: dict | None) -> str:
    """By how much the CV is likely inflated: all OOF rows' score against the score of the rows without a copy."""
    if rest is None or metric not in everything or metric not in rest:
        return "Every OOF row has a copy in another fold: the CV cannot estimate its own optimism."
    gap = everything[metric] - rest[metric]
    if gap <= 0:
        return (f"No sign that the copies inflate the CV: the rows without a copy score {rest[metric]:.3f} "
                f"{metric}, all OOF rows {everything[metric]:.3f}.")
    return (f"The CV is likely inflated by about {gap:+.3f} {metric}: {everything[metric]:.3f} on all OOF rows "
            f"against {rest[metric]:.3f} on the rows without a copy (an upper bound: an image with a look-alike "
            "is also an easy one).")
