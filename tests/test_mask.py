"""Tests for the mask-competition layout (pipeline/mask.py) and configs/mask.yaml."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.config import load_config
from pipeline.data.tables import read_test_table, read_train_table
from pipeline.data.folds import assign_folds
from pipeline.competitions.mask import make_mask_sample, prepare_mask_data
from pipeline.competitions.mask.heads import multihead_log_probs_18, multihead_to_18
from pipeline.competitions.mask.labels import PHOTO_STEMS, TRAIN_COLUMNS, age_group, decode_class, encode_class

REPO = Path(__file__).resolve().parents[1]
TINY = (96, 128)  # width, height: a quarter of the real 384x512


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The synthetic sample at tiny size, made once (24 people, 6 test images)."""
    return make_mask_sample(tmp_path_factory.mktemp("mask") / "mask_sample", seed=0, image_size=TINY, n_eval=6)


@pytest.fixture(scope="module")
def sample_table(sample, tmp_path_factory) -> pd.DataFrame:
    out = prepare_mask_data(sample, tmp_path_factory.mktemp("prep") / "train.csv")
    return pd.read_csv(out, dtype={"group": str})


# ----------------------------------------------------------------------------- hand-made layouts

def write_layout(root: Path, people, exts=None, junk=()) -> Path:
    """A minimal competition layout with empty photo files (prepare_mask_data never decodes them).

    `people`: (id, gender, age) tuples; `exts`: {id: {stem: ext}} overrides of ".jpg";
    `junk`: (id, file name) extra files.
    """
    images = root / "train" / "images"
    rows = []
    for pid, gender, age in people:
        path = f"{pid}_{gender}_Asian_{age}"
        (images / path).mkdir(parents=True)
        for stem in PHOTO_STEMS:
            (images / path / f"{stem}{(exts or {}).get(pid, {}).get(stem, '.jpg')}").write_bytes(b"")
        rows.append({"id": pid, "gender": gender, "race": "Asian", "age": age, "path": path})
    for pid, name in junk:
        folder = next(images.glob(f"{pid}_*"))
        (folder / name).write_bytes(b"junk")
    pd.DataFrame(rows).to_csv(root / "train" / "train.csv", index=False)
    return root


PEOPLE = [("000001", "male", 25), ("000002", "female", 61), ("000003", "male", 45),
          ("000020", "female", 58), ("000021", "male", 59)]


def prepared(root: Path, **kwargs) -> pd.DataFrame:
    out = prepare_mask_data(root, root / "pipeline_train.csv", **kwargs)
    return pd.read_csv(out, dtype={"group": str})


def row(table: pd.DataFrame, pid: str, stem: str) -> pd.Series:
    hit = table[(table["group"] == pid) & table["image"].str.contains(f"/{stem}\\.")]
    assert len(hit) == 1, (pid, stem)
    return hit.iloc[0]


# ----------------------------------------------------------------------------- encoding


def test_encoding_hand_picked_cases():
    assert encode_class(0, 0, age_group(25)) == 0        # wear, male, 25
    assert encode_class(2, 1, age_group(61)) == 17       # not wearing, female, 61: 2*6 + 1*3 + 2
    assert encode_class(1, 0, age_group(45)) == 7        # incorrect, male, 45
    assert [decode_class(c) for c in (0, 7, 17)] == [(0, 0, 0), (1, 0, 1), (2, 1, 2)]
    assert sorted(encode_class(m, g, a) for m in range(3) for g in range(2) for a in range(3)) == list(range(18))
    assert [age_group(a) for a in (29, 30, 59, 60)] == [0, 1, 1, 2]
    assert age_group(58, cutoff=58) == 2 and age_group(58) == 1
    for bad in (lambda: encode_class(3, 0, 0), lambda: decode_class(18), lambda: age_group(-1),
                lambda: age_group(40, cutoff=30)):
        with pytest.raises(ValueError):
            bad()


