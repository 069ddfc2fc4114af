"""`make init DATA=<folder>`: a config per common layout that reads back as written, and one question per
ambiguity naming the flag that settles it. Offline here: no pretrained weights in any cache (fixture)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import stages
from pipeline.config import load_config
from pipeline.data.tables import read_test_table, read_train_table
from pipeline.tools.detect import InitOptions, Question
from pipeline.tools.init import init_config
from tests.conftest import REPO, cache_weights
from tests.test_layouts import CLASSES, folders_dataset, ids_dataset, image


@pytest.fixture(autouse=True)
def offline(offline_caches):
    """Every test here offline, with empty weight caches (conftest.offline_caches)."""
    return offline_caches


def run_init(tmp_path: Path, root: Path, **opts):
    """init into tmp_path/configs/c.yaml; (config read back, printed lines)."""
    lines: list[str] = []
    out = init_config(root, tmp_path / "configs" / "c.yaml", opts=InitOptions(**opts), log=lines.append)
    raw = load_config(out).model_dump()
    raw["output_dir"] = str(tmp_path / "outputs")      # the stages' files in tmp_path, as tests do
    return load_config(None, raw), "\n".join(lines)


def asks(tmp_path: Path, root: Path, **opts) -> str:
    """The question init stops with (and nothing written)."""
    with pytest.raises(Question) as info:
        init_config(root, tmp_path / "configs" / "c.yaml", opts=InitOptions(**opts), log=lambda line: None)
    assert not (tmp_path / "configs").exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def _listing(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


# ---- one config per layout ----------------------------------------------------------------------

def test_ids_in_a_csv_and_train_id_jpg(tmp_path):
    root = tmp_path / "comp"
    ids = ids_dataset(root)
    before = _listing(root)
    cfg, said = run_init(tmp_path, root)
    d = cfg.data
    assert (d.layout, d.image_column, d.train_image_template, d.label_column, d.group_column) == \
        ("csv", "image_id", "train/{id}.jpg", "species", None)
    assert (d.id_column, d.target_column, d.test_image_template) == ("image_id", "species", "test/{id}.jpg")
    table = read_train_table(cfg)
    assert table["image"].tolist()[0] == str(root / "train" / f"{ids[0]}.jpg")
    assert sorted(set(table["label"])) == sorted(CLASSES)               # 'Rosa canina', '007', 'NA' as written
    assert "the sample submission's column 'species' is also in the train CSV" in said
    assert "its values are ids of images in train/" in said
    assert _listing(root) == before                                     # only read


def test_class_folders(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root)
    cfg, said = run_init(tmp_path, root)
    d = cfg.data
    assert (d.layout, d.class_folders, d.id_column, d.test_image_template) == ("folders", "train", "id", "test/{id}.png")
    stages.resolve(cfg)
    assert sorted(set(read_train_table(cfg)["label"])) == sorted(CLASSES)
    assert "train/ holds 3 folders of images" in said


def test_image_paths_in_the_csv(tmp_path):
    root = tmp_path / "comp"
    rows = [(f"images/p{k}.png", CLASSES[k % 3]) for k in range(12)]
    for k, (path, _) in enumerate(rows):
        image(root / path, seed=k)
    (root / "train.csv").write_text("path,kind\n" + "".join(f"{p},{c}\n" for p, c in rows))
    for k in range(3):
        image(root / "test_images" / f"q{k}.png", seed=50 + k)
    (root / "sample_submission.csv").write_text("image_name,kind\n" + "".join(f"q{k}.png,NA\n" for k in range(3)))
    cfg, said = run_init(tmp_path, root)
    d = cfg.data
    assert (d.image_column, d.train_image_template, d.label_column) == ("path", None, "kind")
    assert (d.id_column, d.test_image_template) == ("image_name", "test_images/{id}")
    assert read_test_table(cfg)["image"].tolist() == [str(root / "test_images" / f"q{k}.png") for k in range(3)]
    assert "its values are image paths under" in said


def test_the_mask_competition(tmp_path):
    from pipeline.competitions.mask import make_mask_sample

    root = make_mask_sample(tmp_path / "mask", n_people=12, n_eval=4, image_size=(48, 64))
    before = _listing(root)
    cfg, said = run_init(tmp_path, root)
    assert cfg.mask.enabled and not cfg.mask.sample and cfg.model.heads == "single"
    assert cfg.data.image_root == str(root) and cfg.data.sample_submission == str(root / "eval" / "info.csv")
    assert not Path(cfg.data.train_csv).resolve().is_relative_to(root.resolve())   # written outside the data
    assert cfg.data.test_labels is None
    assert cfg.folds.n_splits == 2                    # 12 people: 2 per gender x age group
    assert "the mask competition" in said
    assert _listing(root) == before


def test_the_data_decides_size_scaling_sampling_and_folds(tmp_path):
    root = tmp_path / "comp"
    for k in range(12):                          # 16-bit, 600x520, one class rare
        cls = "rare" if k < 3 else "common"
        path = root / "train" / cls / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((520, 600), 1000 * k, dtype=np.uint16)).save(path)
    image(root / "test" / "t0.png")
    cfg, said = run_init(tmp_path, root, id_column="file")
    assert cfg.augment.image_size == 224 and "much larger than 224" in said
    assert cfg.data.high_bit_depth == "percentile"
    assert cfg.sampling.method == "oversample" and "(3x)" in said
    assert cfg.folds.n_splits == 3                                      # the rare class has 3 images
    assert (cfg.model.name, cfg.model.pretrained) == ("resnet10t", False)


def test_pretrained_weights_in_the_cache_are_used(tmp_path, offline):
    root = tmp_path / "comp"
    folders_dataset(root)
    cache_weights(offline, "resnet18")
    cfg, said = run_init(tmp_path, root)
    assert (cfg.model.name, cfg.model.pretrained) == ("resnet18", True)
    assert "its pretrained weights are in the local cache" in said


# ---- ambiguities: one question each ---------------------------------------------------------------

def _csv_dataset(root: Path, header: str, rows: list[str], sample_header: str = "image_id,species") -> None:
    for k in range(len(rows)):
        image(root / "train" / f"i{k}.png", seed=k)
    (root / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    image(root / "test" / "t0.png")
    (root / "sample_submission.csv").write_text(f"{sample_header}\nt0,x\n")


def test_two_label_readings_ask_for_label(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,species,colour", [f"i{k},{'ab'[k % 2]},{'xyz'[k % 3]}" for k in range(12)],
                 sample_header="image_id,prediction")
    assert asks(tmp_path, root) == ("which column is the label: species or colour? ('species' is named like one) "
                                    "settle it with --label species or --label colour")
    cfg, _ = run_init(tmp_path, root, label="colour")
    assert cfg.data.label_column == "colour"


def test_a_repeating_column_asks_for_group(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,species,person_id", [f"i{k},{'ab'[k // 6]},p{k // 3}" for k in range(12)])
    question = asks(tmp_path, root)
    assert question.startswith("'person_id': 4 values over 12 rows") and question.endswith(
        "settle it with --group person_id or --no-group")
    assert run_init(tmp_path, root, group="person_id")[0].data.group_column == "person_id"
    (tmp_path / "configs" / "c.yaml").unlink()
    assert run_init(tmp_path, root, no_group=True)[0].data.group_column is None


def test_a_column_mixing_labels_is_no_group(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,species,site", [f"i{k},{'ab'[k // 6]},s{k % 3}" for k in range(12)])
    cfg, said = run_init(tmp_path, root)
    assert cfg.data.group_column is None and "'site' repeats but mixes labels within a value" in said


def test_a_csv_beside_class_folders_asks_for_layout(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root)
    (root / "train.csv").write_text("image,label\ntrain/NA/0.png,NA\n")
    assert asks(tmp_path, root).endswith("settle it with --layout csv or --layout folders")
    assert run_init(tmp_path, root, layout="folders")[0].data.layout == "folders"


def test_two_image_columns_ask_for_image_column(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,copy,species", [f"i{k},i{k},{'ab'[k % 2]}" for k in range(12)])
    assert asks(tmp_path, root) == ("which column of train.csv names the images: image_id or copy? settle it with "
                                    "--image-column image_id or --image-column copy")


def test_two_train_csvs_ask_for_train_csv(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,species", [f"i{k},{'ab'[k % 2]}" for k in range(12)])
    os.rename(root / "train.csv", root / "a.csv")
    (root / "b.csv").write_text((root / "a.csv").read_text())
    assert asks(tmp_path, root).endswith("settle it with --train-csv a.csv or --train-csv b.csv")
    assert run_init(tmp_path, root, train_csv="b.csv")[0].data.train_csv == str(root / "b.csv")


def test_two_sample_submissions_ask_for_sample(tmp_path):
    root = tmp_path / "comp"
    _csv_dataset(root, "image_id,species", [f"i{k},{'ab'[k % 2]}" for k in range(12)])
    (root / "sample_submission_v2.csv").write_text((root / "sample_submission.csv").read_text())
    assert asks(tmp_path, root).endswith("--sample sample_submission.csv or --sample sample_submission_v2.csv")


def test_no_sample_submission_asks_for_the_id_column(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root, sample=False)
    assert asks(tmp_path, root) == ("no sample submission: the submission will be one row per image of test/ "
                                    "(3 images), columns <id>,label, the id being the file name; name the id "
                                    "column with --id-column NAME")
    cfg, _ = run_init(tmp_path, root, id_column="file")
    stages.resolve(cfg)
    assert Path(cfg.data.sample_submission).read_text() == "file,label\nt0.png,\nt1.png,\nt2.png,\n"


# ---- what init never does -------------------------------------------------------------------------

def test_an_existing_config_is_kept_unless_forced(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root)
    out = tmp_path / "configs" / "c.yaml"
    out.parent.mkdir()
    out.write_text("mine\n")
    with pytest.raises(ValueError, match="c.yaml exists: init keeps it; pass --force"):
        init_config(root, out, log=lambda line: None)
    assert out.read_text() == "mine\n"
    init_config(root, out, force=True, log=lambda line: None)
    assert load_config(out).data.layout == "folders"


def test_a_config_inside_the_data_folder_is_refused(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root)
    with pytest.raises(ValueError, match="inside the data folder"):
        init_config(root, root / "c.yaml", log=lambda line: None)
    assert not (root / "c.yaml").exists()


def test_make_init_needs_data_and_prints_each_decision(tmp_path):
    root = tmp_path / "comp"
    folders_dataset(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    make = lambda *a: subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "init", *a],  # noqa: E731
                                     capture_output=True, text=True, env=env)
    usage = make()
    assert usage.returncode == 2 and "usage: make init DATA=<folder>" in usage.stderr
    done = make(f"DATA={root}", f"OUT={tmp_path / 'c.yaml'}")
    assert done.returncode == 0, done.stderr
    assert "[init] data.layout = folders: train/ holds 3 folders" in done.stdout
    assert load_config(tmp_path / "c.yaml").data.layout == "folders"
