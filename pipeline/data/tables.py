"""The competition's CSVs as tables: the train table, the folds table, the test table, the classes.

`read_train_table` and `read_test_table` turn a user's CSVs into one normal form (`image` path,
`label`, `group`; or `id`, `image`), checking the columns the config names. Every cell is the
exact text of the file. Image paths are joined to their root and must stay inside it, links
included. Light on purpose (pandas, no torch): Make's parse-time steps read these tables too.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data.layouts import LayoutError, TemplatePaths
from pipeline.fileio import read_table, read_text_csv

__all__ = ["DataError", "read_csv_checked", "safe_join", "RootGuard", "read_train_table", "load_fold_table",
           "model_classes", "read_test_table", "class_list"]


class DataError(ValueError):
    """A problem in the user's data: the message names the file, row or column."""


def read_csv_checked(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV as text (every cell exactly as written) and check it has rows and the configured columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (check the path in the config)")
    try:
        frame = read_text_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header with columns {required}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}. "
                        "Fix the CSV or the data.*_column keys in the config.")
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame


def _refuse_lexical_escape(root, rel: str, where: str) -> None:
    """Refuse an absolute path or one with a `..` part, before anything on disk is looked at."""
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise DataError(f"{where}: image path '{rel}' escapes the data root {root} (absolute, or with '..'); "
                        "it was not opened. Use paths relative to the image root")


def _refuse_outside(root, rel: str, where: str, path: str, real_root: str) -> None:
    """Refuse `path` when its real location (links resolved) is not the root or under it."""
    real = os.path.realpath(path)
    if not _is_under(real, real_root):
        raise DataError(f"{where}: image path '{rel}' is a link that leads out of the data root {root} "
                        f"(to {real}); it was not opened. Copy the file under the root, or set the root "
                        "to a folder that holds it")


def safe_join(root: str | Path, rel: str, where: str) -> Path:
    """Join an image path to its root, refusing any path that leads out of the root.

    Refused: absolute paths, `..` parts, and links (of the file or of a folder on its way)
    that resolve to somewhere outside the root, so a planted `train/x.png -> /etc/shadow`
    is never opened. Links that stay inside the root are fine. For a whole column use
    :class:`RootGuard`: the same paths and refusals at a fraction of the cost.
    """
    _refuse_lexical_escape(root, rel, where)
    path = Path(root) / rel
    _refuse_outside(root, rel, where, str(path), _real_root(str(root)))
    return path


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


class RootGuard:
    """`safe_join` for many paths under one root: each folder is resolved and listed once, not each file.

    `safe_join` resolves every path (`os.path.realpath`: one system call per part of the path,
    ~30 us a file). Here a folder's real location is checked once, and its links are read from one
    listing (`os.scandir`, whose entries say whether they are links without a call per file); only a
    file that is itself a link is resolved. The result is the same: the same joined path as
    `safe_join`, and the same DataError for a path that is absolute, has a `..` part, or leads out of
    the root through a link (of the file or of any folder on its way). Make one guard per reading of a
    table: it remembers the folders as they were when first seen.
    """

    def __init__(self, root: str | Path):
        self.root = root
        self._prefix = str(Path(root))
        self._real_root = os.path.realpath(root)
        self._folders: dict[str, tuple[bool, frozenset]] = {}   # folder → `_look_at(folder)`

    def join(self, rel: str, where: str) -> str:
        """The full path of `rel` (as `str(safe_join(root, rel, where))`); DataError when it escapes."""
        if not _plain(rel):                         # anything unusual takes the careful road
            return str(safe_join(self.root, rel, where))
        path = rel if self._prefix == "." else self._prefix.rstrip("/") + "/" + rel
        folder, _, name = path.rpartition("/")
        seen = self._folders.get(folder)
        if seen is None:
            seen = self._folders[folder] = self._look_at(folder or ("/" if path.startswith("/") else "."))
        inside, links = seen
        if not inside or name in links:
            _refuse_outside(self.root, rel, where, path, self._real_root)
        return path

    def _look_at(self, folder: str) -> tuple[bool, frozenset]:
        """Whether the folder's real location is under the root, and the names of its entries that are links."""
        inside = _is_under(os.path.realpath(folder), self._real_root)
        try:
            with os.scandir(folder) as entries:
                links = frozenset(e.name for e in entries if e.is_symlink())
        except OSError:             # no such folder: nothing in it can be a link
            links = frozenset()
        return inside, links


def _plain(rel) -> bool:
    """A relative path pathlib would not rewrite: no empty or dot part, no leading or trailing `/`.
    (A few harmless ones, such as `.hidden/x.png`, are sent the careful way too.)"""
    return (isinstance(rel, str) and rel != "" and "//" not in rel and "/." not in rel
            and not rel.startswith(("/", ".")) and not rel.endswith("/"))