def test_labels_of_a_hand_made_layout(tmp_path):
    table = prepared(write_layout(tmp_path, PEOPLE))
    assert list(table.columns) == TRAIN_COLUMNS
    assert len(table) == 7 * len(PEOPLE)
    assert row(table, "000001", "mask1")["label"] == 0
    assert row(table, "000002", "normal")["label"] == 17
    assert row(table, "000003", "incorrect_mask")["label"] == 7
    assert row(table, "000003", "mask1")["image"] == "train/images/000003_male_Asian_45/mask1.jpg"
    for pid, gender, age in PEOPLE:
        person = table[table["group"] == pid]
        g = 0 if gender == "male" else 1
        assert person["mask"].tolist() == [0, 0, 0, 0, 0, 1, 2]
        assert person["label"].tolist() == [encode_class(m, g, age_group(age)) for m in [0] * 5 + [1, 2]]
        assert (person["label"] == person["true_label"]).all()
        assert (person["person_label"] == g * 3 + age_group(age)).all()


def test_hidden_files_are_skipped_and_mixed_extensions_found(tmp_path):
    exts = {"000001": {"mask1": ".JPG", "mask2": ".jpeg", "incorrect_mask": ".png", "normal": ".PNG"}}
    junk = [("000001", "._mask1.jpg"), ("000001", "._normal.png"), ("000001", ".DS_Store"),
            ("000002", "notes.txt")]
    said = []
    table = prepared(write_layout(tmp_path, PEOPLE, exts=exts, junk=junk), log=said.append)
    assert len(said) == 1 and said[0].startswith("[mask] skipped 4 hidden or non-image file(s)")
    assert "._mask1.jpg" in said[0]
    images = table.loc[table["group"] == "000001", "image"].tolist()
    assert [Path(p).name for p in images] == ["mask1.JPG", "mask2.jpeg", "mask3.jpg", "mask4.jpg", "mask5.jpg",
                                              "incorrect_mask.png", "normal.PNG"]
    assert not table["image"].str.contains(r"/\.").any()
    assert len(table) == 7 * len(PEOPLE)


def test_the_age_cutoff_changes_only_the_training_label(tmp_path):
    root = write_layout(tmp_path, PEOPLE)
    base = prepared(root)
    moved = prepared(root, age_cutoff=58)
    person = moved[moved["group"] == "000020"]       # 58 years old, female
    assert (person["label"] % 3 == 2).all()          # trained as ">= 60"
    assert (person["true_label"] % 3 == 1).all()     # scored as 30-59
    assert (person["age_group"] == 1).all() and (person["person_label"] == 4).all()
    for col in ("true_label", "age_group", "person_label", "image", "group"):
        assert moved[col].equals(base[col]), col
    # the 59-year-old moves too; nobody else does
    changed = set(moved.loc[moved["label"] != base["label"], "group"])
    assert changed == {"000020", "000021"}


def test_relabel_file_applies_before_labels(tmp_path):
    root = write_layout(tmp_path, PEOPLE)
    base = prepared(root)
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("id,field,value\n"
                       "000001,gender,female\n"
                       "# comment lines and blank lines are skipped\n"
                       "\n"
                       "3,age,61\n"                      # lost leading zeros still match 000003
                       "000020/incorrect_mask,mask,not_wear\n"
                       "000020/normal,mask,1\n")
    fixed = prepared(root, relabel_file=relabel)
    flipped = fixed["group"] == "000001"
    assert (fixed.loc[flipped, "label"] == base.loc[flipped, "label"] + 3).all()     # all 7 photos
    assert (fixed.loc[flipped, "true_label"] == base.loc[flipped, "true_label"] + 3).all()
    assert (fixed.loc[flipped, "gender"] == 1).all()
    aged = fixed["group"] == "000003"
    assert (fixed.loc[aged, "age"] == 61).all() and (fixed.loc[aged, "label"] % 3 == 2).all()
    assert row(fixed, "000020", "incorrect_mask")["mask"] == 2
    assert row(fixed, "000020", "normal")["mask"] == 1
    assert row(fixed, "000020", "normal")["label"] == encode_class(1, 1, 1)
    untouched = fixed["group"].isin(["000002", "000021"])
    assert fixed[untouched].equals(base[untouched])


