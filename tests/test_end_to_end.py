"""The real `make folds train ensemble score` on a tiny slice of the demo, then the no-op rerun.

Runs Make as a user would (in the repository, CONFIG pointing at a config whose outputs
all live in tmp_path), and checks the files Make leaves behind.
"""

import os
import subprocess

import pandas as pd
import pytest

from tests.conftest import REPO, tiny_config_dict, write_config

pytestmark = pytest.mark.slow


def _make(*targets, config, extra=()):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *targets, f"CONFIG={config}", *extra],
                          capture_output=True, text=True, env=env)


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = tiny_config_dict(root, root / "data")
    config = write_config(root / "tiny.yaml", cfg)
    # -j2: two folds train at once in separate processes, each writing only its own fold_<k>/
    result = _make("-j2", "folds", "train", "ensemble", "score", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, config, result


def test_submission_matches_sample_exactly(run):
    root, _, _ = run
    sub = pd.read_csv(root / "outputs/demo/submission.csv")
    sample = pd.read_csv(root / "data/sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == sample["id"].tolist()  # same ids, same order
    train_labels = set(pd.read_csv(root / "data/train.csv")["label"])
    assert set(sub["label"]) <= train_labels  # original (string) labels, not class indices
    assert sub["label"].tolist() == soft_vote_labels(root / "outputs/demo", 3)   # the folds' vote, row for row


def soft_vote_labels(exp, k: int) -> list[str]:
    """What a soft vote of the fold files gives, computed here from the files the predict stage wrote."""
    import json

    import numpy as np

    classes = json.loads((exp / "fold_0" / "weights.json").read_text())["classes"]
    probs = np.mean([pd.read_csv(exp / f"fold_{f}" / "test_probs.csv")[[f"prob_{c}" for c in classes]].to_numpy()
                     for f in range(k)], axis=0)
    return [classes[i] for i in probs.argmax(axis=1)]


def test_every_fold_wrote_its_files_and_the_cv_table(run):
    root, _, result = run
    exp = root / "outputs/demo"
    for k in range(3):
        for name in ("weights.safetensors", "weights.json", "metrics.csv", "oof.csv", "test_probs.csv"):
            assert (exp / f"fold_{k}" / name).is_file(), name
        meta = pd.read_json(exp / f"fold_{k}" / "weights.json", typ="series")
        assert meta["fold"] == k  # each parallel process wrote its own fold's files
        assert set(pd.read_csv(exp / f"fold_{k}" / "oof.csv")["fold"]) == {k}
        assert not (exp / f"fold_{k}" / "state").exists()  # checkpoint removed once the fold is done
    oof = pd.read_csv(exp / "oof.csv")
    assert sorted(oof["row"]) == list(range(len(pd.read_csv(root / "data/train.csv"))))  # each row once
    assert "out-of-fold" in result.stdout and "submission.csv" in result.stdout  # cv + score tables printed
    score = pd.read_csv(exp / "score.csv")
    assert {"fold 0", "soft vote (submission)", "hard vote", "submission.csv"} <= set(score["model"])


def test_second_run_does_no_work(run):
    root, config, _ = run
    before = _mtimes(root / "outputs")
    assert _make("-q", "folds", "train", "ensemble", config=config).returncode == 0  # -q: 0 = up to date
    result = _make("folds", "train", "ensemble", config=config)
    assert result.returncode == 0 and "pipeline" not in result.stdout, result.stdout
    assert _mtimes(root / "outputs") == before


def test_voting_change_revotes_without_retraining(run):
    root, config, _ = run
    exp = root / "outputs/demo"
    before = _mtimes(exp)
    result = _make("ensemble", config=config, extra=["SET=ensemble.voting=hard"])
    assert result.returncode == 0, result.stderr
    after = _mtimes(exp)
    assert after[exp / "submission.csv"] != before[exp / "submission.csv"]
    for k in range(3):
        for name in ("weights.safetensors", "test_probs.csv"):
            assert after[exp / f"fold_{k}" / name] == before[exp / f"fold_{k}" / name]
    assert "hard vote of 3 folds" in result.stdout   # the submission line names the vote


def test_retraining_one_fold_repredicts_only_that_fold(run):
    root, config, _ = run
    exp = root / "outputs/demo"
    assert _make("retrain", "FOLD=1", config=config).returncode == 0
    before = _mtimes(exp)
    result = _make("ensemble", config=config)
    assert result.returncode == 0, result.stderr
    after = _mtimes(exp)
    assert after[exp / "fold_1/test_probs.csv"] != before[exp / "fold_1/test_probs.csv"]
    for k in (0, 2):
        assert after[exp / f"fold_{k}/test_probs.csv"] == before[exp / f"fold_{k}/test_probs.csv"]
    assert after[exp / "submission.csv"] != before[exp / "submission.csv"]


def test_invalid_config_stops_make_before_any_work(tmp_path):
    cfg = tiny_config_dict(tmp_path, tmp_path / "data")
    cfg["train"]["lerning_rate"] = 0.1
    result = _make("folds", config=write_config(tmp_path / "bad.yaml", cfg))
    assert result.returncode != 0
    assert "unknown key 'train.lerning_rate'" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "folds").exists()


def test_clean_beside_other_goals_stops_before_deleting_anything(tmp_path):
    """`make clean folds` would delete the stamps Make just resolved for `folds`: it refuses, removing nothing."""
    config = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path, tmp_path / "data"))
    keep = REPO / "outputs" / f"kept-by-test-{os.getpid()}"
    keep.write_text("clean must not run")
    try:
        result = _make("clean", "folds", config=config)
        assert result.returncode != 0 and keep.exists()
        assert "`make clean` runs on its own: `make clean && make folds`" in result.stderr
    finally:
        keep.unlink(missing_ok=True)


