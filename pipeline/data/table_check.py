"""The data check's table part: the train CSV and the sample submission, row by row.

Reports missing or unreadable CSVs and columns, blank labels, groups, ids and paths,
duplicate rows, paths escaping the image root, and classes or groups the folds cannot
split; records every image a row names in ``run.refs`` for the image checks. Each function
takes the check's :class:`pipeline.data.check.CheckRun` and adds its problems to it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import NamedTuple

from pipeline.data.layouts import ImageNotFound, SeveralImages, TemplateError, TemplatePaths

# pandas and scikit-learn (via pipeline.data.folds) are imported inside the functions that
# need them, so that importing the check stays cheap.

__all__ = ["ImageRef", "check_train", "check_test"]

# Lines of a group with mixed labels quoted in its problem before " ...".
_GROUP_LINES_SHOWN = 10


class ImageRef(NamedTuple):
    """Where a CSV names an image: the CSV, its 1-based line, the path as written, test or train."""

    csv: str      # the CSV that names the image
    row: int      # its 1-based line number (header = line 1)
    rel: str      # the path as written (or as the template made it)
    test: bool


def _line(index: int) -> int:
    """0-based data row → 1-based CSV line counting the header."""
    return int(index) + 2


def _blank_mask(series):
    """True where a CSV cell is empty, NaN or only spaces (as pipeline.data.transforms treats labels)."""
    return (series.isna() | (series.astype(str).str.strip() == "")).to_numpy()


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _generated_hint(cfg) -> str:
    if cfg.data.demo:
        return " (data.demo is true: `make data` writes it)"
    if getattr(getattr(cfg, "mask", None), "enabled", False):
        return " (mask.enabled is true: `make data` builds it from train/train.csv)"
    if cfg.data.layout == "folders" or Path(cfg.data.sample_submission) == cfg.derived_sample_file:
        return " (the pipeline writes it from the image folders: `python -m pipeline resolve`, which make runs)"
    return ""


# ----------------------------------------------------------------------------------------
# Reading a CSV and the image paths it names


def _read_frame(run, path: str, columns: dict[str, str], what: str, key: str):
    """The CSV as text, or None after reporting why it cannot be read."""
    import pandas as pd

    from pipeline.fileio import read_text_csv

    p = Path(path)
    if not p.is_file():
        folder = "" if p.parent.is_dir() else f" (its folder {p.parent} does not exist either)"
        run.problem(path, None, "missing-csv", f"{what} not found{folder}{_generated_hint(run.cfg)}; "
                    f"check the path in the config ({key}).")
        return None
    if p.stat().st_size == 0:
        run.problem(path, None, "empty-csv", f"{what} is empty (0 bytes); expected a header with "
                    f"column(s) {list(columns)} and one row per image. Re-download or regenerate it.")
        return None
    try:
        return read_text_csv(p)   # exact text: "NA" is a label, "0001" an id, not 1
    except pd.errors.EmptyDataError:
        run.problem(path, None, "empty-csv", f"{what} holds no header (only blank lines); expected "
                    f"column(s) {list(columns)}. Re-download or regenerate it.")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        run.problem(path, None, "unreadable-csv", f"{what} cannot be parsed as CSV: "
                    f"{str(exc).strip()}. Fix that line (unbalanced quotes, extra commas) or re-save "
                    "the file as UTF-8 CSV.")
    return None


def _read_csv(run, path: str, columns: dict[str, str], what: str, key: str):
    """Read a CSV; return (frame, present required columns) or (None, set()) after reporting."""
    frame = _read_frame(run, path, columns, what, key)
    if frame is None:
        return None, set()
    found = [str(c) for c in frame.columns]
    for column, key in columns.items():
        if column not in frame.columns:
            close = difflib.get_close_matches(column, found, n=1, cutoff=0.6)
            close += [c for c in found if c.strip().lower() == column.strip().lower() and c not in close]
            hint = f" Did you mean '{close[0]}'?" if close else ""
            run.problem(path, 1, "missing-column", f"{what} has no column '{column}' ({key}); its header "
                        f"is {found}.{hint} Fix the header or set {key} in the config.")
    if frame.empty:
        run.problem(path, None, "empty-csv", f"{what} has a header but no rows; it must list one row "
                    "per image.")
    return frame, {c for c in columns if c in frame.columns}


def _add_ref(run, root: Path, rel, index: int, csv: str, column_desc: str, test: bool) -> str | None:
    """Record an image path from a CSV cell; return its key, or None if blank or escaping its root."""
    from pipeline.data.tables import DataError, RootGuard

    row = _line(index)
    if rel is None or (isinstance(rel, float) and rel != rel) or not str(rel).strip():
        run.problem(csv, row, "blank-image-path", f"{column_desc} is blank; give the image path "
                    "or drop the row.")
        return None
    rel = str(rel)
    guard = run.guards.get(str(root))
    if guard is None:       # one per root: each folder is resolved once, not each image
        guard = run.guards[str(root)] = RootGuard(root)
    try:
        full = guard.join(rel, f"{column_desc}")
    except DataError as exc:
        run.problem(csv, row, "path-escapes-root", f"{exc}.", image=rel)
        return None
    key = os.path.normpath(full)
    run.refs.setdefault(key, []).append(ImageRef(csv, row, rel, test))
    return key


# ----------------------------------------------------------------------------------------
# The training table


def check_train(run) -> None:
    """The train CSV: columns, blank labels and groups, image paths, duplicates, then the folds."""
    d = run.d
    columns = {d.image_column: "data.image_column", d.label_column: "data.label_column"}
    for col, key in ((d.group_column, "data.group_column"), (d.stratify_column, "data.stratify_column"),
                     (d.true_label_column, "data.true_label_column")):
        if col:
            columns.setdefault(col, key)
    frame, present = _read_csv(run, d.train_csv, columns, "train CSV", "data.train_csv")
    if frame is None or frame.empty:
        return
    run.report.train_rows = len(frame)
    _check_blank_labels(run, frame, present)
    if d.image_column in present:
        _check_train_images(run, frame, present)
    _check_folds(run, frame, present)


def _check_blank_labels(run, frame, present: set) -> None:
    """Blank cells in the label, stratify and true-label columns, and in the group column."""
    d, csv = run.d, run.d.train_csv
    label_columns = {}
    for col, key in ((d.label_column, "data.label_column"), (d.stratify_column, "data.stratify_column"),
                     (d.true_label_column, "data.true_label_column")):
        if col and col in present:
            label_columns.setdefault(col, key)
    for col, key in label_columns.items():
        for i in frame.index[_blank_mask(frame[col])]:
            run.problem(csv, _line(i), "blank-label", f"blank value in label column '{col}' ({key}); "
                        "fill in the label or drop the row.")
    if d.group_column and d.group_column in present:
        for i in frame.index[_blank_mask(frame[d.group_column])]:
            run.problem(csv, _line(i), "blank-group", f"blank group id in column '{d.group_column}' "
                        "(data.group_column); all blank rows would form one group 'nan'. Give every "
                        "row its group id (e.g. the person or patient) or drop the row.")


def _check_train_images(run, frame, present: set) -> None:
    """The image root, and each row's image path: blank, escaping the root, or listed twice."""
    d, csv = run.d, run.d.train_csv
    root = Path(d.image_root)
    if not root.is_dir():
        run.problem(d.image_root, None, "missing-root", f"image root (data.image_root) does not "
                    f"exist{_generated_hint(run.cfg)}; no training image can be found. Fix the path.")
        run.skipped_roots.add(os.path.normpath(str(root)))
    first_seen: dict[str, int] = {}
    template = TemplatePaths(root, d.train_image_template, "data.train_image_template") \
        if d.train_image_template else None
    for i, rel in zip(frame.index, frame[d.image_column]):
        where = f"column '{d.image_column}'"
        if template is not None and str(rel).strip():   # a blank cell: _add_ref reports it
            try:
                rel, where = _through_template(run, template, rel, i, csv, test=False)
            except TemplateError:
                return
            if rel is None:
                continue
        key = _add_ref(run, root, rel, i, csv, where, test=False)
        if key is None:
            continue
        if key not in first_seen:
            first_seen[key] = i
            continue
        j = first_seen[key]
        labels = ""
        if d.label_column in present:
            a, b = frame.at[j, d.label_column], frame.at[i, d.label_column]
            labels = (f" with a different label ({_plain(a)!r} there, {_plain(b)!r} here)"
                      if str(a) != str(b) else " with the same label")
        run.problem(csv, _line(i), "duplicate-image", f"image '{rel}' is already listed on line "
                    f"{_line(j)}{labels}; it would be trained (and validated) twice. Drop the "
                    "duplicate row" + (" and decide which label is right." if "different" in labels
                                        else "."), image=str(rel))


