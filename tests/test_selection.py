"""A fold's rows and its kept epoch, without training: `pipeline.train.selection` on a written folds file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.train.selection import fold_data, is_better, oof_frame

LABELS = ["01", "10", "2", "01", "10", "2", "01", "10", "2"]
TRUE = ["01", "10", "2", "10", "10", "2", "01", "01", "2"]     # rows 3 and 7 are validated as another class
FOLDS = [0, 1, 2, 1, 2, 0, 2, 0, 1]


@pytest.fixture
def cfg(tmp_path):
    folds_dir = tmp_path / "folds"
    folds_dir.mkdir()
    pd.DataFrame({"row": range(9), "image": [f"img/{i}.png" for i in range(9)], "label": LABELS,
                  "group": [f"g{i}" for i in range(9)], "fold": FOLDS}).to_csv(folds_dir / "f.csv", index=False)
    train = pd.DataFrame({"image": [f"img/{i}.png" for i in range(9)], "label": LABELS, "true_label": TRUE})
    train.to_csv(tmp_path / "train.csv", index=False)
    return load_config(None, {"output_dir": str(tmp_path / "out"),
                              "folds": {"n_splits": 3, "name": "f", "dir": str(folds_dir)},
                              "data": {"train_csv": str(tmp_path / "train.csv"), "image_root": str(tmp_path),
                                       "true_label_column": "true_label"}})


def test_the_held_fold_validates_and_every_other_row_trains(cfg):
    for k in range(3):
        data = fold_data(cfg, k)
        assert data.val_idx.tolist() == [i for i, f in enumerate(FOLDS) if f == k]
        assert data.train_idx.tolist() == [i for i, f in enumerate(FOLDS) if f != k]


def test_training_targets_are_labels_and_validation_targets_are_true_labels(cfg):
    data = fold_data(cfg, 1)                      # fold 1 holds rows 1, 3, 8; row 3 is '01' trained, '10' true
    assert data.classes == ["01", "2", "10"]       # numeric order, text kept
    index = {c: i for i, c in enumerate(data.classes)}
    assert data.targets[data.train_idx].tolist() == [index[LABELS[i]] for i in data.train_idx]
    assert data.val_targets.tolist() == [index[TRUE[i]] for i in data.val_idx]
    assert data.val_targets.tolist() != [index[LABELS[i]] for i in data.val_idx]


def test_a_fold_outside_the_split_is_refused(cfg):
    for k in (-1, 3):
        with pytest.raises(ValueError, match=f"fold {k} does not exist: folds.n_splits is 3"):
            fold_data(cfg, k)


def test_oof_rows_carry_the_true_label_fold_and_one_probability_per_class(cfg):
    data = fold_data(cfg, 2)
    probs = np.arange(len(data.val_idx) * 3, dtype=float).reshape(-1, 3)
    frame = oof_frame(data, 2, probs)
    assert frame.columns.tolist() == ["row", "label", "fold", "prob_01", "prob_2", "prob_10"]
    assert frame["row"].tolist() == data.val_idx.tolist() and (frame["fold"] == 2).all()
    assert frame["label"].tolist() == [TRUE[i] for i in data.val_idx]
    np.testing.assert_array_equal(frame[["prob_01", "prob_2", "prob_10"]].to_numpy(), probs)


@pytest.mark.parametrize("value, best, monitor, better", [
    (0.5, None, "f1_macro", True), (0.7, 0.6, "f1_macro", True), (0.6, 0.6, "f1_macro", False),
    (0.5, 0.6, "f1_macro", False), (0.5, 0.6, "loss", True), (0.6, 0.6, "loss", False), (0.7, 0.6, "loss", False),
    (math.nan, None, "loss", False), (0.1, math.nan, "loss", True), (math.nan, 0.5, "f1_macro", False),
])
def test_an_epoch_is_kept_only_when_strictly_better_in_the_monitors_direction(value, best, monitor, better):
    assert is_better(value, best, monitor) is better
