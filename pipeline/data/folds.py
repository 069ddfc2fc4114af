"""Stratified (optionally grouped) K-fold assignment for the training table.

Every training row gets one fold number in ``0 .. n_splits - 1``; the rows of
fold ``k`` are the validation set of model ``k`` and the training set of the
others. Folds are stratified so each one sees the classes in roughly the
overall proportions, and, when groups are given (e.g. a person or patient id),
a group never spans two folds, so a model is never validated on images of a
subject it was trained on.

The checks run before splitting and explain what to change, because the
errors scikit-learn would otherwise raise (or the warnings it would only print)
come far from the cause: a class too small to appear in every fold, a group
labelled two ways, a blank label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from pipeline.data.group_folds import stratified_group_folds

__all__ = ["assign_folds", "fold_class_counts", "training_indices_for_fold", "check_labels"]

# How many offending rows or groups an error message lists before "...".
_MAX_LISTED = 10


def _format_list(items, limit: int = _MAX_LISTED) -> str:
    """Show at most `limit` items, saying how many more there are.

    >>> _format_list([1, 2, 3], limit=2)
    '[1, 2] ... (3 in all)'
    >>> _format_list(["a"])
    "['a']"
    """
    items = list(items)
    if len(items) <= limit:
        return repr(items)
    return f"{items[:limit]!r} ... ({len(items)} in all)"


def _plain(value):
    """A numpy scalar as the Python value it holds, so messages read 'a', not np.str_('a').

    >>> _plain(np.int64(3)), _plain("a")
    (3, 'a')
    """
    return value.item() if isinstance(value, np.generic) else value


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is NaN, None or a blank string.

    >>> _missing_mask(np.array(["a", None, " ", float("nan"), 0], dtype=object)).tolist()
    [False, True, True, True, False]
    """
    series = pd.Series(values, dtype=object)
    blank = series.map(lambda v: isinstance(v, str) and v.strip() == "").to_numpy(dtype=bool)
    return series.isna().to_numpy(dtype=bool) | blank


