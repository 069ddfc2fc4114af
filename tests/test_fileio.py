"""Atomic writes and reproducible folds: a killed or failed write never leaves a partial file."""

import pandas as pd
import pytest

from pipeline.stamps import write_resolved
from pipeline.fileio import atomic_path, write_text_if_changed
from pipeline.data.fold_file import make_folds


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_unchanged_content_keeps_the_timestamp(tmp_path):
    stamp = tmp_path / "s.json"
    assert write_text_if_changed(stamp, "a")
    mtime = stamp.stat().st_mtime_ns
    assert not write_text_if_changed(stamp, "a") and stamp.stat().st_mtime_ns == mtime
    assert write_text_if_changed(stamp, "b") and stamp.read_text() == "b"


def test_same_config_and_seed_give_byte_identical_folds(tiny_cfg, tmp_path):
    make_folds(tiny_cfg, log=lambda *_: None)
    first = tiny_cfg.folds_file.read_bytes()
    make_folds(tiny_cfg, log=lambda *_: None)
    assert tiny_cfg.folds_file.read_bytes() == first
    folds = pd.read_csv(tiny_cfg.folds_file)
    assert folds.groupby("group")["fold"].nunique().max() == 1


def test_resolved_config_and_versions_are_saved_with_the_run(tiny_cfg):
    resolved = write_resolved(tiny_cfg)
    assert resolved.is_file() and (tiny_cfg.exp_dir / "versions.json").is_file()
    assert '"torch"' in (tiny_cfg.exp_dir / "versions.json").read_text()
