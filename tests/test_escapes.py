"""Nothing escapes the data root, and no file content that is not an image is ever printed."""

from __future__ import annotations

import os

import pytest

from pipeline.config import load_config
from pipeline.tables import DataError, read_test_table, read_train_table
from tests.test_check import _check, _dataset, _of

SECRET = "root:$6$planted-secret-hash:19000:0:99999:7:::"


@pytest.fixture
def outside_secret(tmp_path):
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    return secret


def test_a_link_out_of_the_root_is_refused_by_the_check_without_opening_it(tmp_path, outside_secret):
    root, cfg = _dataset(tmp_path)
    planted = root / "train" / "cat_0.png"
    planted.unlink()
    planted.symlink_to(outside_secret)
    report = _check(cfg)
    problem = _of(report, "path-escapes-root")[0]
    assert problem.row == 2 and "train/cat_0.png" in problem.message and "link" in problem.message
    assert SECRET not in report.format() and "planted" not in report.format()
    assert report.images_checked == 8      # the other 5 train and 3 test images; the link was not opened


def test_a_linked_folder_out_of_the_root_is_refused_by_the_stages(tmp_path, outside_secret):
    root, cfg = _dataset(tmp_path)
    (root / "test").rename(tmp_path / "outside" / "test")
    (root / "test").symlink_to(tmp_path / "outside" / "test")    # the whole test folder lives elsewhere
    with pytest.raises(DataError, match="t0.png' is a link that leads out of the data root"):
        read_test_table(load_config(None, cfg))


def test_links_that_stay_inside_the_root_are_fine(tmp_path):
    root, cfg = _dataset(tmp_path)
    (root / "train" / "cat_0.png").unlink()
    (root / "train" / "cat_0.png").symlink_to(root / "train" / "cat_1.png")
    assert len(read_train_table(load_config(None, cfg))) == 6
    assert _check(cfg).ok


def test_a_root_that_is_itself_a_link_is_fine(tmp_path):
    root, cfg = _dataset(tmp_path)
    os.symlink(root, tmp_path / "alias")
    cfg["data"].update(train_csv=str(tmp_path / "alias/train.csv"), image_root=str(tmp_path / "alias"),
                       sample_submission=str(tmp_path / "alias/sample_submission.csv"))
    assert _check(cfg).ok


@pytest.mark.parametrize("content, said", [
    (SECRET.encode() + b"\n", "a text file of"),
    (bytes(range(256)) * 3, "binary data"),
    (b"", "the file is empty"),
])
def test_a_file_that_is_not_an_image_is_described_not_quoted(tmp_path, content, said):
    root, cfg = _dataset(tmp_path)
    (root / "train" / "dog_1.png").write_bytes(content)
    report = _check(cfg)
    problem = _of(report, "corrupt-image")[0]
    assert said in problem.message
    assert SECRET not in report.format() and "planted" not in report.format()
    assert "\\x" not in report.format() and "b'" not in report.format()
