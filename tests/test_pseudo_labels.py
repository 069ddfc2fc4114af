"""Pseudo-labels: the list built from a finished experiment's votes, and where its rows go in a fold.

A written source experiment (its config, fold sidecars, test probabilities and submission; no
images, no models) and a 9-row train table with 3 folds: enough to run the real `pseudo` stage
and `fold_data`.
"""

from __future__ import annotations

import builtins
import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError, config_to_dict, load_config
from pipeline.data.pseudo_labels import pseudo_labels_path
from pipeline.fileio import file_sha256
from pipeline.results.pseudo import build_pseudo_labels, select_pseudo
from pipeline.train.selection import fold_data

CLASSES = ["01", "10", "2"]          # the columns of FOLD_PROBS
MODEL_CLASSES = ["01", "2", "10"]    # the classes in the model's order (numeric: pipeline.data.tables.class_list)
LABELS = ["01", "10", "2", "01", "10", "2", "01", "10", "2"]
FOLDS = [0, 1, 2, 1, 2, 0, 2, 0, 1]
TEST_IDS = ["t0", "t1", "t2", "t3"]
# Each fold's test probabilities (classes 01, 10, 2); their mean is what the source voted:
# t0 -> 01 at 0.95, t1 -> unsure (0.5), t2 -> 10 at 0.9, t3 -> 01 at 0.85.
FOLD_PROBS = [
    [[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.0, 0.9, 0.1], [0.85, 0.15, 0.0]],
    [[0.9, 0.1, 0.0], [0.3, 0.5, 0.2], [0.1, 0.9, 0.0], [0.85, 0.0, 0.15]],
    [[0.95, 0.0, 0.05], [0.7, 0.1, 0.2], [0.05, 0.9, 0.05], [0.85, 0.15, 0.0]],
]


def _write_source(cfg_dict: dict, root) -> None:
    """A finished experiment 'src' on the same folds: what `make train ensemble` leaves behind."""
    src = load_config(None, {**cfg_dict, "experiment": "src", "pseudo": {}})
    src.exp_dir.mkdir(parents=True)
    (src.exp_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(src)))
    for k, probs in enumerate(FOLD_PROBS):
        src.fold_dir(k).mkdir()
        (src.fold_dir(k) / "weights.json").write_text(json.dumps(
            {"classes": MODEL_CLASSES, "folds_sha256": file_sha256(src.folds_file)}))
        frame = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES])
        frame.insert(0, "id", TEST_IDS)
        frame.to_csv(src.fold_dir(k) / "test_probs.csv", index=False)
    pd.DataFrame({"id": TEST_IDS, "label": ["01", "01", "10", "01"]}).to_csv(src.exp_dir / "submission.csv",
                                                                            index=False)


@pytest.fixture
def cfg_dict(tmp_path):
    folds_dir = tmp_path / "folds"
    folds_dir.mkdir()
    pd.DataFrame({"row": range(9), "image": [f"img/{i}.png" for i in range(9)], "label": LABELS,
                  "group": [f"g{i}" for i in range(9)], "fold": FOLDS}).to_csv(folds_dir / "f.csv", index=False)
    pd.DataFrame({"image": [f"img/{i}.png" for i in range(9)], "label": LABELS}).to_csv(tmp_path / "train.csv",
                                                                                        index=False)
    pd.DataFrame({"id": TEST_IDS, "label": "01"}).to_csv(tmp_path / "sample.csv", index=False)
    # Held-back test labels that disagree with every vote: reading them would change the list.
    pd.DataFrame({"id": TEST_IDS, "label": ["2", "2", "2", "2"]}).to_csv(tmp_path / "test_labels.csv", index=False)
    cfg = {"experiment": "round2", "output_dir": str(tmp_path / "out"),
           "folds": {"n_splits": 3, "name": "f", "dir": str(folds_dir)},
           "data": {"train_csv": str(tmp_path / "train.csv"), "image_root": str(tmp_path),
                    "sample_submission": str(tmp_path / "sample.csv"), "test_labels": str(tmp_path / "test_labels.csv")},
           "pseudo": {"source": "src", "threshold": 0.8}}
    _write_source(cfg, tmp_path)
    return cfg


def _pseudo_list(cfg) -> pd.DataFrame:
    build_pseudo_labels(cfg, log=lambda _: None)
    return pd.read_csv(pseudo_labels_path(cfg), dtype={"id": str, "label": str})


def test_the_list_holds_the_confident_test_images_with_the_sources_voted_labels(cfg_dict):
    frame = _pseudo_list(load_config(None, cfg_dict))
    assert frame["id"].tolist() == ["t0", "t2", "t3"]           # t1 (0.5) is below the threshold
    assert frame["label"].tolist() == ["01", "10", "01"]
    assert frame["confidence"].round(4).tolist() == [0.95, 0.9, 0.85]
    assert frame["image"].str.endswith(".png").all()


