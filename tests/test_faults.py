"""Faults a long run meets: a full disk, a read-only output folder, outputs others must read.

The disk tests mount a small tmpfs (the CI machine runs as root); where mounting is not allowed
they are skipped with the reason.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pandas as pd
import pytest
import torch

from pipeline.config import load_config
from pipeline.fileio import OutputError, write_csv_atomic, write_json_atomic, write_text_atomic
from pipeline.data.fold_file import make_folds
from tests.conftest import REPO, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def mount(tmp_path):
    """mount(folder, size, read_only=False): a tmpfs there; remount(folder, size) enlarges it."""
    mounted = []

    def _mount(folder, size="8m", read_only=False):
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); needs root")
        mounted.append(folder)
        return folder

    _mount.remount = lambda folder, size: subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(folder)], check=True)
    yield _mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _train(config):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "pipeline", "train", "--config", str(config), "--fold", "0"],
                          cwd=REPO, capture_output=True, text=True, env=env)


def test_a_full_disk_stops_with_one_clear_line_and_the_rerun_resumes(tiny_cfg_dict, tmp_path, mount):
    disk = mount(tmp_path / "disk", "8m")      # room for epoch 0's checkpoints, not for epoch 1's
    raw = dict(tiny_cfg_dict, output_dir=str(disk))
    raw["train"] = dict(raw["train"], epochs=3)
    raw["data"] = dict(raw["data"], cache_dir=str(tmp_path / "cache"))
    config = write_config(tmp_path / "c.yaml", raw)
    cfg = load_config(config)
    make_folds(cfg, log=lambda *_: None)

    failed = _train(config)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if not line.startswith("[fold 0] epoch")]
    assert len(errors) == 1, failed.stderr                       # progress lines, then one line
    message = errors[0]
    assert message.startswith("error: fold 0: OutputError: cannot write")
    assert "cannot write" in message and str(disk) in message and "No space left on device" in message
    assert "MiB free there" in message and "Nothing finished was lost" in message
    assert not (cfg.fold_dir(0) / "weights.safetensors").exists()
    assert not list(cfg.fold_dir(0).rglob("*.tmp"))            # no half-written file left behind
    saved = torch.load(cfg.fold_dir(0) / "state" / "last.pt", weights_only=True)["epoch"]   # the last good one

    mount.remount(disk, "64m")
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {saved + 1}/3" in resumed.stdout
    assert (cfg.fold_dir(0) / "weights.safetensors").is_file()
    assert pd.read_csv(cfg.fold_dir(0) / "metrics.csv")["epoch"].tolist() == [0, 1, 2]


def test_a_read_only_output_folder_is_one_line_before_any_work(tiny_cfg_dict, tmp_path, mount):
    from tests.test_end_to_end import _make

    outputs = mount(tmp_path / "outputs", "1m", read_only=True)
    raw = dict(tiny_cfg_dict, output_dir=str(outputs))
    result = _make("folds", "train", config=write_config(tmp_path / "c.yaml", raw))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot write in {outputs}" in result.stderr and "Read-only file system" in result.stderr
    assert "stopped before any work" in result.stderr
    assert not (tmp_path / "folds").exists()


def test_a_read_only_fold_folder_stops_training_before_the_first_epoch(tiny_cfg_dict, tmp_path, mount):
    raw = dict(tiny_cfg_dict, output_dir=str(tmp_path / "outputs"))
    config = write_config(tmp_path / "c.yaml", raw)
    cfg = load_config(config)
    make_folds(cfg, log=lambda *_: None)
    mount(cfg.fold_dir(0), "1m", read_only=True)
    result = _train(config)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert f"cannot write in {cfg.fold_dir(0)}: Read-only file system" in result.stderr
    assert "epoch 1/" not in result.stdout                      # nothing trained


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_permissions_of_a_plain_open(tmp_path, umask, mode):
    from pipeline.train.models import save_weights

    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "cv.md", "x")
        write_csv_atomic(tmp_path / "submission.csv", pd.DataFrame({"id": ["a"]}))
        write_json_atomic(tmp_path / "ensemble.json", {})
        save_weights(torch.nn.Linear(2, 2), tmp_path / "weights.safetensors", {})
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    for name in ("cv.md", "submission.csv", "ensemble.json", "weights.safetensors", "weights.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_an_unwritable_path_is_an_output_error_naming_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"cannot write in {blocker}/sub: Not a directory"):
        write_text_atomic(blocker / "sub" / "x.txt", "x")
