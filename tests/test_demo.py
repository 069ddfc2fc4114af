"""Tests for the embedded demo dataset (pipeline/demo.py)."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.competitions.demo import CLASS_NAMES, _class_group_counts, make_demo_dataset

SMALL = dict(scale=0.1, image_size=16)  # ~60 groups, 30 test images: well under a second


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One tiny dataset shared by the read-only tests (generation is the slow part)."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=3, **SMALL)


def test_returns_paths_and_exact_columns(small):
    assert set(small) == {"root", "train_csv", "sample_submission", "test_labels"}
    assert list(pd.read_csv(small["train_csv"]).columns) == ["image", "label", "group"]
    assert list(pd.read_csv(small["sample_submission"]).columns) == ["id", "label"]
    assert list(pd.read_csv(small["test_labels"]).columns) == ["id", "label"]
    for key in ("train_csv", "sample_submission", "test_labels"):
        assert small[key].parent == small["root"]


def test_train_images_exist_and_are_rgb_of_the_right_size(small):
    train = pd.read_csv(small["train_csv"])
    assert train["image"].str.match(r"^train/g\d{4}_\d\.png$").all()
    for rel in train["image"]:
        with Image.open(small["root"] / rel) as img:
            assert img.mode == "RGB" and img.size == (16, 16)


def test_labels_are_class_name_strings_and_every_class_is_present(small):
    train = pd.read_csv(small["train_csv"])
    truth = pd.read_csv(small["test_labels"])
    assert set(train["label"]) == set(CLASS_NAMES)
    assert set(truth["label"]) == set(CLASS_NAMES)
    assert CLASS_NAMES == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_groups_have_one_label_and_group_size_images(small):
    train = pd.read_csv(small["train_csv"])
    per_group = train.groupby("group").agg(n=("image", "size"), labels=("label", "nunique"))
    assert (per_group["n"] == 4).all()
    assert (per_group["labels"] == 1).all()
    assert train["group"].str.match(r"^g\d{4}$").all()
    # enough groups per class for a 5-fold stratified group split
    assert train.groupby("label")["group"].nunique().min() >= 6


def test_group_members_share_a_tint_but_differ(small):
    """Copies are shifted versions of the base in the same colours: alike, not identical."""
    train = pd.read_csv(small["train_csv"])
    group = train[train["group"] == train["group"].iloc[0]]["image"].tolist()
    pixels = [Image.open(small["root"] / rel).convert("RGB") for rel in group]
    corner_colours = {img.getpixel((0, 0)) for img in pixels}
    assert len({img.tobytes() for img in pixels}) == len(pixels)
    # the background corner is the group's tint (a shift fills with the same background)
    spread = max(max(c[i] for c in corner_colours) - min(c[i] for c in corner_colours) for i in range(3))
    assert spread < 60


def test_test_set_is_balanced_ordered_and_complete(small):
    sub = pd.read_csv(small["sample_submission"])
    truth = pd.read_csv(small["test_labels"])
    assert sub["id"].is_unique
    assert sub["id"].tolist() == truth["id"].tolist()
    assert (sub["label"] == CLASS_NAMES[0]).all()
    assert truth["label"].value_counts().tolist() == [3] * 10  # 30 * 0.1 per class
    assert sub["id"].tolist() != sorted(sub["id"])  # shuffled: the pipeline must keep this order
    for test_id in sub["id"]:
        with Image.open(small["root"] / "test" / f"{test_id}.png") as img:
            assert img.mode == "RGB" and img.size == (16, 16)
    assert len(list((small["root"] / "test").iterdir())) == len(sub)


def test_class_ratio_at_full_scale_is_at_least_ten():
    targets = load_digits().target
    for seed in (0, 1, 2):
        counts = _class_group_counts(targets, seed, test_per_class=30, scale=1.0, min_groups=6)
        assert set(counts) == set(CLASS_NAMES)
        assert max(counts.values()) / min(counts.values()) >= 10
        assert min(counts.values()) >= 6
    heads = {max(c, key=c.get) for c in (_class_group_counts(targets, s, 30, 1.0, 6) for s in range(6))}
    assert len(heads) > 1  # the head digit depends on the seed


def test_generator_uses_the_planned_counts(small):
    train = pd.read_csv(small["train_csv"])
    planned = _class_group_counts(load_digits().target, 3, test_per_class=30, scale=0.1, min_groups=6)
    assert train.groupby("label")["group"].nunique().to_dict() == planned


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, small):
    again = make_demo_dataset(tmp_path / "again", seed=3, **SMALL)
    other = make_demo_dataset(tmp_path / "other", seed=4, **SMALL)
    png = "train/g0000_1.png"
    for name in ("train.csv", "sample_submission.csv", "test_labels.csv", png):
        assert (again["root"] / name).read_bytes() == (small["root"] / name).read_bytes()
    assert (other["root"] / "train.csv").read_bytes() != (small["root"] / "train.csv").read_bytes()
    assert (other["root"] / png).read_bytes() != (small["root"] / png).read_bytes()


def test_rerun_replaces_existing_folder_completely(tmp_path):
    out = tmp_path / "data"
    make_demo_dataset(out, seed=0, **SMALL)
    (out / "stale.txt").write_text("left over")
    (out / "train" / "g9999_0.png").write_bytes(b"junk")
    make_demo_dataset(out, seed=1, **SMALL)
    assert not (out / "stale.txt").exists()
    assert not (out / "train" / "g9999_0.png").exists()
    assert (out / "train.csv").is_file()
    # no temporary or old siblings are left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_run_leaves_existing_folder_untouched(tmp_path, monkeypatch):
    out = tmp_path / "data"
    make_demo_dataset(out, seed=0, **SMALL)
    before = (out / "train.csv").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr("pipeline.competitions.demo._write_test", boom)
    with pytest.raises(RuntimeError):
        make_demo_dataset(out, seed=1, **SMALL)
    assert (out / "train.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_creates_missing_parent_folders(tmp_path):
    paths = make_demo_dataset(tmp_path / "a" / "b" / "demo", **SMALL)
    assert paths["train_csv"].is_file()


@pytest.mark.parametrize("kwargs, name", [
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(image_size=4), "image_size"),
    (dict(image_size=True), "image_size"),
    (dict(group_size=0), "group_size"),
    (dict(test_per_class=0), "test_per_class"),
    (dict(test_per_class=175), "test_per_class"),
    (dict(scale=0.0), "scale"),
    (dict(scale=1.5), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(scale="1"), "scale"),
    (dict(min_groups_per_class=0), "min_groups_per_class"),
])
def test_invalid_arguments_raise_value_error_naming_them(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_demo_dataset(tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()


def test_out_dir_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        make_demo_dataset(target, **SMALL)