# ----------------------------------------------------------------------------------------
# The folds


def _check_folds(run, frame, present: set) -> None:
    """Class sizes against folds.n_splits and one label per group, as the folds stage needs."""
    d = run.d
    strat = d.stratify_column or d.label_column
    grouped = bool(d.group_column)
    if strat not in present or (grouped and d.group_column not in present):
        return
    usable = ~_blank_mask(frame[strat])
    if grouped:
        usable &= ~_blank_mask(frame[d.group_column])
    if d.label_column in present:
        usable &= ~_blank_mask(frame[d.label_column])
    rows = frame[usable]
    if rows.empty:
        return
    labels = rows[strat]
    n_before = len(run.report.problems)
    if grouped:
        groups = rows[d.group_column].astype(str)
        _check_group_labels(run, rows, labels, groups, strat)
        pairs = rows.assign(_g=groups.to_numpy()).drop_duplicates([strat, "_g"])
        counts, unit = pairs[strat].value_counts(), "groups"
    else:
        counts, unit = labels.value_counts(), "rows"
    _check_class_sizes(run, counts, unit, strat)
    if not grouped or len(run.report.problems) > n_before or not usable.all() or not run.dry_run_folds:
        return
    # Without groups the checks above are complete (StratifiedKFold splits any classes of at
    # least k rows). With groups, run the real assignment (StratifiedGroupKFold's greedy split can
    # still leave a fold empty): a passing check then means a passing folds stage. It costs
    # ~0.5 s for 500 groups, ~2 s for the mask competition's 2700.
    from pipeline.data.folds import assign_folds
    try:
        assign_folds(labels.to_numpy(), run.cfg.folds.n_splits, run.cfg.seed,
                     groups=groups.to_numpy())
    except ValueError as exc:
        run.problem(d.train_csv, None, "folds-failed", f"the folds stage would fail: {exc}")