# ---- nothing stale: Make sees the content of what a stage reads ------------------------------------

def _folds_files(exp, name):
    return {k: (exp / f"fold_{k}" / name).stat().st_mtime_ns for k in range(3)}


def test_changed_test_image_and_reordered_sample_repredict_without_retraining(run):
    root, config, _ = run
    exp, test = root / "outputs/demo", root / "data/test"
    weights, probs = _folds_files(exp, "weights.safetensors"), _folds_files(exp, "test_probs.csv")
    images = sorted(test.glob("*.png"))
    images[0].write_bytes(images[1].read_bytes())          # new pixels for one test id
    sample = root / "data/sample_submission.csv"
    lines = sample.read_text().splitlines()
    sample.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")   # the same ids, another order
    assert _make("-q", "ensemble", config=config).returncode != 0   # Make sees both before doing anything
    result = _make("ensemble", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    after = _folds_files(exp, "test_probs.csv")
    assert all(after[k] != probs[k] for k in range(3))          # every fold predicted again
    assert _folds_files(exp, "weights.safetensors") == weights  # nothing retrained
    sub = pd.read_csv(exp / "submission.csv", dtype=str)
    assert sub["id"].tolist() == [line.split(",")[0] for line in reversed(lines[1:])]
    assert _make("-q", "ensemble", config=config).returncode == 0   # and now it is up to date


def test_changed_training_image_retrains_every_fold_it_could_reach(run):
    root, config, _ = run
    exp = root / "outputs/demo"
    weights = _folds_files(exp, "weights.safetensors")
    train = pd.read_csv(root / "data/train.csv", dtype=str)
    target = root / "data" / train["image"][0]
    target.write_bytes((root / "data" / train["image"][5]).read_bytes())
    assert _make("-q", "train", config=config).returncode != 0     # Make sees it before doing anything
    result = _make("train", config=config)
    assert result.returncode == 0, result.stderr
    after = _folds_files(exp, "weights.safetensors")
    assert all(after[k] != weights[k] for k in range(3))            # a fold that trains on it or validates on it
    assert "already trained" not in result.stdout                   # not skipped as done by its old sidecar


def test_a_second_experiment_on_the_same_data_and_folds_leaves_the_first_up_to_date(run, tmp_path):
    """A new experiment (another backbone, `folds.name` of the first) neither rewrites the data nor the folds
    file they share, so the first experiment needs no retraining afterwards."""
    import yaml

    root, config, _ = run
    assert _make("ensemble", config=config).returncode == 0            # the first experiment, up to date
    second = yaml.safe_load(config.read_text())
    second.update(experiment="second", folds=dict(second["folds"], name="demo"))
    before = _mtimes(root / "data") | _mtimes(root / "folds")
    result = _make("folds", config=write_config(tmp_path / "second.yaml", second))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _mtimes(root / "data") | _mtimes(root / "folds") == before
    assert _make("-q", "ensemble", config=config).returncode == 0, "the first experiment went stale"
