"""Two runs of one fold at once: the second waits for the first and never touches its files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.fileio import locked
from pipeline.data.fold_file import make_folds
from tests.conftest import REPO, write_config

pytestmark = pytest.mark.slow


def _make_train(config, fold):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["OMP_NUM_THREADS"] = "1"     # two processes on two cores
    return subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "train", f"FOLD={fold}",
                             f"CONFIG={config}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _wait_for(condition, seconds=120.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_second_make_train_of_the_same_fold_waits_then_skips(tiny_cfg_dict, tmp_path):
    raw = dict(tiny_cfg_dict, output_dir=str(tmp_path / "outputs"))
    raw["train"] = dict(raw["train"], epochs=40)        # long enough for the second run to start meanwhile
    config = write_config(tmp_path / "c.yaml", raw)
    cfg = load_config(config)
    make_folds(cfg, log=lambda *_: None)
    metrics = cfg.fold_dir(0) / "metrics.csv"

    first = _make_train(config, 0)
    _wait_for(lambda: metrics.is_file() or first.poll() is not None)   # the first is training
    assert first.poll() is None, first.communicate()[0]
    second = _make_train(config, 0)
    second_out, _ = second.communicate(timeout=600)
    first_out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, first_out
    assert second.returncode == 0, second_out           # Make deletes nothing after a success
    holder = [line for line in second_out.splitlines() if "[lock]" in line]
    assert holder and "fold 0" in holder[0] and "in use by process" in holder[0], second_out
    assert "already trained" in second_out and "resuming" not in second_out
    assert (cfg.fold_dir(0) / "weights.safetensors").is_file()
    assert not (cfg.fold_dir(0) / "state").exists()
    assert pd.read_csv(metrics)["epoch"].tolist() == list(range(40))   # one run's epochs, once each


def test_the_lock_names_its_holder_and_is_free_again_after_a_kill(tmp_path):
    """A killed holder releases the lock at once (the kernel drops it); the file only says who it was."""
    lock = tmp_path / ".lock"
    script = (f"import time; from pipeline.fileio import locked\n"
              f"with locked({str(lock)!r}, 'x', log=None):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said, done = [], threading.Event()

    def waiter():
        with locked(lock, "the thing", log=said.append):
            done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    _wait_for(lambda: said, 10)
    assert f"the thing is in use by process {holder.pid}" in said[0] and not done.is_set()
    holder.kill()
    holder.wait()
    thread.join(10)
    assert done.is_set()
