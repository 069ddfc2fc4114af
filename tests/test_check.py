"""The input-data check: every kind of bad input is reported with its file, line and a fix, all at once.

Each test builds a tiny dataset of 8x8 PNGs in tmp_path (or copies the demo and breaks it),
runs `check_data` and looks at the problems it names. No test uses more than 2 jobs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import pipeline.data.image_check as image_check
from pipeline.data.check import DataReport, Problem, check_data
from pipeline.config import load_config
from pipeline.data.tables import DataError

CLASSES = ("cat", "dog")


# ------------------------------------------------------------------------------- helpers

def _image(path: Path, mode: str = "RGB", size: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray((rng.random((size, size)) * 4000).astype(np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((size, size)).astype(np.float32))
    else:
        img = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).convert(mode)
    img.save(path)
    return path


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _dataset(tmp_path: Path, per_class: int = 3, n_test: int = 3, grouped: bool = False,
             n_splits: int = 3) -> tuple[Path, dict]:
    """A clean dataset: `per_class` train PNGs per class, `n_test` test PNGs; returns (root, config dict)."""
    root = tmp_path / "data"
    rows = []
    for c, label in enumerate(CLASSES):
        for k in range(per_class):
            name = f"train/{label}_{k}.png"
            _image(root / name, seed=10 * c + k)
            rows.append(f"{name},{label},p{c}{k}" if grouped else f"{name},{label}")
    _write_csv(root / "train.csv", "image,label,group" if grouped else "image,label", rows)
    ids = [f"t{i}" for i in range(n_test)]
    for i, id_ in enumerate(ids):
        _image(root / "test" / f"{id_}.png", seed=100 + i)
    _write_csv(root / "sample_submission.csv", "id,label", [f"{i},cat" for i in ids])
    cfg = {
        "output_dir": str(tmp_path / "outputs"),
        "folds": {"n_splits": n_splits, "dir": str(tmp_path / "folds")},
        "data": {"train_csv": str(root / "train.csv"), "image_root": str(root),
                 "sample_submission": str(root / "sample_submission.csv"), "id_column": "id",
                 "target_column": "label", "test_image_template": "test/{id}.png",
                 "group_column": "group" if grouped else None},
    }
    return root, cfg


def _check(cfg: dict, n_jobs: int = 1) -> DataReport:
    return check_data(load_config(None, cfg), n_jobs=n_jobs)


def _of(report: DataReport, kind: str, warnings: bool = False) -> list[Problem]:
    items = [p for p in (report.warnings if warnings else report.problems) if p.kind == kind]
    assert items, f"no {kind!r} in:\n{report.format()}"
    return items


def _snapshot(root: Path) -> dict:
    """Every file and folder under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _train_csv(root: Path, rows: list[str], header: str = "image,label") -> None:
    _write_csv(root / "train.csv", header, rows)


# ------------------------------------------------------------------------------- clean data

def test_clean_dataset_is_ok_and_nothing_is_written(tmp_path):
    root, cfg = _dataset(tmp_path)
    before = _snapshot(tmp_path)
    report = _check(cfg)
    assert report.ok and report.problems == [] and report.warnings == []
    assert (report.train_rows, report.test_rows, report.images_checked) == (6, 3, 9)
    assert "passed" in report.format() and "no problems" in report.format()
    assert report.raise_if_failed() is report
    assert _snapshot(tmp_path) == before  # no outputs/, folds/, caches or temp files


def test_demo_dataset_is_clean_serial_and_parallel(tiny_cfg, monkeypatch):
    serial = check_data(tiny_cfg, n_jobs=1)
    assert serial.ok and not serial.warnings, serial.format()
    monkeypatch.setattr(image_check, "_SERIAL_BELOW", 0)  # force worker processes on a small set
    parallel = check_data(tiny_cfg, n_jobs=2)
    assert parallel.ok and parallel.images_checked == serial.images_checked > 0


def test_mask_competition_layout_is_clean(tmp_path):
    """The mask sample: ids carry the extension, person groups, stratified on a per-person column."""
    import yaml

    from pipeline.competitions.mask import make_mask_sample, prepare_mask_data
    from tests.conftest import REPO

    data = make_mask_sample(tmp_path / "mask", image_size=(48, 64))
    prepare_mask_data(data, data / "pipeline_train.csv")
    cfg = yaml.safe_load((REPO / "configs/mask.yaml").read_text())
    cfg["output_dir"], cfg["folds"]["dir"] = str(tmp_path / "outputs"), str(tmp_path / "folds")
    cfg["data"].update(train_csv=str(data / "pipeline_train.csv"), image_root=str(data),
                       sample_submission=str(data / "eval/info.csv"), test_labels=None)
    before = _snapshot(tmp_path)
    report = _check(cfg)
    assert report.ok and not report.warnings, report.format()
    assert report.images_checked == report.train_rows + report.test_rows > 0
    assert _snapshot(tmp_path) == before