def _check_group_labels(run, rows, labels, groups, strat: str) -> None:
    """A problem for each group whose rows carry more than one value of the stratify column."""
    d = run.d
    strat_key = "data.stratify_column" if d.stratify_column else "data.label_column"
    by_group = labels.groupby(groups.to_numpy(), sort=True)
    n_values = by_group.nunique()
    positions = by_group.indices if (n_values > 1).any() else {}
    for g in n_values.index[(n_values > 1).to_numpy()]:
        in_group = rows.index[positions[g]]
        values = list(dict.fromkeys(_plain(v) for v in labels.loc[in_group]))
        first = labels.loc[in_group[0]]
        odd = [i for i in in_group if labels.loc[i] != first]
        shown = "; ".join(f"line {_line(i)}: {_plain(labels.loc[i])!r}"
                          for i in in_group[:_GROUP_LINES_SHOWN])
        run.problem(d.train_csv, _line(odd[0]), "group-mixed-labels",
                    f"group {g!r} (column '{d.group_column}') has {len(values)} different values "
                    f"of '{strat}' ({strat_key}): {values} ({shown}"
                    f"{' ...' if len(in_group) > _GROUP_LINES_SHOWN else ''}). Grouped folds need one value "
                    f"per group: fix the labels, split the group into separate ids if its images are "
                    f"truly independent, or stratify on a per-group column (data.stratify_column).")


def _check_class_sizes(run, counts, unit: str, strat: str) -> None:
    """A problem for each class with fewer rows (or groups) than folds.n_splits."""
    k = run.cfg.folds.n_splits
    smallest = int(counts.min())
    for cls, n in counts.sort_values().items():
        if n >= k:
            break
        lower = f"lower folds.n_splits to at most {smallest}, " if smallest >= 2 else ""
        run.problem(run.d.train_csv, None, "class-too-small",
                    f"class {_plain(cls)!r} (column '{strat}') has {int(n)} "
                    f"{unit if n != 1 else unit[:-1]}, but folds.n_splits={k} needs at least {k} so that "
                    f"every fold can validate on one. To fix: {lower}merge or drop the class, "
                    "or collect more data.")


