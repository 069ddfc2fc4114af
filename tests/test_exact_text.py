"""Labels, ids and group ids are text from the CSVs to the submission: nothing is re-typed.

A competition's labels may look like numbers (`01`, `10`, `1e3`), booleans (`true`) or
missing values (`NA`, `None`); its ids may be zero-padded (`0001`). The pipeline must
write each back exactly as the train CSV and the sample submission spell it.
"""

import numpy as np
import pytest
from PIL import Image

from pipeline.data.check import check_data
from pipeline.config import load_config
from pipeline.data.tables import class_list, read_test_table, read_train_table
from pipeline.fileio import read_text_csv
from pipeline.data.fold_file import make_folds
from pipeline.results.ensemble_stage import ensemble
from pipeline.predict.fold import predict_fold
from pipeline.results.submission import validate_for_config, validate_submission
from pipeline.train.loop import fit

QUIET = dict(log=lambda *_: None)
# Every one of these is a different class, written back exactly as here.
LABELS = ["01", "1", "10", "1e3", "true", "NA", "None"]
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (20, 250, 250), (250, 20, 250),
           (128, 128, 128)]


def _png(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_text_dataset(root, groups_per_class=3, images_per_group=2):
    """Train rows with awkward labels and zero-padded group ids; a sample submission with padded ids."""
    rows, n = [], 0
    for c, (label, colour) in enumerate(zip(LABELS, COLOURS)):
        for g in range(groups_per_class):
            group = f"{c * 10 + g:06d}"                       # 000000, 000041, ...
            for k in range(images_per_group):
                rel = f"train/{group}_{k}.png"
                _png(root / rel, colour, n)
                rows.append((rel, label, group))
                n += 1
    (root / "train.csv").write_text("image,label,group\n" + "".join(f"{r},{lab},{g}\n" for r, lab, g in rows))
    ids = [f"{i:04d}" for i in (1, 7, 10, 42, 100)]
    for i, colour in zip(ids, COLOURS):
        _png(root / "test" / f"{i}.png", colour, 1000 + int(i))
    (root / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},01\n" for i in ids))
    return ids


@pytest.fixture
def text_cfg(tmp_path, tiny_cfg_dict):
    data = tmp_path / "data"
    ids = make_text_dataset(data)
    d = dict(tiny_cfg_dict, output_dir=str(tmp_path / "out"))
    d["data"] = dict(d["data"], demo=False, train_csv=str(data / "train.csv"), image_root=str(data),
                     sample_submission=str(data / "sample_submission.csv"), test_labels=None)
    d["augment"] = dict(d["augment"], image_size=16)
    return load_config(None, d), ids


def test_train_table_keeps_every_label_and_group_as_written(text_cfg):
    cfg, _ = text_cfg
    table = read_train_table(cfg)
    assert set(table["label"]) == set(LABELS)
    assert "000041" in set(table["group"]) and "41" not in set(table["group"])
    assert class_list(table["label"]) == sorted(LABELS)   # not all integers: text order


def test_numeric_labels_sort_as_numbers_but_stay_text():
    assert class_list(["10", "2", "02", "1"]) == ["1", "02", "2", "10"]   # equal numbers: text order
    assert class_list([3, 1]) == ["1", "3"]


def test_test_ids_keep_their_zeros_when_finding_images(text_cfg):
    cfg, ids = text_cfg
    test = read_test_table(cfg)
    assert test["id"].tolist() == ids
    assert [p.rsplit("/", 1)[-1] for p in test["image"]] == [f"{i}.png" for i in ids]


def test_na_and_none_are_labels_for_the_data_check(text_cfg):
    cfg, _ = text_cfg
    report = check_data(cfg, n_jobs=1)
    assert report.ok, report.format()
    train_csv = cfg.data.train_csv
    text = open(train_csv).read().replace(",NA,", ",,", 1)   # one truly blank label
    open(train_csv, "w").write(text)
    report = check_data(cfg, n_jobs=1)
    assert report.kinds() == {"blank-label": 1}


def test_labels_and_ids_reach_the_submission_exactly(text_cfg):
    cfg, ids = text_cfg
    make_folds(cfg, **QUIET)
    folds = read_text_csv(cfg.folds_file)
    assert "000041" in set(folds["group"]) and set(folds["label"]) == set(LABELS)
    for k in range(cfg.folds.n_splits):
        fit(cfg, k, **QUIET)
        predict_fold(cfg, k, **QUIET)
        assert read_text_csv(cfg.fold_dir(k) / "test_probs.csv")["id"].tolist() == ids
        assert set(read_text_csv(cfg.fold_dir(k) / "oof.csv")["label"]) <= set(LABELS)
    sub_path = ensemble(cfg, **QUIET)
    sub = read_text_csv(sub_path)
    assert sub["id"].tolist() == ids
    assert set(sub["label"]) <= set(LABELS)
    assert validate_for_config(cfg) == sub_path
    # A label that is a training label's number but not its text is not a class.
    sub.loc[0, "label"] = "1000.0"
    sub.to_csv(sub_path, index=False)
    problems = validate_submission(sub_path, cfg.data.sample_submission, "id", "label", class_list(LABELS))
    assert any("1000.0" in p for p in problems)
