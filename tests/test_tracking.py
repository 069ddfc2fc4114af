"""Tracking backends get every epoch's metrics; a missing optional package is a clear error."""

import sys
import types

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.fold_file import make_folds
from pipeline.train.loop import fit


def test_mlflow_receives_each_epochs_metrics(tiny_cfg_dict, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(set_experiment=lambda name: calls.append(("experiment", name)),
                                 start_run=lambda run_name: calls.append(("start", run_name)),
                                 log_metrics=lambda row, step: calls.append(("log", step, row)),
                                 end_run=lambda: calls.append(("end",)))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    d = dict(tiny_cfg_dict, report={"mlflow": True}, train=dict(tiny_cfg_dict["train"], epochs=2))
    cfg = load_config(None, d)
    make_folds(cfg, log=lambda *_: None)
    fit(cfg, 0, log=lambda *_: None)
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [0, 1]
    assert {"val_f1_macro", "train_loss", "lr"} <= set(logs[0][2])
    assert calls[0] == ("experiment", "demo") and calls[1] == ("start", "demo-fold0") and calls[-1] == ("end",)


def test_enabled_backend_without_its_package_names_the_key_and_the_fix(tiny_cfg_dict, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    from pipeline.train.tracking import Tracker
    cfg = load_config(None, dict(tiny_cfg_dict, report={"wandb": True}))
    with pytest.raises(ConfigError, match=r"report.wandb is on but 'wandb' is not installed.*\[tracking\]"):
        Tracker(cfg, 0)
