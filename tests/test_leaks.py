"""The leak detector: near-duplicates across folds are flagged, different images of one class are not, and
folds.auto_groups keeps every duplicate group in one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import affine_transform, gaussian_filter, zoom

from pipeline.config import load_config
from pipeline.data.leak_align import aligned_distance
from pipeline.data.leak_features import FOURIER_POSES, MOMENT_POSES, fourier_descriptor, moment_descriptor, \
    nearest_in_poses
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


def test_a_subject_photographed_six_times_is_found_although_its_copies_are_its_nearest_neighbours():
    """Each image of the subject has five copies nearer than any look-alike, in a class of close look-alikes:
    the reference is measured outside the subject's suspected group, not at a fixed rank its copies fill."""
    rng = np.random.default_rng(4)
    others = _class_images(rng, 40, own=0.25)
    views = [_rephotographed(others[0], shift=s, scale=z, degrees=a, gain=g) for s, z, a, g in
             [((1.2, -0.4), 1.0, 0, 1.1), ((-0.8, 1.5), 1.05, 3, 0.9), ((0.3, 0.9), 0.96, -4, 1.05),
              ((-1.5, -1.1), 1.0, 2, 0.95), ((0.6, -1.7), 1.08, 0, 1.0)]]
    images = np.concatenate([others, np.stack(views)]).astype(np.float32)
    group = [0, *range(40, 45)]
    expected = {(a, b) for a in group for b in group if a < b}
    assert _pairs(suspected_pairs(images, np.array(["a"] * 45, dtype=object))) == expected


@pytest.mark.parametrize("describe, poses", [(fourier_descriptor, FOURIER_POSES), (moment_descriptor, MOMENT_POSES)])
def test_a_zoomed_in_rotated_copy_is_near_its_original_among_the_originals_poses(describe, poses):
    """Zoomed in by 20 % and turned by 8°, a copy is far from its original as it is (among 200 look-alikes);
    the original indexed zoomed in and rotated is near it."""
    rng = np.random.default_rng(4)
    images = _class_images(rng, 200)
    images = np.concatenate([images, _rephotographed(images[0], scale=1.2, degrees=8)[None]]).astype(np.float32)
    assert 0 in nearest_in_poses(images, describe, poses, 3)[-1]


def test_nearest_in_poses_lists_distinct_other_images_nearest_first():
    rng = np.random.default_rng(5)
    images = _class_images(rng, 12).astype(np.float32)
    near = nearest_in_poses(images, fourier_descriptor, FOURIER_POSES, 4)
    assert near.shape == (12, 4)
    assert all(len(set(row)) == 4 and k not in row for k, row in enumerate(near.tolist()))
    descriptor = fourier_descriptor(images)
    first = np.array([np.argsort(((descriptor - d) ** 2).sum(1))[1] for d in descriptor])
    # The nearest in any pose is at least as near as the nearest unposed: an image's nearest unposed
    # neighbour is among its neighbours unless several posed ones are nearer still.
    assert np.mean([f in row for f, row in zip(first, near.tolist())]) > 0.9
    assert (nearest_in_poses(images[:3], fourier_descriptor, FOURIER_POSES, 5) >= 0).sum(1).tolist() == [2, 2, 2]


def test_a_magnified_copy_is_matched_at_its_own_blur():
    """A crop zoomed back 1.33x is softer than its original; matched at the blur the zoom gives it, it is about
    as close to its original as a copy moved by a fraction of a pixel, not several times farther."""
    rng = np.random.default_rng(0)
    image = gaussian_filter(rng.normal(size=(SIZE, SIZE)), 1.5) + 0.7 * gaussian_filter(rng.normal(size=(SIZE, SIZE)), 0.6)
    images = np.stack([image, _cropped(image, 3, 3, 3, 3), _rephotographed(image, shift=(0.6, -0.4))])
    zoomed, shifted = aligned_distance(images.astype(np.float32), [0, 0], [1, 2])
    assert zoomed < 3 * shifted


