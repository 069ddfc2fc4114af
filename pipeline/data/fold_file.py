"""The folds stage: the train table with a fold assigned to every row, written to ``folds/<name>.csv``.

The file holds ``row, image, label, group, fold``; every later stage reads its folds from it, so
the split is decided once and never recomputed from a different table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.folds import assign_folds, fold_class_counts
from pipeline.data.tables import read_train_table
from pipeline.fileio import locked, write_csv_atomic

__all__ = ["make_folds"]


def make_folds(cfg: Config, log=print) -> Path:
    """Assign a fold to every training row (stratified; grouped when a group column is set).

    The data check runs first, so bad data fails here, before training, with every problem listed; it
    decodes only the images that changed since they were last checked (:mod:`pipeline.data.verdicts`).
    """
    path = cfg.folds_file
    with locked(path.with_name(f".{path.name}.lock"), f"the folds file {path}", log):
        return _make_folds(cfg, log)


def _make_folds(cfg: Config, log) -> Path:
    from pipeline.data.check import check_data   # the check imports the image decoders: load them only here
    from pipeline.data.verdicts import Verdicts, verdicts_path

    # The images' verdicts of the last check are reused: an image is decoded only when it changed since.
    # The grouped assignment is not rehearsed by the check: it runs for real below.
    verdicts = Verdicts(verdicts_path(cfg))
    report = check_data(cfg, verdicts=verdicts, dry_run_folds=False)
    verdicts.save()
    report.raise_if_failed()
    if report.warnings:
        log(report.format())
    table = read_train_table(cfg)
    if cfg.folds.auto_groups:
        from pipeline.data.leak_scan import auto_groups   # imports torch: only when asked for

        table["group"] = auto_groups(cfg, table, log)
    groups = table["group"].to_numpy() if cfg.data.group_column or cfg.folds.auto_groups else None
    folds = assign_folds(table["stratify"].to_numpy(), cfg.folds.n_splits, cfg.seed, groups=groups)
    out = pd.DataFrame({"row": np.arange(len(table)), "image": table["source"],
                        "label": table["label"], "group": table["group"], "fold": folds})
    write_csv_atomic(cfg.folds_file, out)
    scored = cfg.data.true_label_column or cfg.data.label_column
    log(f"[folds] {cfg.folds_file}: {len(out)} rows, {out['group'].nunique()} groups, "
        f"{cfg.folds.n_splits} folds; validation rows per class (column '{scored}', which validation "
        "is scored on) and fold:")
    log(fold_class_counts(table["true_label"].to_numpy(), folds).to_string())
    if cfg.data.stratify_column:
        log(f"[folds] stratified on '{cfg.data.stratify_column}'")
    return cfg.folds_file
