"""The cross-validation table: each fold, the out-of-fold set without and with TTA, each view and checkpoint,
as `cv.csv` (every metric) and `cv.md` (the narrow table), printed too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fileio import write_csv_atomic, write_text_atomic
from pipeline.metrics import classification_metrics
from pipeline.predict.probs import CKPT_PREFIX, class_ids, frame_prob_columns, prob_columns, view_columns
from pipeline.ensemble.voting import log_loss

__all__ = ["CV_COLUMNS", "cv_columns", "metrics_row", "cv_table", "markdown_table", "write_cv", "text_table"]

CV_COLUMNS = ["part", "rows", "f1_macro", "accuracy"]   # the printed / Markdown table


def cv_columns(metric: str = "f1_macro") -> list[str]:
    """The printed table's columns: the competition metric first (the headline), then macro-F1 and accuracy.

    >>> cv_columns("qwk")
    ['part', 'rows', 'qwk', 'f1_macro', 'accuracy']
    """
    return ["part", "rows", metric] + [c for c in CV_COLUMNS[2:] if c != metric]


def metrics_row(part: str, y: np.ndarray, probs: np.ndarray, predicted=None, **extra) -> dict:
    """One CV-table row: the classification metrics of `probs` (decisions `predicted`, default their
    argmax) plus the log-loss."""
    probs = np.asarray(probs, dtype=np.float64)
    return {"part": part, "rows": int(len(y)), **classification_metrics(y, probs, predicted),
            "log_loss": log_loss(probs, y) if len(y) else float("nan"), **extra}


def cv_table(oof: pd.DataFrame, classes: list, oof_tta: pd.DataFrame | None = None, merge: str = "mean") -> pd.DataFrame:
    """Each fold and the whole out-of-fold set without TTA (oof.csv); with TTA, each view alone and each
    checkpoint (oof_tta.csv). The chain's rows (:mod:`pipeline.results.chain_rows`) follow them."""
    y = class_ids(oof["label"], classes, "oof.csv")
    probs = oof[frame_prob_columns(oof)].to_numpy()
    folds = oof["fold"].to_numpy()
    rows = [metrics_row(f"fold {k}", y[folds == k], probs[folds == k]) for k in sorted(np.unique(folds))]
    rows.append(metrics_row("out-of-fold, no TTA", y, probs))
    if oof_tta is not None:
        y_tta = class_ids(oof_tta["label"], classes, "oof_tta.csv")
        rows.append(metrics_row(f"out-of-fold, TTA ({merge})", y_tta, oof_tta[prob_columns(classes)].to_numpy()))
        for view, cols in view_columns(oof_tta, classes).items():
            rows.append(metrics_row(f"out-of-fold, view {view}", y_tta, oof_tta[cols].to_numpy()))
        for ckpt, cols in view_columns(oof_tta, classes, CKPT_PREFIX).items():
            rows.append(metrics_row(f"out-of-fold, checkpoint {ckpt}", y_tta, oof_tta[cols].to_numpy()))
    return pd.DataFrame(rows)


def _escape_md(value) -> str:
    return str(value).strip().replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, columns: list[str] | None = None, float_format: str = "%.4f") -> str:
    """A GitHub-flavoured Markdown table of `frame` (numbers right-aligned, `|` escaped).

    >>> print(markdown_table(pd.DataFrame({"part": ["a|b"], "f1": [0.5]})))
    | part | f1 |
    | :--- | ---: |
    | a\\|b | 0.5000 |
    """
    columns = columns or list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    lines = ["| " + " | ".join(_escape_md(c) for c in columns) + " |",
             "| " + " | ".join("---:" if n else ":---" for n in numeric) + " |"]
    for _, row in frame[columns].iterrows():
        cells = [(float_format % v if isinstance(v, float) else str(v)) if n else _escape_md(v)
                 for v, n in zip(row, numeric)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_cv(cv: pd.DataFrame, out_dir: Path, title: str, notes: list[str] = (), log=print,
             metric: str = "f1_macro", summary: list[tuple[str, str]] = (), steps: pd.DataFrame | None = None,
             folded: dict[str, list[str]] | None = None) -> None:
    """Save ``cv.csv`` (every row, every metric) and ``cv.md``, and print it: the `summary` ((label, text) pairs)
    and the chain's `steps` first, then the narrow table (`metric` first) without the rows `folded` holds
    (``{why: [part, ...]}``: rows that carry nothing here), which follow in a closed block, then the notes."""
    from pipeline.results.summary import as_markdown, as_text

    write_csv_atomic(out_dir / "cv.csv", cv)
    columns = cv_columns(metric)
    hidden = {part for parts in (folded or {}).values() for part in parts}
    shown = cv[~cv["part"].isin(hidden)]
    md, text = [f"# {title}", ""], []
    if summary:
        md += [as_markdown(summary), ""]
        text += [as_text(summary), ""]
    if steps is not None and len(steps):
        md += ["## The chain", "", markdown_table(steps), ""]
        text += [text_table(steps, [c for c in steps.columns if c != "why"]), ""]
    md += ["## Every row" if summary else "", "", markdown_table(shown, columns), ""]
    text += [text_table(shown, columns)]
    for why, parts in (folded or {}).items():
        rows = cv[cv["part"].isin(parts)]
        if len(rows):
            md += [f"<details><summary>{len(rows)} rows folded: {why}</summary>", "", markdown_table(rows, columns),
                   "", "</details>", ""]
            text += [f"({len(rows)} rows folded: {why}; see cv.md)"]
    md += [*notes, ""] if notes else []
    write_text_atomic(out_dir / "cv.md", "\n".join(md))
    log(f"[cv] {title}:\n" + "\n".join(text) + "".join(f"\n{n}" for n in notes))


def text_table(frame: pd.DataFrame, columns: list[str], float_format: str = "%.4f") -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    cells = [[(float_format % v if isinstance(v, float) else str(v)) if n else str(v)
              for v, n in zip(row, numeric)] for row in frame[columns].itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    fmt = lambda vals: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric))
    return "\n".join([fmt(columns)] + [fmt(r) for r in cells]).rstrip()