# ----------------------------------------------------------------------------------------
# The sample submission


def check_test(run) -> None:
    """The sample submission: blank or duplicate ids, and the test image each row names."""
    d = run.d
    csv = d.sample_submission
    columns = {d.id_column: "data.id_column", d.target_column: "data.target_column"}
    if d.test_path_column:
        columns.setdefault(d.test_path_column, "data.test_path_column")
    frame, present = _read_csv(run, csv, columns, "sample submission", "data.sample_submission")
    if frame is None or frame.empty:
        return
    run.report.test_rows = len(frame)
    root = Path(d.test_root or d.image_root)
    root_key = "data.test_root" if d.test_root else "data.image_root"
    if not root.is_dir() and os.path.normpath(str(root)) not in run.skipped_roots:
        run.problem(str(root), None, "missing-root", f"test image root ({root_key}) does not exist"
                    f"{_generated_hint(run.cfg)}; no test image can be found. Fix the path.")
        run.skipped_roots.add(os.path.normpath(str(root)))

    ids_ok = d.id_column in present
    blank_id = _blank_mask(frame[d.id_column]) if ids_ok else None
    if ids_ok:
        _check_test_ids(run, frame, blank_id)
    if d.test_path_column:
        if d.test_path_column in present:
            for i, rel in zip(frame.index, frame[d.test_path_column]):
                _add_ref(run, root, rel, i, csv, f"column '{d.test_path_column}'", test=True)
        return
    if ids_ok:
        expected = _template_refs(run, frame, blank_id, root)
        if expected is not None:
            run.expected_test = expected


def _check_test_ids(run, frame, blank_id) -> None:
    """Blank and duplicate ids in the sample submission."""
    d, csv = run.d, run.d.sample_submission
    for i in frame.index[blank_id]:
        run.problem(csv, _line(i), "blank-id", f"blank id in column '{d.id_column}' "
                    "(data.id_column); every row of the sample submission needs its id.")
    seen: dict[str, int] = {}
    for i, value in zip(frame.index, frame[d.id_column].astype(str)):
        if blank_id[i]:
            continue
        if value in seen:
            run.problem(csv, _line(i), "duplicate-id", f"id {value!r} is already on line "
                        f"{_line(seen[value])}; a submission needs one row per id. Drop the duplicate "
                        "row (or check the id column, data.id_column).")
        else:
            seen[value] = i


def _template_refs(run, frame, blank_id, root: Path) -> set[str] | None:
    """Record each id's image through data.test_image_template; None if the template is unusable."""
    d, csv = run.d, run.d.sample_submission
    template = TemplatePaths(root, d.test_image_template, "data.test_image_template")
    expected: set[str] = set()
    for i, value in zip(frame.index, frame[d.id_column]):
        if blank_id[i]:
            continue
        try:
            rel, where = _through_template(run, template, value, i, csv, test=True)
        except TemplateError:
            return None
        if rel is None:
            continue
        key = _add_ref(run, root, rel, i, csv, where, test=True)
        if key is not None:
            expected.add(key)
    return expected


def _through_template(run, template: TemplatePaths, value, index: int, csv: str, test: bool):
    """(image path, how the row named it) of an id through a template, or (None, None) after reporting an id
    with no image or several; a template that cannot be filled is reported once and raised (TemplateError)."""
    where = f"id {_plain(value)!r} through {template.key} {template.template!r}"
    try:
        return template.rel(value), where
    except TemplateError as exc:
        run.problem(csv, None, "bad-template", f"{exc}.")
        raise
    except ImageNotFound as exc:
        kind = "missing-test-image" if test else "missing-image"
        run.problem(csv, _line(index), kind, f"{exc}. Every row needs its image: check the template and "
                    "the image folder, or drop the row.")
    except SeveralImages as exc:
        run.problem(csv, _line(index), "ambiguous-image", f"{exc}.")
    return None, None
