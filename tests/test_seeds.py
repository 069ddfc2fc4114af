"""Several seeds on the same folds: averaged within each fold before the out-of-fold score; their stamps.

Each seed's fold files are written here (what `make train predict` leaves in seed_<s>/fold_<k>/); the
real merge and ensemble stages then run on them.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from pipeline.config import ConfigError, load_config, seed_config
from pipeline.fileio import read_table
from pipeline.results.ensemble_stage import ensemble
from pipeline.predict.seeds import merge_seeds
from pipeline.stamps import write_resolved

# Two classes, four train rows in two folds. Each seed alone gets half the rows right; their average
# gets every row right: 0.9/0.4 -> 0.65 (a), 0.6/0.1 -> 0.35 (b).
LABELS, FOLDS = ["a", "b", "a", "b"], [0, 0, 1, 1]
PROB_A = {0: [0.9, 0.6, 0.9, 0.6], 1: [0.4, 0.1, 0.4, 0.1]}


@pytest.fixture
def cfg(tmp_path):
    pd.DataFrame({"id": ["t0", "t1"], "label": "a"}).to_csv(tmp_path / "sample.csv", index=False)
    (tmp_path / "folds").mkdir()
    pd.DataFrame({"row": range(4), "image": [f"{i}.png" for i in range(4)], "label": LABELS,
                  "fold": FOLDS}).to_csv(tmp_path / "folds" / "f.csv", index=False)
    cfg = load_config(None, {"experiment": "s", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
                             "folds": {"n_splits": 2, "name": "f", "dir": str(tmp_path / "folds")},
                             # no training images here: the ensemble's leak check is skipped, with a note
                             "data": {"sample_submission": str(tmp_path / "sample.csv"),
                                      "train_csv": str(tmp_path / "train.csv")},
                             "tta": {"views": ["identity"]}, "ensemble": {"tau_grid": [0.0]}})
    for s, prob_a in PROB_A.items():
        one = seed_config(cfg, s)
        for k in range(2):
            rows = [i for i in range(4) if FOLDS[i] == k]
            out = one.fold_dir(k)
            out.mkdir(parents=True)
            (out / "weights.json").write_text(json.dumps({"classes": ["a", "b"]}))
            oof = pd.DataFrame({"row": rows, "label": [LABELS[i] for i in rows], "fold": k,
                                "prob_a": [prob_a[i] for i in rows], "prob_b": [1 - prob_a[i] for i in rows]})
            oof.to_csv(out / "oof.csv", index=False)
            oof.assign(**{"identity:prob_a": oof["prob_a"], "identity:prob_b": oof["prob_b"]}).to_csv(
                out / "oof_tta.csv", index=False)
            pd.DataFrame({"id": ["t0", "t1"], "prob_a": prob_a[:2], "prob_b": [1 - p for p in prob_a[:2]]}).to_csv(
                out / "test_probs.csv", index=False)
    return cfg


def test_seeds_are_averaged_within_each_fold_before_the_out_of_fold_score(cfg):
    for k in range(2):
        merge_seeds(cfg, k, log=lambda _: None)
    assert read_table(cfg.fold_dir(0) / "oof.csv")["prob_a"].round(6).tolist() == [0.65, 0.35]
    assert read_table(cfg.fold_dir(1) / "test_probs.csv")["prob_a"].round(6).tolist() == [0.65, 0.35]
    ensemble(cfg, log=lambda _: None)
    cv = read_table(cfg.exp_dir / "cv.csv").set_index("part")
    assert cv.loc["out-of-fold, no TTA", "accuracy"] == 1.0
    assert cv.loc["seed 0 alone: out-of-fold, TTA", "accuracy"] == 0.5
    assert cv.loc["seed 1 alone: out-of-fold, TTA", "accuracy"] == 0.5
    assert read_table(cfg.exp_dir / "submission.csv")["label"].tolist() == ["a", "b"]


def test_the_averaged_fold_divides_out_the_mean_of_the_prior_its_seeds_learned(cfg):
    learned = {0: [0.7, 0.3], 1: [0.5, 0.5]}
    for s, prior in learned.items():
        for k in range(2):
            (seed_config(cfg, s).fold_dir(k) / "train_prior.json").write_text(
                json.dumps({"classes": ["a", "b"], "prior": prior}))
    for k in range(2):
        merge_seeds(cfg, k, log=lambda _: None)
    assert json.loads((cfg.fold_dir(1) / "train_prior.json").read_text())["prior"] == [0.6, 0.4]
    notes = []
    ensemble(cfg, log=notes.append)
    assert not [n for n in notes if "train_prior.json is missing" in n]
    # a seed retrained without the file: the old average is removed, not kept beside the new probabilities
    (seed_config(cfg, 1).fold_dir(0) / "train_prior.json").unlink()
    merge_seeds(cfg, 0, log=lambda _: None)
    assert not (cfg.fold_dir(0) / "train_prior.json").exists()


def test_seeds_covering_other_rows_are_refused(cfg):
    path = seed_config(cfg, 1).fold_dir(0) / "oof.csv"
    read_table(path).assign(row=[0, 2]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="fold 0 oof.csv: seed #1 covers other rows"):
        merge_seeds(cfg, 0, log=lambda _: None)


def test_adding_a_seed_leaves_the_other_seeds_stamps_and_a_plain_run_s_stamps_as_they_were(cfg):
    write_resolved(cfg)
    stamp = seed_config(cfg, 0).run_dir / "stamps" / "train.json"
    before = stamp.stat().st_mtime_ns
    write_resolved(load_config(None, {**cfg.model_dump(), "seeds": [0, 1, 2]}))
    assert stamp.stat().st_mtime_ns == before
    assert json.loads(stamp.read_text())["seed"] == 0
    assert (cfg.exp_dir / "seed_2" / "stamps" / "train.json").is_file()
    # A config without seeds or pseudo-labels stamps no new key: its finished folds stay done.
    plain = load_config(None, {**cfg.model_dump(), "seeds": None, "experiment": "plain"})
    write_resolved(plain)
    keys = json.loads((plain.exp_dir / "stamps" / "train.json").read_text())
    assert not [k for k in keys if k == "seeds" or k.startswith("pseudo.")]


def test_one_seed_is_refused_in_favour_of_the_seed_key():
    with pytest.raises(ConfigError, match="seeds: must be null or a list of at least 2"):
        load_config(None, {"seeds": [3]})


def test_a_seeds_train_prior_of_other_classes_is_refused_with_its_file(cfg):
    for s in (0, 1):
        (seed_config(cfg, s).fold_dir(0) / "train_prior.json").write_text(
            json.dumps({"classes": ["a", "b"] if s == 0 else ["a", "c"], "prior": [0.5, 0.5]}))
    stale = seed_config(cfg, 1).fold_dir(0) / "train_prior.json"
    with pytest.raises(ValueError, match=f"{re.escape(str(stale))} lists classes"):
        merge_seeds(cfg, 0, log=lambda _: None)