def test_the_decision_does_not_depend_on_the_folds(constructed):
    """The scan with folds reports exactly the cross-fold part of the scan without them."""
    images, labels, _ = constructed
    folds = np.arange(len(labels)) % 3
    everything = suspected_pairs(images, labels).pairs
    crossing = everything[folds[everything["i"]] != folds[everything["j"]]].reset_index(drop=True)
    pd.testing.assert_frame_equal(suspected_pairs(images, labels, folds).pairs, crossing)


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
    """The demo's groups withheld: the CV rows split the OOF rows by the scan's pairs, and leaks.csv lists them.
    Ten true groups are moved whole into one fold each, so some rows have no copy in another fold."""
    from pipeline.data.fold_file import make_folds
    from pipeline.results.leak_rows import leak_cv_rows

    raw = dict(tiny_cfg_dict, data={**tiny_cfg_dict["data"], "group_column": None})
    cfg = load_config(None, raw)
    make_folds(cfg, log=lambda *_: None)
    folds = pd.read_csv(cfg.folds_file)
    truth = pd.read_csv(raw["data"]["train_csv"])["group"].to_numpy()[folds["row"]]
    for group in pd.unique(truth)[:10]:
        folds.loc[truth == group, "fold"] = folds.loc[truth == group, "fold"].iloc[0]
    folds.to_csv(cfg.folds_file, index=False)
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
    assert _implied_pairs(flagged, flagged, 8).tolist() == [[0, 2]]
    assert _implied_pairs(flagged, np.array([[0, 1], [1, 2], [0, 2]]), 8).tolist() == []


def test_the_probe_says_how_much_a_model_that_memorises_gains_from_the_copies(tmp_path, tiny_cfg, monkeypatch):
    """Rows with a copy in another fold are answered by their copy, rows without one are hard (the classes
    differ little): the probe scores all rows above the rows without a copy, and says by how much. Split with
    each copy in its original's fold, there is nothing to say."""
    from PIL import Image

    from pipeline.data import leak_scan
    from pipeline.data.leak_scan import probe_note, scan_and_probe
    rng = np.random.default_rng(7)
    images = np.concatenate([_class_images(rng, 40, own=4.0) for _ in range(3)])      # classes barely differ
    copies = np.stack([_rephotographed(images[k], shift=(1.0, -0.5), gain=1.05) for k in range(0, 120, 4)])
    images = np.concatenate([images, copies])
    images = (255 * (images - images.min()) / (images.max() - images.min())).astype(np.uint8)
    paths = [tmp_path / f"{k}.png" for k in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    labels = [f"c{k // 40}" for k in range(120)] + [f"c{k // 40}" for k in range(0, 120, 4)]
    table = pd.DataFrame({"image": [str(p) for p in paths], "label": labels})
    folds = np.arange(150) % 3
    folds[120:] = (folds[0:120:4] + 1) % 3                   # each copy in the fold after its original's
    scan, probe = scan_and_probe(tiny_cfg, table, folds)
    assert probe["rows_with_copy"] == rows_in_pairs(150, scan.pairs).sum() == 60
    assert probe["all"] > probe["without_copy"] + 0.1
    # all rows: the rows with a copy and the rows without one, each by its share
    assert probe["all"] == pytest.approx((60 * probe["with_copy"] + 90 * probe["without_copy"]) / 150)
    note = probe_note(probe)
    assert f"{probe['all']:.3f} accuracy out of fold on all rows and {probe['without_copy']:.3f}" in note
    assert f"inflated by up to about {probe['all'] - probe['without_copy']:+.3f} accuracy" in note
    monkeypatch.setattr(leak_scan, "_PROBE_ROWS", 25)          # a large data set: each part probed on a sample
    sampled = scan_and_probe(tiny_cfg, table, folds)[1]
    assert sampled["rows_with_copy"] == 60 and sampled["all"] > sampled["without_copy"] + 0.1
    folds[120:] = folds[0:120:4]                                 # each copy in its original's fold
    assert scan_and_probe(tiny_cfg, table, folds)[1] is None and probe_note(None) == ""
