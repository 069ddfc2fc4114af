"""The leak detector: near-duplicates across folds are flagged, different images of one class are not, and
folds.auto_groups keeps every duplicate group in one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import affine_transform, gaussian_filter, zoom

from pipeline.config import load_config
from pipeline.data.leak_align import aligned_distance
from pipeline.data.leaks import duplicate_groups, rows_in_pairs, suspected_pairs

SIZE = 24


def _smooth(rng, n):
    return gaussian_filter(rng.normal(size=(n, SIZE, SIZE)), sigma=(0, 1.5, 1.5))


def _class_images(rng, n, own=0.5):
    """`n` different images of one class: a shared template plus each image's own pattern (look-alikes)."""
    return 0.7 * _smooth(rng, 1) + own * _smooth(rng, n)


def _rephotographed(image, shift=(0.0, 0.0), scale=1.0, degrees=0.0, gain=1.0):
    """The same image moved (sub-pixel), zoomed and rotated about its centre, and re-exposed."""
    angle = np.deg2rad(degrees)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = np.array([SIZE - 1, SIZE - 1]) / 2
    return gain * affine_transform(image, matrix, offset=centre - matrix @ centre - np.asarray(shift), order=3,
                                   mode="nearest")


def _cropped(image, top, bottom, left, right):
    """A crop (pixels off each side) resized back to the full frame."""
    kept = image[top:SIZE - bottom, left:SIZE - right]
    return zoom(kept, (SIZE / kept.shape[0], SIZE / kept.shape[1]), order=3)


@pytest.fixture(scope="module")
def constructed():
    """Classes a (30 images) and b (20); image 0 of class a has two copies, images 1 and 2 one each."""
    rng = np.random.default_rng(0)
    a, b = _class_images(rng, 30), _class_images(rng, 20)
    copies = np.stack([_rephotographed(a[0], shift=(1.4, -0.6), gain=1.1),
                       _rephotographed(a[1], scale=1.08, degrees=6, gain=0.9),
                       _cropped(a[2], 1, 2, 2, 1),
                       _rephotographed(a[0], shift=(-0.7, 1.8), gain=0.92)])
    images = np.concatenate([a, b, copies]).astype(np.float32)
    labels = np.array(["a"] * 30 + ["b"] * 20 + ["a"] * 4, dtype=object)
    duplicates = {(0, 50), (1, 51), (2, 52), (0, 53), (50, 53)}
    return images, labels, duplicates


def _pairs(scan):
    return set(zip(scan.pairs["i"].tolist(), scan.pairs["j"].tolist()))


def test_duplicates_across_folds_are_flagged_and_look_alikes_are_not(constructed):
    images, labels, duplicates = constructed
    folds = np.arange(len(labels)) % 5
    folds[50:] = [1, 2, 3, 4]                    # each copy in another fold than its original and each other
    scan = suspected_pairs(images, labels, folds)
    assert _pairs(scan) == duplicates
    assert rows_in_pairs(len(labels), scan.pairs).sum() == 7     # 0, 1, 2 and the four copies
    assert (scan.pairs["score"] > 1 / scan.ratio).all()


def test_a_duplicate_in_the_same_fold_is_no_leak(constructed):
    images, labels, duplicates = constructed
    folds = np.arange(len(labels)) % 5
    folds[50:] = [0, 1, 2, 0]                    # each copy in its original's fold
    assert _pairs(suspected_pairs(images, labels, folds)) == set()
    assert _pairs(suspected_pairs(images, labels, None)) == duplicates   # before the split: all pairs


def test_a_class_of_near_identical_subjects_is_not_flagged_but_its_copy_is():
    """Plain T-shirts: every image of the class is close to every other, so closeness alone is no copy."""
    rng = np.random.default_rng(1)
    plain = _class_images(rng, 40, own=0.08)
    images = np.concatenate([plain, _rephotographed(plain[5], shift=(0.8, 1.3), gain=1.05)[None]])
    scan = suspected_pairs(images.astype(np.float32), np.array(["plain"] * 41, dtype=object))
    assert _pairs(scan) == {(5, 40)}


def test_alignment_undoes_the_change_a_look_alike_cannot_be_aligned_away(constructed):
    images, _, _ = constructed
    copies = aligned_distance(images, [0, 1, 2, 0], [50, 51, 52, 53])
    look_alikes = aligned_distance(images, [0, 1, 2, 3], [3, 4, 5, 6])
    assert copies.max() < 0.1 * look_alikes.min()


def test_the_retired_leak_key_is_refused_with_what_replaced_it(tiny_cfg_dict):
    from pipeline.config import ConfigError
    raw = dict(tiny_cfg_dict, folds={**tiny_cfg_dict["folds"], "leak_mads": 6})
    with pytest.raises(ConfigError, match="folds.leak_ratio"):
        load_config(None, raw)


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
    from pipeline.results.leak_rows import leak_cv_rows

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
    rows, notes = leak_cv_rows(cfg, oof, classes, log=lambda *_: None)
    assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] == 0.0
    assert f"against {rows[1]['f1_macro']:.3f} on the rows without a copy" in notes[0]
    assert "The CV is likely inflated by about +" in notes[0]
    assert f"{len(pairs)} suspected duplicate pair(s)" in notes[0]


def test_two_suspected_pairs_sharing_an_image_propose_the_pair_they_imply():
    """a-b and b-c flagged: a-c is aligned too (the two copies of one subject), unless already compared."""
    from pipeline.data.leaks import _implied_pairs
    flagged = np.array([[0, 1], [1, 2], [5, 7]])
    assert _implied_pairs(flagged, flagged).tolist() == [[0, 2]]
    assert _implied_pairs(flagged, np.array([[0, 1], [1, 2], [0, 2]])).tolist() == []
