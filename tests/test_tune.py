"""Hyperparameter search: a real SQLite study on the tiny setup, interrupted and resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.data.fold_file import make_folds

optuna = pytest.importorskip("optuna")
from pipeline.tools.tune import tune, validate_space  # noqa: E402

# Optuna marks heartbeats (the resume of killed trials) experimental.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

from conftest import REPO, write_config  # noqa: E402

SPACE = {
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "train.optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two CI cores: no oversubscription, stable timings
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tune_dict(tiny_cfg_dict):
    return {**tiny_cfg_dict, "tune": {"trials": 2, "folds": [0], "space": SPACE}}


@pytest.fixture
def tune_cfg(tune_dict):
    cfg = load_config(None, tune_dict)
    make_folds(cfg, log=lambda *a: None)
    return cfg


def _states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_study_resumes_and_writes_a_loadable_best_config(tune_cfg, tmp_path):
    best_path = tmp_path / "configs" / "demo-best.yaml"
    db = tune_cfg.exp_dir / "tune.db"
    assert not db.parent.exists()

    first = tune(tune_cfg, trials=1, out_config=best_path)        # the "interrupted" search
    assert db.is_file()                                           # default storage, folder created
    assert _states(first) == [optuna.trial.TrialState.COMPLETE]

    study = tune(tune_cfg, trials=2, out_config=best_path)        # resumed: runs only the missing one
    assert study.study_name == "demo-tune"
    assert _states(study) == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.number for t in study.trials] == [0, 1]
    again = tune(tune_cfg, trials=2, out_config=best_path)        # nothing left to do
    assert len(again.trials) == 2

    from sklearn.metrics import f1_score

    for trial in study.trials:
        fold = tune_cfg.exp_dir / "trials" / str(trial.number) / tune_cfg.experiment / "fold_0"
        assert (fold / "weights.safetensors").is_file()
        oof = pd.read_csv(fold / "oof.csv", dtype={"label": str})       # the objective, recomputed from the files
        probs = oof.filter(like="prob_")
        predicted = probs.columns[probs.to_numpy().argmax(axis=1)].str[len("prob_"):]
        expected = f1_score(oof["label"], predicted, labels=[c[len("prob_"):] for c in probs.columns],
                            average="macro", zero_division=0)
        assert trial.value == pytest.approx(expected, abs=1e-12)
        assert set(trial.intermediate_values) == {0}              # reported after the epoch (pruning hook)
        metrics = pd.read_csv(fold / "metrics.csv")
        assert trial.intermediate_values[0] == pytest.approx(metrics["val_f1_macro"].iloc[0])
    assert not tune_cfg.fold_dir(0).exists()                      # the real run's files are untouched

    best = load_config(best_path)
    assert best.train.lr == pytest.approx(study.best_params["train.lr"])
    assert best.train.optimizer == study.best_params["train.optimizer"]
    assert best.output_dir == tune_cfg.output_dir and best.model.name == tune_cfg.model.name
    assert "# Best trial" in best_path.read_text()
    # trains beside the original experiment, on the same folds file
    assert best.experiment == f"{tune_cfg.experiment}-best" and best.folds_file == tune_cfg.folds_file


KILLED_RUN = """
import os, sys
import optuna
from pipeline.config import load_config
from pipeline.tools.tune import tune

def kill_after_first_epoch(msg):
    print(msg, flush=True)
    if "epoch 1/2" in msg:      # the epoch's checkpoint is saved; die like `kill -9` mid-trial
        os._exit(17)