def test_broken_demo_copy_reports_each_break_with_its_line_serial_and_parallel(tmp_path, demo_dir,
                                                                                tiny_cfg_dict, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    lines = (data / "train.csv").read_text().splitlines()
    gone = lines[4].split(",")[0]                      # line 5's image is deleted
    (data / gone).unlink()
    cut = lines[7].split(",")[0]                       # line 8's image is cut in half
    blob = (data / cut).read_bytes()
    (data / cut).write_bytes(blob[: len(blob) // 2])
    fields = lines[9].split(",")                       # line 10's label is blanked
    lines[9] = ",".join([fields[0], "", *fields[2:]])
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    test_id = (data / "sample_submission.csv").read_text().splitlines()[2].split(",")[0]
    (data / "test" / f"{test_id}.png").unlink()        # the id on line 3 loses its image
    tiny_cfg_dict["data"].update(train_csv=str(data / "train.csv"), image_root=str(data),
                                 sample_submission=str(data / "sample_submission.csv"))
    before = _snapshot(tmp_path)

    serial = _check(tiny_cfg_dict, n_jobs=1)
    monkeypatch.setattr(image_check, "_SERIAL_BELOW", 0)
    parallel = _check(tiny_cfg_dict, n_jobs=2)
    assert _snapshot(tmp_path) == before
    assert serial.problems == parallel.problems and serial.warnings == parallel.warnings
    train_csv, sample = str(data / "train.csv"), str(data / "sample_submission.csv")
    assert [(p.file, p.row) for p in _of(serial, "missing-image")] == [(train_csv, 5)]
    assert [(p.file, p.row) for p in _of(serial, "truncated-image")] == [(train_csv, 8)]
    assert [(p.file, p.row) for p in _of(serial, "blank-label")] == [(train_csv, 10)]
    assert [(p.file, p.row) for p in _of(serial, "missing-test-image")] == [(sample, 3)]
    assert len(serial.problems) == 4


# ------------------------------------------------------------------------------- CSVs

@pytest.mark.parametrize("which", ["train.csv", "sample_submission.csv"])
@pytest.mark.parametrize("content", ["", "image,label\n"], ids=["zero-bytes", "header-only"])
def test_empty_csv(tmp_path, which, content):
    root, cfg = _dataset(tmp_path)
    if which == "sample_submission.csv" and content:
        content = "id,label\n"
    (root / which).write_text(content)
    [p] = _of(_check(cfg), "empty-csv")
    assert p.file == str(root / which) and p.row is None
    if content:
        assert "header but no rows" in p.message and "one row per image" in p.message
    else:
        assert "0 bytes" in p.message and "Re-download or regenerate it" in p.message


def test_missing_column_names_the_config_key_and_a_close_match(tmp_path):
    root, cfg = _dataset(tmp_path)
    _train_csv(root, [f"train/cat_{k}.png,cat" for k in range(3)], header="image,Label")
    _write_csv(root / "sample_submission.csv", "ID,label", ["t0,cat"])
    report = _check(cfg)
    train, sample = _of(report, "missing-column")
    assert (train.file, train.row) == (str(root / "train.csv"), 1)
    assert "'label'" in train.message and "data.label_column" in train.message
    assert "Did you mean 'Label'" in train.message
    assert sample.file == str(root / "sample_submission.csv") and "data.id_column" in sample.message
    # the image column is there, so the images were still checked
    assert report.images_checked == 3


def test_missing_csv_file(tmp_path):
    root, cfg = _dataset(tmp_path)
    (root / "train.csv").unlink()
    [p] = _of(_check(cfg), "missing-csv")
    assert p.file == str(root / "train.csv") and "check the path in the config" in p.message


def test_unparsable_csv(tmp_path):
    root, cfg = _dataset(tmp_path)
    _train_csv(root, ["train/cat_0.png,cat", "train/cat_1.png,cat,extra,fields", "train/cat_2.png,cat"])
    [p] = _of(_check(cfg), "unreadable-csv")
    assert p.file == str(root / "train.csv") and "line 3" in p.message and "Fix that line" in p.message


def test_blank_and_nan_labels_are_listed_by_line(tmp_path):
    root, cfg = _dataset(tmp_path)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    rows[1] = "train/cat_1.png,"        # line 3: empty
    rows[3] = "train/dog_0.png,   "     # line 5: spaces only
    _train_csv(root, rows)
    problems = _of(_check(cfg), "blank-label")
    assert [(p.file, p.row) for p in problems] == [(str(root / "train.csv"), 3), (str(root / "train.csv"), 5)]
    assert all("fill in the label or drop the row" in p.message for p in problems)


def test_blank_group_ids(tmp_path):
    root, cfg = _dataset(tmp_path, grouped=True)
    rows = [f"train/{c}_{k}.png,{c},p{i}{k}" for i, c in enumerate(CLASSES) for k in range(3)]
    rows[2] = "train/cat_2.png,cat,"
    _train_csv(root, rows, header="image,label,group")
    [p] = _of(_check(cfg), "blank-group")
    assert p.row == 4 and "Give every row its group id" in p.message


def test_duplicate_image_rows(tmp_path):
    root, cfg = _dataset(tmp_path)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    _train_csv(root, rows + ["train/cat_0.png,dog"])   # line 8 repeats line 2 with another label
    [p] = _of(_check(cfg), "duplicate-image")
    assert (p.file, p.row) == (str(root / "train.csv"), 8)
    assert "line 2" in p.message and "different label" in p.message and "Drop the duplicate" in p.message


def test_duplicate_and_blank_ids_in_the_sample_submission(tmp_path):
    root, cfg = _dataset(tmp_path)
    _write_csv(root / "sample_submission.csv", "id,label", ["t0,cat", "t1,cat", "t0,cat", ",cat", "t2,cat"])
    report = _check(cfg)
    [dup] = _of(report, "duplicate-id")
    assert (dup.file, dup.row) == (str(root / "sample_submission.csv"), 4)
    assert "line 2" in dup.message and "Drop the duplicate" in dup.message
    [blank] = _of(report, "blank-id")
    assert blank.row == 5 and "needs its id" in blank.message


# ------------------------------------------------------------------------------- images

def test_missing_image_names_line_and_a_file_with_another_extension(tmp_path):
    root, cfg = _dataset(tmp_path)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    rows[1] = "train/nowhere.png,cat"       # line 3
    rows[4] = "train/dog_1.jpg,dog"         # line 6: the file is dog_1.png
    _train_csv(root, rows)
    first, second = _of(_check(cfg), "missing-image")
    assert (first.file, first.row) == (str(root / "train.csv"), 3)
    assert "does not exist" in first.message and "Fix the path" in first.message
    assert second.row == 6 and "'dog_1.png' exists there" in second.message


def test_missing_image_root_is_one_problem_not_one_per_row(tmp_path):
    root, cfg = _dataset(tmp_path)
    cfg["data"]["image_root"] = str(tmp_path / "no_such_folder")
    report = _check(cfg)
    [p] = _of(report, "missing-root")
    assert "data.image_root" in p.message and len(report.problems) == 1 and report.images_checked == 0


def test_random_bytes_and_empty_files_are_corrupt(tmp_path):
    root, cfg = _dataset(tmp_path)
    (root / "train/cat_1.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "train/dog_2.png").write_bytes(b"")
    first, second = _of(_check(cfg), "corrupt-image")
    assert (first.file, first.row) == (str(root / "train.csv"), 3)
    assert "not an image" in first.message and "Re-download it or drop the row" in first.message
    assert second.row == 7 and "empty" in second.message


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_cut_in_half_is_truncated(tmp_path, fmt):
    root, cfg = _dataset(tmp_path)
    big = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    name = f"train/cat_0.{fmt}"
    Image.fromarray(big).save(root / name)
    blob = (root / name).read_bytes()
    (root / name).write_bytes(blob[: len(blob) // 2])
    rows = [name + ",cat"] + [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3) if (c, k) != ("cat", 0)]
    _train_csv(root, rows)
    [p] = _of(_check(cfg), "truncated-image")
    assert (p.file, p.row, p.image) == (str(root / "train.csv"), 2, str(root / name))
    assert "cut short" in p.message and "Re-download it" in p.message


def test_truncated_jpeg_is_found_even_if_the_caller_tolerates_truncation(tmp_path, monkeypatch):
    root, cfg = _dataset(tmp_path)
    big = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "train/cat_0.jpg")
    blob = (root / "train/cat_0.jpg").read_bytes()
    (root / "train/cat_0.jpg").write_bytes(blob[: int(len(blob) * 0.9)])
    rows = ["train/cat_0.jpg,cat"] + [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(1, 3)] \
        + ["train/dog_0.png,dog"]
    _train_csv(root, rows)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _of(_check(cfg), "truncated-image")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_grayscale_palette_and_alpha_are_warnings_that_count_images(tmp_path):
    root, cfg = _dataset(tmp_path)
    _image(root / "train/cat_0.png", mode="L")
    _image(root / "train/cat_1.png", mode="L")
    _image(root / "train/dog_0.png", mode="P")
    _image(root / "test/t0.png", mode="RGBA")
    report = _check(cfg)
    assert report.ok and report.problems == []
    warnings = {w.message.split(":")[0]: w for w in _of(report, "mode-converted", warnings=True)}
    assert set(warnings) == {"2 image(s) are mode L", "1 image(s) are mode P", "1 image(s) are mode RGBA"}
    assert warnings["2 image(s) are mode L"].row == 2  # the first such image's line
    assert "Warnings:" in report.format()


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_16_bit_and_float_images_are_problems(tmp_path, mode):
    root, cfg = _dataset(tmp_path)
    ext = "png" if mode == "I;16" else "tiff"
    _image(root / f"train/dog_2.{ext}", mode=mode)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3) if (c, k) != ("dog", 2)]
    _train_csv(root, rows + [f"train/dog_2.{ext},dog"])
    [p] = _of(_check(cfg), "high-bit-depth")
    assert (p.file, p.row) == (str(root / "train.csv"), 7)
    assert "data.high_bit_depth: percentile" in p.message   # the key that lets them train
    assert ("clips every value above 255" in p.message) if mode == "I;16" else ("become black" in p.message)


def test_a_path_escaping_the_root_is_reported_and_never_opened(tmp_path, monkeypatch):
    root, cfg = _dataset(tmp_path)
    outside = _image(tmp_path / "outside.png")
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    _train_csv(root, rows + ["../outside.png,cat", f"{outside},dog"])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    report = _check(cfg)
    first, second = _of(report, "path-escapes-root")
    assert (first.file, first.row, second.row) == (str(root / "train.csv"), 8, 9)
    assert "not opened" in first.message and "Use paths relative to the image root" in first.message
    assert opened and not any("outside" in p for p in opened)


# ------------------------------------------------------------------------------- test set

def test_a_test_id_without_image(tmp_path):
    root, cfg = _dataset(tmp_path)
    (root / "test/t1.png").unlink()
    [p] = _of(_check(cfg), "missing-test-image")
    assert (p.file, p.row) == (str(root / "sample_submission.csv"), 3)
    assert "data.test_image_template" in p.message and "Every id needs an image" in p.message


def test_extra_image_in_the_test_folder_is_a_warning(tmp_path):
    root, cfg = _dataset(tmp_path)
    _image(root / "test/t9.png")
    (root / "test/.DS_Store").write_bytes(b"junk")  # hidden files and non-images are ignored
    (root / "test/notes.txt").write_text("hi")
    report = _check(cfg)
    assert report.ok
    [w] = _of(report, "extra-test-image", warnings=True)
    assert w.file == str(root / "test/t9.png") and "no id" in w.message


def test_template_matching_no_id_says_so(tmp_path):
    root, cfg = _dataset(tmp_path)
    cfg["data"]["test_image_template"] = "test/{id}.jpg"
    report = _check(cfg)
    [p] = _of(report, "test-ids-mismatch")
    assert p.file == str(root / "sample_submission.csv") and "Make the template match" in p.message
    assert len(_of(report, "missing-test-image")) == 3


def test_test_path_column_blank_and_missing(tmp_path):
    root, cfg = _dataset(tmp_path)
    _write_csv(root / "sample_submission.csv", "id,label,path", ["a,cat,test/t0.png", "b,cat,", "c,cat,test/zz.png"])
    cfg["data"].update(test_image_template=None, test_path_column="path")
    report = _check(cfg)
    assert [p.row for p in _of(report, "blank-image-path")] == [3]
    assert [p.row for p in _of(report, "missing-test-image")] == [4]


# ------------------------------------------------------------------------------- folds

def test_class_with_fewer_rows_than_folds(tmp_path):
    root, cfg = _dataset(tmp_path, n_splits=3)
    rows = [f"train/cat_{k}.png,cat" for k in range(3)] + [f"train/dog_{k}.png,dog" for k in range(2)]
    _train_csv(root, rows)
    [p] = _of(_check(cfg), "class-too-small")
    assert p.file == str(root / "train.csv") and p.row is None
    assert "'dog'" in p.message and "2 rows" in p.message and "folds.n_splits=3" in p.message
    assert "lower folds.n_splits to at most 2" in p.message


def test_grouped_class_with_fewer_groups_and_a_group_with_two_labels(tmp_path):
    root, cfg = _dataset(tmp_path, grouped=True, n_splits=3)
    rows = [f"train/cat_{k}.png,cat,c{k}" for k in range(3)]
    rows += ["train/dog_0.png,dog,d0", "train/dog_1.png,cat,d0", "train/dog_2.png,dog,d1"]
    _train_csv(root, rows, header="image,label,group")
    report = _check(cfg)
    [mixed] = _of(report, "group-mixed-labels")
    assert (mixed.file, mixed.row) == (str(root / "train.csv"), 6)   # d0's first row says dog, line 6 cat
    assert "group 'd0'" in mixed.message and "['dog', 'cat']" in mixed.message
    assert "fix the labels" in mixed.message
    [small] = _of(report, "class-too-small")
    assert "'dog'" in small.message and "2 groups" in small.message


def test_fold_assignment_errors_become_problems(tmp_path, monkeypatch):
    import pipeline.data.folds

    root, cfg = _dataset(tmp_path, grouped=True)

    def refuse(*args, **kwargs):
        raise ValueError("the grouped split left fold(s) [2] without validation rows")

    monkeypatch.setattr(pipeline.data.folds, "assign_folds", refuse)
    [p] = _of(_check(cfg), "folds-failed")
    assert p.file == str(root / "train.csv") and "fold(s) [2]" in p.message


# ------------------------------------------------------------------------------- the report

def test_many_problems_are_reported_together(tmp_path):
    root, cfg = _dataset(tmp_path)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    rows[0] = "train/gone.png,cat"                      # missing image
    rows[1] = "train/cat_1.png,"                        # blank label → cat has 2 rows < 3 folds
    (root / "train/dog_0.png").write_bytes(b"not a png at all")   # corrupt
    _train_csv(root, rows + ["../escape.png,dog"])
    _write_csv(root / "sample_submission.csv", "id,label", ["t0,cat", "t0,cat", "t1,cat", "t2,cat"])
    _image(root / "train/dog_1.png", mode="L")         # plus a warning
    before = _snapshot(tmp_path)
    report = _check(cfg)
    assert _snapshot(tmp_path) == before
    kinds = set(report.kinds())
    assert kinds == {"missing-image", "blank-label", "corrupt-image", "path-escapes-root", "duplicate-id",
                     "class-too-small"}
    assert not report.ok and [w.kind for w in report.warnings] == ["mode-converted"]
    text = report.format()
    assert "failed" in text and all(f"[{k}]" in text for k in kinds)
    with pytest.raises(DataError) as info:
        report.raise_if_failed()
    assert all(f"[{k}]" in str(info.value) for k in kinds)


def test_format_caps_each_kind(tmp_path):
    root, cfg = _dataset(tmp_path)
    rows = [f"train/{c}_{k}.png,{c}" for c in CLASSES for k in range(3)]
    _train_csv(root, rows + [f"train/missing_{i}.png,cat" for i in range(15)])
    report = _check(cfg)
    assert len(_of(report, "missing-image")) == 15
    text = report.format()
    assert "[missing-image] x15" in text and "... and 5 more" in text
    assert text.count("does not exist") == 10


def test_problem_str_names_file_and_line():
    p = Problem("train.csv", 7, "missing-image", "image x.png does not exist")
    assert str(p) == "train.csv line 7: image x.png does not exist"
    assert str(Problem("train.csv", None, "empty-csv", "empty")) == "train.csv: empty"


def test_a_worker_killed_by_a_decoder_crash_is_reported(tmp_path, monkeypatch):
    root, cfg = _dataset(tmp_path)

    def crash(paths):  # a closure: joblib pickles it by value into the worker, where it dies
        os._exit(3)

    monkeypatch.setattr(image_check, "_SERIAL_BELOW", 0)
    monkeypatch.setattr(image_check, "inspect_chunk", crash)
    [p] = _of(_check(cfg, n_jobs=2), "checker-crashed")
    assert "crashes the image decoder" in p.message
