"""Layouts beside a CSV of paths: ids and a template (extension found by looking), class folders, no sample.

Each goes through the pipeline's own readers and the data check, and (class folders) Make's staleness.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import stages
from pipeline.config import ConfigError, load_config
from pipeline.data.check import check_data
from pipeline.data.tables import DataError, read_test_table, read_train_table
from tests.conftest import REPO, write_config

CLASSES = ("Rosa canina", "007", "NA")     # spaces, leading zeros, a text pandas would read as missing


def image(path: Path, seed: int = 0, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def ids_dataset(root: Path, ext: str = ".jpg") -> list[str]:
    """train.csv `image_id,species` (ids without folder or extension), train/<id><ext>, test/<id><ext>, a sample."""
    ids = [f"{c[:2].strip()}{k}" for c in CLASSES for k in range(4)]
    for i, name in enumerate(ids):
        image(root / "train" / f"{name}{ext}", seed=i)
    labels = [c for c in CLASSES for _ in range(4)]
    (root / "train.csv").write_text("image_id,species\n" + "".join(f"{i},{c}\n" for i, c in zip(ids, labels)))
    for k in range(3):
        image(root / "test" / f"t{k}{ext}", seed=100 + k)
    (root / "sample_submission.csv").write_text("image_id,species\n" + "".join(f"t{k},007\n" for k in range(3)))
    return ids


def folders_dataset(root: Path, per_class: int = 4, sample: bool = True) -> None:
    """train/<class>/<k>.png for CLASSES, test/t<k>.png, and (sample) a sample submission of the test stems."""
    for c, cls in enumerate(CLASSES):
        for k in range(per_class):
            image(root / "train" / cls / f"{k}.png", seed=10 * c + k)
    for k in range(3):
        image(root / "test" / f"t{k}.png", seed=100 + k)
    if sample:
        (root / "sample_submission.csv").write_text("id,label\n" + "".join(f"t{k},NA\n" for k in range(3)))


def data_keys(root: Path, **keys) -> dict:
    """A `data:` section for a dataset under `root` (the test side through test/{id}.png and its sample)."""
    return {"image_root": str(root), "sample_submission": str(root / "sample_submission.csv"),
            "test_image_template": "test/{id}.png", **keys}


def ids_keys(root: Path, template: str, test_template: str) -> dict:
    """The `data:` section of `ids_dataset`: the id column through `template`, the sample's ids through `test_template`."""
    return data_keys(root, train_csv=str(root / "train.csv"), image_column="image_id", label_column="species",
                     train_image_template=template, id_column="image_id", target_column="species",
                     test_image_template=test_template)


def config(tmp_path: Path, data: dict, **sections):
    return load_config(None, {"output_dir": str(tmp_path / "outputs"), "experiment": "x",
                              "folds": {"n_splits": 2, "dir": str(tmp_path / "folds")},
                              "model": {"name": "test_resnet"}, "train": {"epochs": 1, "device": "cpu"},
                              "data": data, **sections})