storage = optuna.storages.RDBStorage(sys.argv[2], heartbeat_interval=1, grace_period=2)
tune(load_config(sys.argv[1]), trials=1, storage=storage, out_config=sys.argv[3], log=kill_after_first_epoch)
"""


def test_killed_trial_is_retried_with_its_params_and_resumes_its_folds(tune_dict, tmp_path):
    """A search killed mid-trial: the trial goes stale, is failed, and reruns in the same folder."""
    tune_dict = {**tune_dict, "train": {**tune_dict["train"], "epochs": 2}}
    cfg = load_config(None, tune_dict)
    make_folds(cfg, log=lambda *a: None)
    config_file = write_config(tmp_path / "tune.yaml", tune_dict)
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    best_path = tmp_path / "best.yaml"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    run = subprocess.run([sys.executable, str(script), str(config_file), url, str(best_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 17, run.stdout + run.stderr
    checkpoint = cfg.exp_dir / "trials" / "0" / cfg.experiment / "fold_0" / "state" / "last.pt"
    assert checkpoint.is_file()

    time.sleep(3)  # past the grace period: the dead trial's heartbeat is stale
    logs = []
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2,
                                         heartbeat_stale_trial_callback=retry)
    study = tune(cfg, trials=1, storage=storage, out_config=best_path, log=logs.append)

    killed, rerun = study.trials
    assert killed.state == optuna.trial.TrialState.FAIL
    assert rerun.state == optuna.trial.TrialState.COMPLETE
    assert rerun.params == killed.params
    assert rerun.user_attrs["output_dir"] == str(cfg.exp_dir / "trials" / "0")
    assert any("resuming after epoch 1/" in line for line in logs)
    assert set(rerun.intermediate_values) == {1}                  # resumed: only epoch 1 was trained
    assert load_config(best_path).train.lr == pytest.approx(rerun.params["train.lr"])


@pytest.mark.parametrize("space, needle", [
    ({"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}, "tune.space.train.lr.type"),
    ({"train.lr": {"type": "float", "low": 0.1}}, "tune.space.train.lr: type float needs high"),
    ({"train.lr": {"type": "float", "low": 0.5, "high": 0.1}}, "tune.space.train.lr: low"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "tune.space.train.lr: log"),
    ({"train.lrate": {"type": "float", "low": 0.1, "high": 1}},
     "tune.space.train.lrate: 'train.lrate' is not a config key. Did you mean 'train.lr'"),
    ({"output_dir": {"type": "categorical", "choices": ["a"]}},
     "tune.space.output_dir: 'output_dir' is not a training key"),
    ({"folds.n_splits": {"type": "int", "low": 2, "high": 5}}, "tune.space.folds.n_splits"),
    ({"model.name": {"type": "categorical", "choices": []}}, "tune.space.model.name.choices"),
    ({"train.optimizer": {"type": "categorical", "choices": ["adamw", "bogus"]}},
     "tune.space.train.optimizer: value 'bogus'"),
    ({"train.epochs": {"type": "float", "low": 1, "high": 3}}, "tune.space.train.epochs: value 1.0"),
    ({"train.epochs": {"type": "int", "low": 1.5, "high": 3}}, "tune.space.train.epochs.low"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 1, "lgo": True}}, "tune.space.train.lr: unknown field"),
    ({"train.lr": 0.1}, "tune.space.train.lr: expected a mapping"),
    ({}, "tune.space: empty"),
])
def test_bad_search_space_is_a_config_error_naming_the_key(tiny_cfg_dict, space, needle):
    cfg = load_config(None, {**tiny_cfg_dict, "tune": {"space": space}})
    with pytest.raises(ConfigError) as info:
        validate_space(cfg)
    assert needle in str(info.value)


def test_space_from_yaml_accepts_yaml_numbers(tiny_cfg_dict, tmp_path):
    text = "tune:\n  space:\n    train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n" \
           "    train.batch_size: {type: int, low: 16, high: 64, step: 16}\n"
    path = write_config(tmp_path / "c.yaml", {**tiny_cfg_dict, **yaml.safe_load(text)})
    space = validate_space(load_config(path))
    assert space["train.lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert space["train.batch_size"]["step"] == 16


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/mask.yaml"])
def test_the_shipped_configs_have_a_search_space_make_tune_accepts(config):
    """`make tune` works out of the box (it stopped with 'tune.space: empty' before)."""
    from pipeline.tools.tune import validate_space

    space = validate_space(load_config(REPO / config))
    assert "train.lr" in space and all(spec["type"] in ("float", "int", "categorical") for spec in space.values())