def _as_1d(values, name: str) -> np.ndarray:
    """Turn an array-like into a 1-D numpy array, or say why it cannot be one."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per row); got an array of shape {array.shape}. "
                         f"Pass a single column.")
    return array


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """Validate class labels: 1-D, non-empty, no missing values, one comparable type.

    Returns the labels as a 1-D numpy array (unchanged values).
    """
    labels = _as_1d(labels, name)
    if labels.shape[0] == 0:
        raise ValueError(f"{name} is empty; there must be at least one row.")
    missing = np.flatnonzero(_missing_mask(labels))
    if missing.size:
        raise ValueError(f"{name} has {missing.size} missing or blank value(s) at row index(es) "
                         f"{_format_list(missing.tolist())} (0-based); fill in or drop those rows.")
    try:
        np.unique(labels)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in labels.tolist()})
        raise ValueError(f"{name} mixes value types {kinds}, which cannot be sorted into classes; "
                         f"make every label the same type (e.g. all strings).") from None
    return labels


def _check_class_sizes(counts: pd.Series, n_splits: int, unit: str) -> None:
    """Every class needs at least `n_splits` rows (or groups) to appear in every fold."""
    small = counts[counts < n_splits].sort_values()
    if small.empty:
        return
    listed = ", ".join(f"{_plain(cls)!r} ({int(n)} {unit if n != 1 else unit[:-1]})"
                       for cls, n in small.items())
    smallest = int(counts.min())
    if smallest >= 2:
        lower = f"lower n_splits to at most {smallest}, "
    else:
        lower = ""
    raise ValueError(
        f"n_splits={n_splits} needs at least {n_splits} {unit} in every class so each fold can "
        f"hold one for validation, but {len(small)} class(es) have fewer: {listed}. "
        f"To fix: {lower}merge or drop the class, or collect more data.")


def _check_groups(labels: np.ndarray, groups: np.ndarray) -> pd.Series:
    """Check one label per group; return the number of distinct groups per class."""
    missing = np.flatnonzero(_missing_mask(groups))
    if missing.size:
        raise ValueError(f"groups has {missing.size} missing or blank value(s) at row index(es) "
                         f"{_format_list(missing.tolist())} (0-based); give every row a group id.")
    try:
        np.unique(groups)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in groups.tolist()})
        raise ValueError(f"groups mixes value types {kinds}, which cannot be sorted; make every "
                         f"group id the same type (e.g. all strings).") from None
    frame = pd.DataFrame({"label": labels, "group": groups})
    n_labels = frame.groupby("group", sort=True)["label"].nunique(dropna=False)
    if (n_labels > 1).any():     # the labels of each mixed group, for the message (cheap: only those groups)
        mixed_rows = frame[frame["group"].isin(n_labels.index[n_labels > 1])]
        mixed = mixed_rows.groupby("group", sort=True)["label"].unique()
        shown = "; ".join(f"group {_plain(g)!r} has labels {sorted(v.tolist())}"
                          for g, v in list(mixed.items())[:_MAX_LISTED])
        more = f" ... ({len(mixed)} groups in all)" if len(mixed) > _MAX_LISTED else ""
        raise ValueError(
            f"stratified group folds need one label per group, but {len(mixed)} group(s) carry "
            f"more than one: {shown}{more}. Fix the labels, or split such groups into separate "
            f"group ids if their images are truly independent.")
    return frame.drop_duplicates("group")["label"].value_counts()


def assign_folds(labels, n_splits: int, seed: int, groups=None) -> np.ndarray:
    """Give every row a fold number, stratified by label and optionally grouped.

    Parameters
    ----------
    labels : array-like of shape (n_rows,)
        Class label of each row (strings or integers).
    n_splits : int
        Number of folds K (at least 2).
    seed : int
        Seed of the shuffle; the same inputs and seed always give the same folds.
    groups : array-like of shape (n_rows,), optional
        Group id of each row (e.g. person id). When given, all rows of a group
        land in the same fold, and each group must carry a single label.

    Returns
    -------
    folds : ndarray of shape (n_rows,), dtype int
        ``folds[i]`` is the fold in which row ``i`` is a validation row.

    Raises
    ------
    ValueError
        If n_splits < 2, lengths differ, a label (or group) is missing or
        blank, a group carries two labels, or a class has fewer rows (fewer
        groups, when grouped) than n_splits. The message names the offending
        rows, groups or classes.

    Notes
    -----
    Without groups this is :class:`sklearn.model_selection.StratifiedKFold`
    (``shuffle=True``): each class's count differs by at most one across
    folds. With groups it is :class:`~sklearn.model_selection.StratifiedGroupKFold`,
    a greedy heuristic whose class proportions hold only approximately.
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)):
        raise ValueError(f"n_splits must be an integer, got {n_splits!r} "
                         f"of type {type(n_splits).__name__}.")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2 (one fold to validate, at least one to "
                         f"train), got n_splits={n_splits}; set folds.n_splits to 2 or more.")
    labels = check_labels(labels)
    n_rows = labels.shape[0]
    if groups is not None:
        groups = _as_1d(groups, "groups")
        if groups.shape[0] != n_rows:
            raise ValueError(f"labels and groups must have the same length (one group per row), "
                             f"got {n_rows} labels and {groups.shape[0]} groups.")
        groups_per_class = _check_groups(labels, groups)
        _check_class_sizes(groups_per_class, n_splits, unit="groups")
        splitter = None
    else:
        _check_class_sizes(pd.Series(labels).value_counts(), n_splits, unit="rows")
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)

    # Integer codes keep scikit-learn's class handling independent of the label dtype
    # (an object array of ints is "unknown" to it); codes follow sorted label order,
    # so the split is the same as with the raw labels.
    _, codes = np.unique(labels, return_inverse=True)
    if groups is not None:
        _, groups = np.unique(groups, return_inverse=True)
    if splitter is None:    # StratifiedGroupKFold(shuffle=True)'s folds, computed faster (group_folds)
        folds = stratified_group_folds(codes, groups, n_splits, seed)
    else:
        folds = np.full(n_rows, -1, dtype=np.int64)
        for fold, (_, val_idx) in enumerate(splitter.split(np.zeros((n_rows, 1)), codes, groups)):
            folds[val_idx] = fold

    empty = [k for k in range(n_splits) if not np.any(folds == k)]
    n_groups = None if groups is None else int(groups.max()) + 1
    if empty:  # possible only with groups: the greedy split may leave a fold without any group
        raise ValueError(f"the grouped split left fold(s) {empty} without validation rows "
                         f"(n_splits={n_splits}, {n_groups} groups); lower n_splits "
                         f"or try another seed.")
    return folds