def test_the_cap_per_class_keeps_each_class_s_most_confident_images(cfg_dict):
    cfg_dict["pseudo"]["max_per_class"] = 0.25                  # 0.25 x 4 test images: one per class
    frame = _pseudo_list(load_config(None, cfg_dict))
    assert frame["id"].tolist() == ["t0", "t2"]                 # t3, the less confident '01', is dropped


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_select_pseudo_holds_the_threshold_and_the_cap_on_random_votes(cap):
    probs = np.random.default_rng(cap).dirichlet(np.full(4, 0.3), size=200)
    keep = select_pseudo(probs, 0.6, cap)
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    assert (confidence[keep] >= 0.6).all()
    assert np.bincount(label[keep], minlength=4).max() <= cap
    for c in range(4):   # what a class keeps is never less confident than what it dropped
        mine = (label == c) & (confidence >= 0.6)
        kept = np.zeros(len(probs), bool)
        kept[keep] = True
        if (mine & ~kept).any():
            assert confidence[mine & kept].min() >= confidence[mine & ~kept].max()
            assert (mine & kept).sum() == cap


def test_building_the_list_never_opens_the_test_labels(cfg_dict, monkeypatch):
    cfg = load_config(None, cfg_dict)
    labels_file = str(cfg.data.test_labels)
    real_open, real_io_open = builtins.open, io.open

    def guarded(opener):
        def open_(file, *args, **kwargs):
            if str(file) == labels_file:
                raise AssertionError(f"the pseudo stage opened the test labels {file}")
            return opener(file, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(io, "open", guarded(real_io_open))
    frame = _pseudo_list(cfg)
    assert frame["label"].tolist() == ["01", "10", "01"]        # the votes; the test labels say '2' everywhere


def test_a_pseudo_labelled_image_trains_in_every_fold_and_validates_in_none(cfg_dict):
    cfg = load_config(None, cfg_dict)
    plain = load_config(None, {**cfg_dict, "pseudo": {}})
    listed = _pseudo_list(cfg)
    for k in range(3):
        data, before = fold_data(cfg, k), fold_data(plain, k)
        assert data.val_idx.tolist() == before.val_idx.tolist()
        images = data.table["image"].to_numpy()
        assert not set(images[data.val_idx]) & set(listed["image"])
        pseudo_rows = data.train_idx[len(before.train_idx):]
        assert data.train_idx[:len(before.train_idx)].tolist() == before.train_idx.tolist()
        assert images[pseudo_rows].tolist() == listed["image"].tolist()
        assert [data.classes[t] for t in data.targets[pseudo_rows]] == ["01", "10", "01"]


def test_training_without_the_list_is_refused_naming_it(cfg_dict):
    cfg = load_config(None, cfg_dict)
    with pytest.raises(FileNotFoundError, match="pseudo_labels.csv"):
        fold_data(cfg, 0)


def test_a_source_on_other_folds_is_refused(cfg_dict, tmp_path):
    sidecar = tmp_path / "out" / "src" / "fold_1" / "weights.json"
    sidecar.write_text(json.dumps({"classes": MODEL_CLASSES, "folds_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="fold_1/weights.json was trained on other folds"):
        build_pseudo_labels(load_config(None, cfg_dict), log=lambda _: None)


def test_an_unfinished_source_is_refused_naming_the_missing_file(cfg_dict, tmp_path):
    (tmp_path / "out" / "src" / "submission.csv").unlink()
    with pytest.raises(FileNotFoundError, match="src/submission.csv is missing"):
        build_pseudo_labels(load_config(None, cfg_dict), log=lambda _: None)


def test_a_source_with_other_classes_is_refused(cfg_dict, tmp_path):
    pd.DataFrame({"image": [f"img/{i}.png" for i in range(9)], "label": ["01", "10", "3"] * 3}).to_csv(
        tmp_path / "train.csv", index=False)
    with pytest.raises(ConfigError, match="same classes"):
        build_pseudo_labels(load_config(None, cfg_dict), log=lambda _: None)


def test_the_source_rounds_score_row_reads_its_probability_submission_by_id(cfg_dict, tmp_path):
    """A source whose competition asks for one probability column per class: `make score`'s round-1 row is
    scored from the probabilities its submission holds (ROC-AUC and log-loss too), each row matched by id."""
    from sklearn.metrics import roc_auc_score

    from pipeline.results.pseudo import source_score_rows

    pd.DataFrame({"id": TEST_IDS, **{c: "0.3333" for c in MODEL_CLASSES}}).to_csv(tmp_path / "sample.csv", index=False)
    written = pd.DataFrame([[0.7, 0.1, 0.2], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]], columns=MODEL_CLASSES)
    written.insert(0, "id", TEST_IDS)
    written.iloc[::-1].to_csv(tmp_path / "out" / "src" / "submission.csv", index=False)   # rows in another order
    cfg = load_config(None, cfg_dict)
    y = np.array([0, 1, 2, 2])                       # classes in the model's order, for TEST_IDS
    [row] = source_score_rows(cfg, TEST_IDS, y, MODEL_CLASSES)
    probs = written[MODEL_CLASSES].to_numpy()
    assert row["model"] == "round 1 (src): submission.csv"
    assert row["accuracy"] == 0.75                   # argmax 0, 1, 2, 1 against 0, 1, 2, 2
    assert row["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert row["log_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(4), y])), abs=1e-9)