def _listing(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


# ---- ids and a template --------------------------------------------------------------------------

def test_ids_and_a_template_name_each_image_and_keep_the_label_text(tmp_path):
    root = tmp_path / "data"
    ids = ids_dataset(root)
    cfg = config(tmp_path, ids_keys(root, "train/{id}.jpg", "test/{id}.jpg"))
    table = read_train_table(cfg)
    assert table["image"].tolist() == [str(root / "train" / f"{i}.jpg") for i in ids]
    assert table["label"].tolist() == [c for c in CLASSES for _ in range(4)]      # exact text, 'NA' included
    assert table["source"].tolist() == ids                                       # the folds file keeps the ids
    report = check_data(cfg, n_jobs=1)
    assert report.ok, report.format()
    assert report.images_checked == 12 + 3


def test_a_template_ending_in_the_id_finds_each_extension_by_looking(tmp_path):
    root = tmp_path / "data"
    ids = ids_dataset(root)
    os.rename(root / "train" / f"{ids[0]}.jpg", root / "train" / f"{ids[0]}.PNG")   # another extension, upper case
    (root / "train" / f"{ids[0]}.txt").write_text("notes")                           # not an image: not a match
    cfg = config(tmp_path, ids_keys(root, "train/{id}", "test/{id}"))
    table = read_train_table(cfg)
    assert table["image"].tolist()[:2] == [str(root / "train" / f"{ids[0]}.PNG"), str(root / "train" / f"{ids[1]}.jpg")]
    assert read_test_table(cfg)["image"].tolist() == [str(root / "test" / f"t{k}.jpg") for k in range(3)]
    assert check_data(cfg, n_jobs=1).ok


def test_several_files_or_none_for_an_id_is_an_error_naming_the_id(tmp_path):
    root = tmp_path / "data"
    ids = ids_dataset(root)
    image(root / "train" / f"{ids[1]}.png")                     # ids[1].jpg and ids[1].png: which one?
    keys = ids_keys(root, "train/{id}", "test/{id}")
    with pytest.raises(DataError, match=rf"train.csv line 3: id '{ids[1]}': 2 images in .* \({ids[1]}.jpg, "
                                        rf"{ids[1]}.png\); keep one, or write the extension"):
        read_train_table(config(tmp_path, keys))
    os.remove(root / "train" / f"{ids[5]}.jpg")                # and one id with no image at all
    report = check_data(config(tmp_path, keys), n_jobs=1)
    found = {(p.kind, p.row) for p in report.problems}
    assert found == {("ambiguous-image", 3), ("missing-image", 7)}, report.format()   # both, in one report
    missing = next(p for p in report.problems if p.kind == "missing-image")
    assert f"id '{ids[5]}': no image {ids[5]}.<ext>" in missing.message


def test_a_looked_up_image_that_links_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "data"
    ids = ids_dataset(root)
    os.remove(root / "train" / f"{ids[2]}.jpg")
    os.symlink(image(tmp_path / "secret.jpg"), root / "train" / f"{ids[2]}.jpg")
    keys = ids_keys(root, "train/{id}", "test/{id}")
    with pytest.raises(DataError, match="leads out of the data root"):
        read_train_table(config(tmp_path, keys))
    kinds = [p.kind for p in check_data(config(tmp_path, keys), n_jobs=1).problems]
    assert kinds == ["path-escapes-root"]


# ---- class folders ----------------------------------------------------------------------------------

def folders_config(tmp_path, root, **keys):
    return config(tmp_path, data_keys(root, layout="folders", **keys))


def test_class_folders_train_on_the_folder_names_exactly(tmp_path):
    root = tmp_path / "data"
    folders_dataset(root)
    (root / "train" / "007" / ".DS_Store").write_text("x")        # hidden and non-image files are not images
    (root / "train" / "007" / "readme.txt").write_text("x")
    (root / "train" / ".cache").mkdir()                           # a hidden folder is not a class
    before = _listing(root)
    cfg = folders_config(tmp_path, root)
    stages.resolve(cfg)
    table = read_train_table(cfg)
    assert sorted(set(table["label"])) == sorted(CLASSES) and len(table) == 12
    assert table["image"].tolist()[:2] == [str(root / "train" / "007" / "0.png"), str(root / "train" / "007" / "1.png")]
    assert Path(cfg.data.train_csv).parent == tmp_path / "outputs" / "lists"    # written outside the data folder
    assert _listing(root) == before                                           # the data folder untouched
    report = check_data(cfg, n_jobs=1)
    assert report.ok and report.train_rows == 12, report.format()


def test_class_folders_take_no_train_csv_and_no_columns(tmp_path):
    root = tmp_path / "data"
    folders_dataset(root)
    with pytest.raises(ConfigError, match="data.train_csv: data.layout: folders lists the class folders itself"):
        folders_config(tmp_path, root, train_csv=str(root / "train.csv"))
    with pytest.raises(ConfigError, match="data.layout: folders has no columns"):
        folders_config(tmp_path, root, group_column="person")


def test_an_empty_class_folder_stops_resolve_naming_it(tmp_path):
    root = tmp_path / "data"
    folders_dataset(root)
    (root / "train" / "empty one").mkdir()
    with pytest.raises(ValueError, match=r"1 class folder\(s\) of .*train hold no image \('empty one'\)"):
        stages.resolve(folders_config(tmp_path, root))


def test_a_folder_of_split_folders_is_named_as_the_likely_mistake(tmp_path):
    root = tmp_path / "data"
    folders_dataset(root)
    with pytest.raises(ValueError, match=r"'train' holds folders: is .*train the folder of classes"):
        stages.resolve(folders_config(tmp_path, root, class_folders="."))


def test_without_a_sample_submission_the_test_folder_is_listed_by_file_name(tmp_path):
    root = tmp_path / "data"
    folders_dataset(root, sample=False)
    image(root / "test" / "._t0.png")                             # macOS litter: not a test image
    cfg = folders_config(tmp_path, root, sample_submission=None, test_image_template="test/{id}", id_column="file")
    stages.resolve(cfg)
    assert Path(cfg.data.sample_submission).read_text() == "file,label\nt0.png,\nt1.png,\nt2.png,\n"
    assert read_test_table(cfg)["image"].tolist() == [str(root / "test" / f"t{k}.png") for k in range(3)]
    with pytest.raises(ConfigError, match="data.sample_submission: null writes a sample submission whose ids are "
                                          "the test images' file names: name its id column"):
        folders_config(tmp_path, root, sample_submission=None, test_image_template="test/{id}")


@pytest.mark.slow
def test_a_new_image_in_a_class_folder_makes_make_retrain(tmp_path):
    """Make is asked (-q) whether the weights are up to date: yes after `make folds` and weights newer than it,
    no once a class folder gains an image; -n shows it would re-fold and retrain every fold."""
    root = tmp_path / "data"
    folders_dataset(root)
    raw = {"output_dir": str(tmp_path / "outputs"), "experiment": "x",
           "folds": {"n_splits": 2, "dir": str(tmp_path / "folds")}, "model": {"name": "test_resnet"},
           "train": {"epochs": 1, "device": "cpu"}, "data": data_keys(root, layout="folders")}
    cfg_path = write_config(tmp_path / "folders.yaml", raw)
    make = lambda *args: subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args,  # noqa: E731
                                         f"CONFIG={cfg_path}"], capture_output=True, text=True,
                                        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")})
    assert make("folds").returncode == 0
    for k in range(2):                                  # weights newer than everything they depend on
        weights = tmp_path / "outputs" / "x" / f"fold_{k}" / "weights.safetensors"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"")
    assert make("-q", "train").returncode == 0
    image(root / "train" / "NA" / "9.png", seed=99)
    assert make("-q", "train").returncode != 0
    planned = make("-n", "train").stdout
    trains = [line for line in planned.splitlines() if " -m pipeline train " in line]
    assert "-m pipeline folds " in planned and [t.split()[-1] for t in trains] == ["0", "1"], planned
    listed = load_config(tmp_path / "outputs" / "x" / "config.yaml").data.train_csv
    assert "train/NA/9.png,NA" in Path(listed).read_text()
