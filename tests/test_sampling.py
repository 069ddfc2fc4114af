import math
from collections import Counter

import numpy as np
import pytest

from pipeline.data.sampling import SAMPLING_METHODS, balanced_sample_weights, epoch_rows, oversample_indices

LABELS = np.array(["a"] * 50 + ["b"] * 12 + ["c"] * 3)


def _counts(labels, indices):
    return Counter(labels[indices].tolist())


def test_sampling_methods_match_config_choices():
    assert SAMPLING_METHODS == ("none", "balanced", "oversample")


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.77, 1.0])
def test_each_class_reaches_target_and_majority_unchanged(ratio):
    idx = oversample_indices(LABELS, ratio, seed=0)
    counts = _counts(LABELS, idx)
    target = math.ceil(round(ratio * 50, 9))
    assert counts["a"] == 50  # majority untouched
    for cls, n in Counter(LABELS.tolist()).items():
        # classes below target reach it exactly; the others keep their size
        assert counts[cls] == max(n, target)


def test_ratio_one_equalises_all_classes():
    counts = _counts(LABELS, oversample_indices(LABELS, 1.0, seed=0))
    assert counts == {"a": 50, "b": 50, "c": 50}


def test_float_round_off_does_not_add_a_row():
    labels = np.array([0] * 10 + [1])
    counts = _counts(labels, oversample_indices(labels, 0.3, seed=0))
    assert counts[1] == 3  # ceil(0.3 * 10) is 3, although 0.3 * 10 == 3.0000000000000004


def test_every_original_index_kept_and_only_input_indices():
    idx = oversample_indices(LABELS, 0.8, seed=4)
    counts = np.bincount(idx, minlength=len(LABELS))
    assert len(counts) == len(LABELS)  # no index beyond the input
    assert (counts >= 1).all()  # every original row present
    assert idx.min() >= 0
    assert np.all(np.diff(idx) >= 0)  # documented: sorted
    # duplicates come from the minority classes only
    assert (counts[LABELS == "a"] == 1).all()


@pytest.mark.parametrize("method", ["oversample", "balanced", "none"])
def test_the_trainers_loader_draws_training_rows_only(tiny_cfg_dict, tmp_path, method):
    """The loader `fit` trains on: one epoch's draws are training rows of the fold, never validation rows."""
    import torch

    from pipeline.config import load_config
    from pipeline.data.fold_file import make_folds
    from pipeline.train.loop import training_loader
    from pipeline.train.selection import fold_data

    cfg = load_config(None, {**tiny_cfg_dict, "output_dir": str(tmp_path / "out"),
                             "sampling": {"method": method, "target_ratio": 1.0}})
    make_folds(cfg, log=lambda *_: None)
    for fold in range(cfg.folds.n_splits):
        data = fold_data(cfg, fold)
        loader = training_loader(cfg, data, torch.device("cpu"), epoch=0)   # data.cache off: paths visible
        row_of = {path: i for i, path in enumerate(data.table["image"])}
        order = list(loader.sampler)                                  # dataset positions of one epoch
        drawn = np.array([row_of[loader.dataset.paths[j]] for j in order])
        assert not np.isin(drawn, data.val_idx).any()                 # validation is never drawn
        classes = [data.classes.index(v) for v in data.table["label"].to_numpy()[drawn]]
        assert [int(loader.dataset.targets[j]) for j in order] == classes   # trained on the training labels
        counts = Counter(classes)
        if method == "none":
            assert sorted(drawn.tolist()) == data.train_idx.tolist()    # each training row once
        elif method == "oversample":
            assert set(drawn.tolist()) == set(data.train_idx.tolist()) and len(drawn) > len(data.train_idx)
            assert len(set(counts.values())) == 1                      # ratio 1.0: every class as large as the largest
        else:
            assert len(drawn) == len(data.train_idx) and len(counts) == len(data.classes)


def test_deterministic_for_a_seed():
    a = oversample_indices(LABELS, 0.9, seed=11)
    b = oversample_indices(LABELS, 0.9, seed=11)
    c = oversample_indices(LABELS, 0.9, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_balanced_classes_are_left_alone():
    labels = np.array(["x", "y"] * 10)
    np.testing.assert_array_equal(oversample_indices(labels, 1.0, seed=0), np.arange(20))


@pytest.mark.parametrize("ratio", [0, -0.5, 1.01, float("nan"), float("inf"), "0.5", None, True])
def test_invalid_ratio_names_the_key(ratio):
    with pytest.raises(ValueError, match=r"sampling\.target_ratio") as err:
        oversample_indices(LABELS, ratio, seed=0)
    assert repr(ratio) in str(err.value)


def test_empty_labels_rejected():
    with pytest.raises(ValueError, match="empty"):
        oversample_indices([], 0.5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        balanced_sample_weights(np.array([]))


def test_balanced_weights_equal_per_class_and_sum_to_one():
    weights = balanced_sample_weights(LABELS)
    assert weights.shape == LABELS.shape
    assert abs(weights.sum() - 1.0) < 1e-12
    for cls in ("a", "b", "c"):
        assert abs(weights[LABELS == cls].sum() - 1 / 3) < 1e-12
    # a minority row weighs more than a majority row
    assert weights[LABELS == "c"][0] > weights[LABELS == "a"][0]


def test_balanced_weights_drive_weighted_random_sampler():
    torch = pytest.importorskip("torch")
    weights = balanced_sample_weights(LABELS)
    sampler = torch.utils.data.WeightedRandomSampler(
        weights.tolist(), num_samples=3000, replacement=True,
        generator=torch.Generator().manual_seed(0))
    drawn = Counter(LABELS[list(sampler)].tolist())
    for cls in ("a", "b", "c"):
        assert 850 < drawn[cls] < 1150  # about 1000 each, vs 50:12:3 in the data



def test_oversampling_tops_up_exactly_and_draws_with_replacement_from_a_tiny_class():
    assert oversample_indices(["a"] * 4 + ["b"], 0.5, seed=0).tolist() == [0, 1, 2, 3, 4, 4]   # deficit of one
    rows = oversample_indices(["a"] * 10 + ["b"], 1.0, seed=0)          # one member, nine copies needed
    assert rows.tolist() == list(range(10)) + [10] * 10


def test_the_epochs_rows_depend_on_the_seed_only():
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 2
    first = epoch_rows(labels, "oversample", 1.0, seed=7)
    assert np.array_equal(first, epoch_rows(labels, "oversample", 1.0, seed=7))
    assert not np.array_equal(first, epoch_rows(labels, "oversample", 1.0, seed=8))