def _is_under(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def read_train_table(cfg: Config) -> pd.DataFrame:
    """Return the training rows as columns `image` (full path), `label`, `group`, `stratify`, `true_label`.

    Every value is the exact text of the train CSV: labels `01` and `1` are two classes, `NA` is
    a label, a group `000041` keeps its zeros. `stratify` is what the folds are stratified on (the
    label unless data.stratify_column is set); `true_label` is what validation is scored on (the
    label unless data.true_label_column is set). `source` is the image path as written in the CSV.
    """
    d = cfg.data
    extra = [c for c in (d.group_column, d.stratify_column, d.true_label_column) if c]
    cols = [d.image_column, d.label_column] + extra
    raw = read_csv_checked(d.train_csv, cols, "train CSV")
    blank = raw[d.label_column].str.strip() == ""
    if blank.any():
        rows = (np.flatnonzero(blank.to_numpy()) + 2).tolist()[:10]  # +2: header line, 1-based
        raise DataError(f"{d.train_csv}: blank label in column '{d.label_column}' at line(s) {rows}; "
                        "fill or drop those rows")
    root = Path(d.image_root)
    rels = raw[d.image_column].tolist()
    if d.train_image_template:
        rels = _template_paths(root, d.train_image_template, "data.train_image_template", rels, d.train_csv)
    guard = RootGuard(root)
    images = [guard.join(p, f"{d.train_csv} line {i + 2}") for i, p in enumerate(rels)]
    groups = raw[d.group_column] if d.group_column else pd.Series(range(len(raw))).astype(str)
    label = raw[d.label_column].to_numpy(dtype=object)
    column = lambda name: raw[name].to_numpy(dtype=object) if name else label  # noqa: E731
    return pd.DataFrame({"image": images, "label": label, "group": groups.to_numpy(dtype=object),
                         "stratify": column(d.stratify_column), "true_label": column(d.true_label_column),
                         "source": raw[d.image_column].to_numpy(dtype=object)})


def model_classes(table: pd.DataFrame) -> list:
    """The classes a model is trained on: every label and every true label of `read_train_table`'s rows."""
    return class_list(pd.concat([table["label"], table["true_label"]]))


def load_fold_table(cfg: Config) -> pd.DataFrame:
    """The train table with each row's fold, checked against the folds file it came from."""
    table = read_train_table(cfg)
    path = cfg.folds_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make folds` (or `python -m pipeline folds`) first")
    folds = read_table(path)
    same = len(folds) == len(table) and (folds["label"].to_numpy(dtype=object)
                                         == table["label"].to_numpy(dtype=object)).all()
    if not same:
        raise ValueError(f"{path} does not match {cfg.data.train_csv} (rows or labels differ): "
                         "the train CSV changed since the folds were made; rerun `make folds`")
    table["fold"] = folds["fold"].to_numpy()
    return table


def read_test_table(cfg: Config) -> pd.DataFrame:
    """Return the sample submission's rows in order, with the image path of each id."""
    d = cfg.data
    cols = [d.id_column, d.target_column] + ([d.test_path_column] if d.test_path_column else [])
    sample = read_csv_checked(d.sample_submission, cols, "sample submission")
    root = Path(d.test_root or d.image_root)
    if d.test_path_column:
        rel = sample[d.test_path_column]
    else:
        rel = _template_paths(root, d.test_image_template, "data.test_image_template", sample[d.id_column],
                              d.sample_submission)
    guard = RootGuard(root)
    images = [guard.join(r, f"{d.sample_submission} line {i + 2}") for i, r in enumerate(list(rel))]
    return pd.DataFrame({"id": sample[d.id_column].to_numpy(dtype=object), "image": images})


def _template_paths(root: Path, template: str, key: str, ids, csv) -> list[str]:
    """Each id's image path through `template` (`layouts.TemplatePaths`: the extension found by looking when
    the template ends in {id}); a DataError naming the CSV line of an id without exactly one image."""
    paths, out = TemplatePaths(root, template, key), []
    for i, value in enumerate(ids):
        try:
            out.append(paths.rel(value))
        except LayoutError as exc:
            raise DataError(f"{csv} line {i + 2}: {exc}") from None
    return out


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def class_list(labels) -> list[str]:
    """The distinct labels as text, in a stable order: numerically when every label is an integer
    (`2` before `10`, `01` before `02`), else alphabetically.

    Labels are compared as the exact text of the CSV, so `01` and `1` are different classes.

    >>> class_list(["10", "2", "01", "2"]), class_list(["b", "NA", "a"])
    (['01', '2', '10'], ['NA', 'a', 'b'])
    """
    texts = pd.unique(pd.Series(labels, dtype=object).map(str))
    if all(_INTEGER.match(t) for t in texts):
        return sorted(texts, key=lambda t: (int(t), t))
    return sorted(texts)