@pytest.mark.parametrize("line, message", [
    ("999999,gender,male", "id '999999' is not in"),
    ("000001,race,Asian", "unknown field 'race'"),
    ("000001,gender,robot", "gender value 'robot'"),
    ("000001,age,forty", "age value 'forty'"),
    ("000001,mask,wear", "needs a photo id"),
    ("000001/mask9,mask,wear", "photo 'mask9'"),
    ("000001/normal,mask,sometimes", "mask value 'sometimes'"),
    ("000001/normal,gender,male", "unknown field 'gender' for a photo id"),
    ("000001,age,33", "differently on line 2"),
])
def test_bad_relabel_lines_name_the_file_and_line(tmp_path, line, message):
    root = write_layout(tmp_path, PEOPLE)
    relabel = tmp_path / "fixes.csv"
    relabel.write_text(f"id,field,value\n000001,age,30\n{line}\n")
    with pytest.raises(ValueError, match=message) as err:
        prepare_mask_data(root, tmp_path / "out.csv", relabel_file=relabel)
    assert "fixes.csv line 3" in str(err.value)
    assert not (tmp_path / "out.csv").exists()


def test_relabel_file_without_its_columns_is_an_error(tmp_path):
    root = write_layout(tmp_path, PEOPLE)
    relabel = tmp_path / "fixes.csv"
    relabel.write_text("person,what\n000001,male\n")
    with pytest.raises(ValueError, match=r"fixes.csv line 1: missing column\(s\) \['id', 'field', 'value'\]"):
        prepare_mask_data(root, tmp_path / "out.csv", relabel_file=relabel)


# ----------------------------------------------------------------------------- layout errors

def test_missing_photo_names_the_folder(tmp_path):
    root = write_layout(tmp_path, PEOPLE)
    (root / "train/images/000002_female_Asian_61/incorrect_mask.jpg").unlink()
    (root / "train/images/000002_female_Asian_61/._incorrect_mask.jpg").write_bytes(b"junk")  # does not count
    with pytest.raises(ValueError, match=r"000002_female_Asian_61: missing photo\(s\) \['incorrect_mask'\]"):
        prepare_mask_data(root, tmp_path / "out.csv")