def _check_folds(folds, name: str = "folds") -> np.ndarray:
    """Validate a fold array: 1-D, non-empty, non-negative integers."""
    folds = np.asarray(folds)
    if folds.ndim != 1 or folds.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array with one fold per row, "
                         f"got shape {folds.shape}.")
    if not np.issubdtype(folds.dtype, np.integer):
        raise ValueError(f"{name} must hold integer fold numbers, got dtype {folds.dtype}; "
                         f"re-create the folds file.")
    if folds.min() < 0:
        bad = np.flatnonzero(folds < 0)
        raise ValueError(f"{name} must be non-negative, got negative values at row index(es) "
                         f"{_format_list(bad.tolist())}; re-create the folds file.")
    return folds


def fold_class_counts(labels, folds) -> pd.DataFrame:
    """Count validation rows per class and fold, for printing a table.

    Rows are the classes (sorted), columns ``fold_0 .. fold_{K-1}`` and
    ``total``, with K = ``max(folds) + 1`` so a fold with no rows shows zeros.

    >>> fold_class_counts(["a", "b", "a", "b"], [0, 0, 1, 1])  # doctest: +NORMALIZE_WHITESPACE
           fold_0  fold_1  total
    class
    a           1       1      2
    b           1       1      2
    """
    labels = check_labels(labels)
    folds = _check_folds(folds)
    if folds.shape[0] != labels.shape[0]:
        raise ValueError(f"labels and folds must have the same length (one fold per row), "
                         f"got {labels.shape[0]} labels and {folds.shape[0]} folds.")
    n_folds = int(folds.max()) + 1
    table = pd.crosstab(pd.Series(labels, name="class"), pd.Series(folds, name="fold"))
    table = table.reindex(columns=range(n_folds), fill_value=0).sort_index()
    table.columns = [f"fold_{k}" for k in range(n_folds)]
    table.columns.name = None
    table = table.astype(np.int64)
    table["total"] = table.sum(axis=1)
    return table


def training_indices_for_fold(folds: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions into (train_idx, val_idx) for one fold.

    ``val_idx`` are the rows whose fold equals `fold`, ``train_idx`` all the
    others; both are sorted positions into the training table.

    >>> train, val = training_indices_for_fold(np.array([0, 1, 0, 1]), 1)
    >>> train.tolist(), val.tolist()
    ([0, 2], [1, 3])
    """
    folds = _check_folds(folds)
    n_folds = int(folds.max()) + 1
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < n_folds:
        raise ValueError(f"fold must be an integer in 0..{n_folds - 1} (the folds file has "
                         f"{n_folds} folds), got {fold!r}.")
    is_val = folds == fold
    val_idx = np.flatnonzero(is_val)
    if val_idx.size == 0:
        raise ValueError(f"fold {fold} has no validation rows; re-create the folds file.")
    train_idx = np.flatnonzero(~is_val)
    if train_idx.size == 0:
        raise ValueError(f"fold {fold} holds every row, leaving nothing to train on; "
                         f"re-create the folds file with n_splits >= 2.")
    return train_idx, val_idx
