"""A killed fold resumes to the same result; planted pickles are refused; NaN stops a fold cleanly."""

import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.data.fold_file import make_folds
from pipeline.train.loop import NonFiniteLossError, fit
from tests.conftest import REPO, write_config

pytestmark = pytest.mark.slow


def _cfg(tiny_cfg_dict, root, epochs=3, **train):
    d = dict(tiny_cfg_dict, output_dir=str(root / "outputs"))
    d["train"] = dict(d["train"], epochs=epochs, **train)
    return d


def _fit_in_subprocess(config, kill_after_epoch=None):
    """Train fold 0 in a fresh process (same thread settings every time: float sums depend on them)."""
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.config import load_config
        from pipeline.train.loop import fit
        def die(epoch, metrics):
            if epoch == {kill_after_epoch!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        fit(load_config({str(config)!r}), 0, on_epoch=die)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)


# Mixup/CutMix draw from numpy's global RNG (timm): it must be reseeded per epoch like torch's.
@pytest.mark.parametrize("train", [{}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}], ids=["plain", "mixup"])
def test_sigkilled_fold_resumes_to_identical_weights_and_metrics(tiny_cfg_dict, tmp_path, train):
    straight_config = write_config(tmp_path / "a.yaml", _cfg(tiny_cfg_dict, tmp_path / "a", **train))
    killed_config = write_config(tmp_path / "b.yaml", _cfg(tiny_cfg_dict, tmp_path / "b", **train))
    straight, killed = load_config(straight_config), load_config(killed_config)
    make_folds(straight, log=lambda *_: None)
    assert _fit_in_subprocess(straight_config).returncode == 0

    # A real training process SIGKILLed right after epoch 1's checkpoint.
    proc = _fit_in_subprocess(killed_config, kill_after_epoch=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    fold_dir = killed.fold_dir(0)
    assert not (fold_dir / "weights.safetensors").exists()  # Make must not think the fold is done
    assert (fold_dir / "state" / "last.pt").is_file()
    assert len(pd.read_csv(fold_dir / "metrics.csv")) == 2

    resumed = _fit_in_subprocess(killed_config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2/3" in resumed.stdout   # killed after the second epoch line, "epoch 2/3"
    assert "] epoch 3/3 loss" in resumed.stdout and "] epoch 2/3 loss" not in resumed.stdout
    a = load_file(straight.fold_dir(0) / "weights.safetensors")
    b = load_file(fold_dir / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ["seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(straight.fold_dir(0) / "metrics.csv").drop(columns=drop),
                                  pd.read_csv(fold_dir / "metrics.csv").drop(columns=drop))
    pd.testing.assert_frame_equal(pd.read_csv(straight.fold_dir(0) / "oof.csv"), pd.read_csv(fold_dir / "oof.csv"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_planted_pickle_checkpoint_is_refused_without_running(tiny_cfg, tmp_path):
    make_folds(tiny_cfg, log=lambda *_: None)
    marker = tmp_path / "pwned"
    state = tiny_cfg.fold_dir(0) / "state" / "last.pt"
    state.parent.mkdir(parents=True)
    torch.save({"model": _Evil(marker)}, state)
    with pytest.raises(RuntimeError, match="refusing to load .*last.pt"):
        fit(tiny_cfg, 0, log=lambda *_: None)
    assert not marker.exists()


def test_planted_pickle_as_pretrained_file_is_refused(tiny_cfg_dict, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save(_Evil(marker), evil)
    from pipeline.train.models import create_model
    cfg = load_config(None, dict(tiny_cfg_dict, model={"name": "test_resnet", "pretrained_file": str(evil)}))
    with pytest.raises(RuntimeError, match="refusing to load"):
        create_model(cfg.model, 10)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_weights_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    fake = tmp_path / "weights.safetensors"
    torch.save(_Evil(marker), fake)  # a pickle under the weights' name
    (tmp_path / "weights.json").write_text('{"model": "test_resnet", "classes": [0, 1]}')
    from pipeline.train.models import load_trained_model
    with pytest.raises(RuntimeError, match=f"refusing to load {fake}: it is not a valid safetensors file"):
        load_trained_model(fake)
    assert not marker.exists()


def test_nan_loss_stops_the_fold_naming_epoch_and_step_and_keeps_checkpoint(tiny_cfg_dict, tmp_path, monkeypatch):
    cfg = load_config(None, _cfg(tiny_cfg_dict, tmp_path, epochs=2))
    make_folds(cfg, log=lambda *_: None)
    import pipeline.train.loop as train_mod
    real = train_mod.train_one_epoch

    def poisoned(model, loader, optimizer, loss_fn, device, epoch, *args, **kwargs):
        if epoch == 1:
            loss_fn = lambda logits, y: logits.sum() * float("nan")  # noqa: E731
        return real(model, loader, optimizer, loss_fn, device, epoch, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0"):
        fit(cfg, 0, log=lambda *_: None)
    state = torch.load(cfg.fold_dir(0) / "state" / "last.pt", weights_only=True)
    assert state["epoch"] == 0  # the last good checkpoint survives
    assert not (cfg.fold_dir(0) / "weights.safetensors").exists()
