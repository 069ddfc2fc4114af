"""The leak detector: near-duplicates across folds are flagged, different images of one class are not, and
folds.auto_groups keeps every duplicate group in one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from pipeline.config import load_config
from pipeline.data.leaks import (duplicate_groups, rows_in_pairs, shift_tolerant_similarity, suspected_pairs)

SIZE = 16


def _smooth(rng, n):
    return gaussian_filter(rng.normal(size=(n, SIZE, SIZE, 3)), sigma=(0, 1.5, 1.5, 0))


def _class_images(rng, n):
    """`n` different images of one class: a shared template plus each image's own pattern (look-alikes)."""
    template = _smooth(rng, 1)
    return 0.7 * template + 0.5 * _smooth(rng, n)


def _copy(image, dy, dx, gain):
    """The same image moved by (dy, dx) pixels (edge filled) and re-exposed: a near-duplicate."""
    pad = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    return gain * pad[2 + dy:2 + dy + SIZE, 2 + dx:2 + dx + SIZE]


@pytest.fixture(scope="module")
def constructed():
    """Classes a (30 images) and b (20); images 0, 1 and 2 of class a each have a shifted, brighter copy."""
    rng = np.random.default_rng(0)
    a, b = _class_images(rng, 30), _class_images(rng, 20)
    copies = np.stack([_copy(a[0], 1, 0, 1.06), _copy(a[1], -1, 2, 0.95), _copy(a[2], 2, 1, 1.0)])
    thumbs = np.concatenate([a, b, copies])
    labels = np.array(["a"] * 30 + ["b"] * 20 + ["a"] * 3, dtype=object)
    duplicates = {(0, 50), (1, 51), (2, 52)}
    return thumbs, labels, duplicates


def _scan(thumbs, labels, folds):
    return suspected_pairs(lambda rows: shift_tolerant_similarity(thumbs[rows]), labels, folds, mads=6.0)


def _pairs(scan):
    return set(zip(scan.pairs["i"].tolist(), scan.pairs["j"].tolist()))


def test_duplicates_across_folds_are_flagged_and_look_alikes_are_not(constructed):
    thumbs, labels, duplicates = constructed
    folds = np.arange(len(labels)) % 5
    folds[50:] = [1, 2, 3]                       # each copy in another fold than its original (0, 1, 2)
    scan = _scan(thumbs, labels, folds)
    assert _pairs(scan) == duplicates
    assert scan.compared > 500                   # the look-alike reference: every same-class cross-fold pair
    assert rows_in_pairs(len(labels), scan.pairs).sum() == 6


def test_a_duplicate_in_the_same_fold_is_no_leak(constructed):
    thumbs, labels, duplicates = constructed
    folds = np.arange(len(labels)) % 5
    folds[50:] = [0, 1, 2]                       # each copy in its original's fold
    assert _pairs(_scan(thumbs, labels, folds)) == set()
    assert _pairs(_scan(thumbs, labels, None)) == duplicates   # before the split (auto_groups): all pairs


def test_a_shifted_copy_matches_only_with_shifts(constructed):
    thumbs, _, _ = constructed
    pair = thumbs[[1, 51]]                       # copy moved by (-1, 2) pixels
    assert shift_tolerant_similarity(pair, 2)[0, 1] > 0.99
    assert shift_tolerant_similarity(pair, 0)[0, 1] < 0.95


def test_duplicate_groups_join_pairs_and_given_groups():
    pairs = pd.DataFrame({"i": [0, 4], "j": [1, 6]})
    ids = duplicate_groups(7, pairs, groups=["g0", "g1", "g1", "g2", "g3", "g4", "g3"])
    # 0-1 (pair) + 1-2 (group g1); 4-6 (pair and group g3); 3 and 5 alone
    assert [sorted(np.flatnonzero(ids == k).tolist()) for k in np.unique(ids)] == [[0, 1, 2], [3], [4, 6], [5]]


def test_auto_groups_keep_each_demo_group_in_one_fold(tiny_cfg_dict):
    """The demo's groups withheld (data.group_column null): auto_groups finds them from the pixels."""
    from pipeline.data.fold_file import make_folds
    from pipeline.fileio import read_table

    def split_groups(auto):
        raw = dict(tiny_cfg_dict, data={**tiny_cfg_dict["data"], "group_column": None},
                   folds={**tiny_cfg_dict["folds"], "auto_groups": auto})
        make_folds(load_config(None, raw), log=lambda *_: None)
        folds = read_table(load_config(None, raw).folds_file)["fold"].to_numpy()
        truth = pd.read_csv(f"{raw['data']['train_csv']}")["group"]
        return int((pd.Series(folds).groupby(truth.to_numpy()).nunique() > 1).sum())

    assert split_groups(False) > 10               # without groups most demo groups span folds: leakage
    assert split_groups(True) == 0


def test_cv_rows_score_the_rows_with_a_cross_fold_duplicate_apart(tiny_cfg_dict):
    """The demo's groups withheld: the CV rows split the OOF rows by the scan's pairs, and leaks.csv lists them."""
    from pipeline.data.fold_file import make_folds
    from pipeline.predict.leak_rows import leak_cv_rows

    raw = dict(tiny_cfg_dict, data={**tiny_cfg_dict["data"], "group_column": None})
    cfg = load_config(None, raw)
    make_folds(cfg, log=lambda *_: None)
    folds = pd.read_csv(cfg.folds_file)
    classes = sorted(folds["label"].unique())
    oof = folds[["row", "label", "fold"]].sample(frac=1.0, random_state=0)   # rows found by `row`, not position
    for c in classes:
        oof[f"prob_{c}"] = float(c == classes[0])
    rows, notes = leak_cv_rows(cfg, oof, classes, log=lambda *_: None)
    pairs = pd.read_csv(cfg.exp_dir / "leaks.csv")
    leaked = np.zeros(len(folds), dtype=bool)
    leaked[pairs["row_a"]] = leaked[pairs["row_b"]] = True
    assert len(pairs) and (pairs["fold_a"] != pairs["fold_b"]).all()
    assert [r["part"] for r in rows] == ["OOF rows with a cross-fold near-duplicate", "OOF rows without one"]
    assert [r["rows"] for r in rows] == [leaked.sum(), (~leaked).sum()]
    truth, leaked = oof["label"].to_numpy(), leaked[oof["row"]]   # right on the rows with a duplicate only
    right = np.where(leaked, truth, np.where(truth == classes[0], classes[1], classes[0]))
    for c in classes:
        oof[f"prob_{c}"] = (right == c).astype(float)
    rows, _ = leak_cv_rows(cfg, oof, classes, log=lambda *_: None)
    assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] == 0.0
    assert f"{len(pairs)} suspected duplicate pair(s)" in notes[0]