def test_missing_folder_and_duplicate_photo_name_the_folder(tmp_path):
    root = write_layout(tmp_path, PEOPLE)
    (root / "train/images/000001_male_Asian_25/mask3.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"000001_male_Asian_25: two files for photo 'mask3'"):
        prepare_mask_data(root, tmp_path / "out.csv")
    (root / "train/images/000001_male_Asian_25/mask3.png").unlink()
    (root / "train/images/000003_male_Asian_45").rename(root / "train/images/elsewhere")
    with pytest.raises(ValueError, match=r"person folder missing: .*000003_male_Asian_45 .*line 4"):
        prepare_mask_data(root, tmp_path / "out.csv")


@pytest.mark.parametrize("column, value, message", [
    ("gender", "unknown", r"line 3 \(id 000002\): gender 'unknown'"),
    ("age", "4x", r"line 3 \(id 000002\): age '4x'"),
    ("age", "45.5", r"line 3 \(id 000002\): age '45.5'"),
])
def test_bad_person_values_name_the_row(tmp_path, column, value, message):
    root = write_layout(tmp_path, PEOPLE)
    people = pd.read_csv(root / "train/train.csv", dtype=str)
    people.loc[1, column] = value
    people.to_csv(root / "train/train.csv", index=False)
    with pytest.raises(ValueError, match=message):
        prepare_mask_data(root, tmp_path / "out.csv")


# ----------------------------------------------------------------------------- the synthetic sample

def test_sample_has_the_competition_layout(sample):
    people = pd.read_csv(sample / "train/train.csv", dtype=str)
    assert list(people.columns) == ["id", "gender", "race", "age", "path"]
    assert len(people) == 24 and people["id"].str.fullmatch(r"\d{6}").all()
    assert (people["path"] == people["id"] + "_" + people["gender"] + "_" + people["race"] + "_" + people["age"]).all()
    extensions, hidden = set(), 0
    for path in people["path"]:
        files = sorted(p.name for p in (sample / "train/images" / path).iterdir())
        visible = [f for f in files if not f.startswith(".")]
        hidden += len(files) - len(visible)
        assert sorted(Path(f).stem for f in visible) == sorted(PHOTO_STEMS)
        extensions |= {Path(f).suffix for f in visible}
    assert extensions == {".jpg", ".jpeg", ".png"} and hidden >= 1
    first = next((sample / "train/images" / people["path"][0]).glob("mask1.*"))
    with Image.open(first) as img:
        assert img.size == TINY and img.mode == "RGB"
    # every (gender, age group) with >= 3 people, including the borderline ages
    ages = people["age"].astype(int)
    combos = pd.crosstab(people["gender"], ages.map(age_group))
    assert combos.shape == (2, 3) and combos.min().min() >= 3
    assert {25, 45, 58, 59, 60, 70} <= set(ages)


def test_sample_info_csv_lists_existing_images(sample):
    info = pd.read_csv(sample / "eval/info.csv")
    assert list(info.columns) == ["ImageID", "ans"]
    assert info["ans"].isna().all() and info["ImageID"].is_unique and len(info) == 6
    for image_id in info["ImageID"]:
        assert image_id.endswith(".jpg") and (sample / "eval/images" / image_id).is_file()
    assert len(list((sample / "eval/images").iterdir())) == len(info)
    truth = pd.read_csv(sample / "eval_truth.csv")
    assert truth["ImageID"].tolist() == info["ImageID"].tolist() and truth["ans"].between(0, 17).all()


def test_sample_is_deterministic_and_replaced_whole(tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()
    a = make_mask_sample(tmp_path / "a", n_people=6, n_eval=2, seed=5, image_size=(32, 48))
    b = make_mask_sample(tmp_path / "b", n_people=6, n_eval=2, seed=5, image_size=(32, 48))
    assert digest(a) == digest(b)
    (a / "stale.txt").write_text("old")
    make_mask_sample(a, n_people=6, n_eval=2, seed=6, image_size=(32, 48))
    assert not (a / "stale.txt").exists() and digest(a) != digest(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]   # no temporary folders left


def test_prepared_sample_covers_every_class_and_skips_junk(sample, sample_table):
    assert len(sample_table) == 24 * 7
    assert sorted(sample_table["label"].unique()) == list(range(18))
    assert not sample_table["image"].str.contains(r"/\.").any()
    assert all((sample / p).is_file() for p in sample_table["image"])


def test_grouped_folds_keep_each_person_in_one_fold(sample_table):
    groups = sample_table["group"].to_numpy()
    folds = assign_folds(sample_table["person_label"].to_numpy(), 3, 42, groups=groups)
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    assert set(folds) == {0, 1, 2}
    assert (pd.crosstab(sample_table["label"], folds) > 0).all().all()   # every class validated in every fold
    # the per-image label varies within a person, so it cannot be the grouped stratification label
    with pytest.raises(ValueError, match="one label per group"):
        assign_folds(sample_table["label"].to_numpy(), 3, 42, groups=groups)


# ----------------------------------------------------------------------------- multi-head math

def test_multihead_probabilities_follow_the_class_encoding():
    torch.manual_seed(0)
    m, g, a = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 3)
    probs = multihead_to_18(m, g, a)
    assert probs.shape == (5, 18)
    assert torch.allclose(probs.sum(dim=1), torch.ones(5), atol=1e-6)
    pm, pg, pa = m.softmax(1), g.softmax(1), a.softmax(1)
    for c in range(18):
        mi, gi, ai = decode_class(c)
        assert torch.allclose(probs[:, c], pm[:, mi] * pg[:, gi] * pa[:, ai], atol=1e-6)
    assert torch.allclose(multihead_log_probs_18(m, g, a).softmax(1), probs, atol=1e-6)
    with pytest.raises(ValueError, match=r"gender logits must have shape \[B, 2\]"):
        multihead_to_18(m, a, a)


def test_cross_entropy_on_the_18_log_probabilities_is_the_sum_of_the_heads_cross_entropies():
    """What the trainer relies on: plain cross-entropy on the three-head model's outputs trains each head."""
    torch.manual_seed(1)
    heads = (torch.randn(6, 3), torch.randn(6, 2), torch.randn(6, 3))
    targets = torch.tensor([0, 7, 17, 3, 11, 14])
    parts = [torch.tensor([decode_class(int(c))[h] for c in targets]) for h in range(3)]
    expected = sum(F.cross_entropy(h, t) for h, t in zip(heads, parts))
    assert torch.allclose(F.cross_entropy(multihead_log_probs_18(*heads), targets), expected, atol=1e-6)


# ----------------------------------------------------------------------------- config

def test_mask_config_loads_and_reads_the_prepared_sample(sample, sample_table, tmp_path):
    cfg = load_config(REPO / "configs" / "mask.yaml")
    assert cfg.experiment == "mask" and cfg.mask.age_cutoff == 60 and cfg.mask.relabel_file is None
    assert cfg.data.sample_submission == f"{cfg.data.image_root}/eval/info.csv"
    assert Path(cfg.data.train_csv).parent == Path(cfg.data.image_root)
    # the config's data contract, pointed at the tiny sample
    train_csv = prepare_mask_data(sample, tmp_path / "pipeline_train.csv")
    cfg = load_config(REPO / "configs" / "mask.yaml", [
        f"data.train_csv={train_csv}", f"data.image_root={sample}",
        f"data.sample_submission={sample / 'eval/info.csv'}"])
    train = read_train_table(cfg)
    assert len(train) == 24 * 7 and all(Path(p).is_file() for p in train["image"])
    test = read_test_table(cfg)
    assert len(test) == 6 and all(Path(p).is_file() for p in test["image"])


def test_the_folds_table_counts_the_labels_validation_is_scored_on(sample, tmp_path):
    """With a training-only age cut-off, the printed per-fold table counts true labels, and says so."""
    from pipeline.data.fold_file import make_folds

    train_csv = prepare_mask_data(sample, tmp_path / "pipeline_train.csv", age_cutoff=45)
    table = pd.read_csv(train_csv)
    assert (table["label"] != table["true_label"]).any()
    cfg = load_config(REPO / "configs" / "mask.yaml", [
        f"data.train_csv={train_csv}", f"data.image_root={sample}", f"output_dir={tmp_path / 'out'}",
        f"data.sample_submission={sample / 'eval/info.csv'}", f"folds.dir={tmp_path / 'folds'}"])
    printed = []
    make_folds(cfg, log=printed.append)
    header = next(line for line in printed if "validation rows per class" in line)
    assert "column 'true_label', which validation is scored on" in header
    counts = printed[printed.index(header) + 1]
    folds = pd.read_csv(cfg.folds_file)
    expected = pd.crosstab(table["true_label"], folds["fold"])
    for cls, row in expected.iterrows():
        line = next(x for x in counts.splitlines() if x.split()[0] == str(cls))
        assert [int(v) for v in line.split()[1:-1]] == row.tolist()
