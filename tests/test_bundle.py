"""The offline bundle on tiny real runs: its predict.py, run with `python -I` from a temporary folder with the
package unimportable, writes the ensemble's submission, byte for byte (probabilities: within 1e-6).

Three runs, each a different path through the template, each built once per module and shared:

* labels (the demo's digits): `tta.select: auto` and `ensemble.checkpoints: auto` over best and last, logit
  adjustment and class bias forced on, the prior shift `calibrated_em` forced on (refitted on the test images);
* the binary variant (demo-odd): a probability submission, images resized 32 -> 24 by albumentations, four
  views merged geometrically, the prior shift `auto` (re-decided on the test images);
* a `SEEDS=` run (two folds) trained by the stages, then `make bundle bundle-check SEEDS="0 1"`: two seeds per
  fold averaged as merge-seeds averages them, a centre crop, logit-mean merge, hard vote, the prior shift `bbse`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pipeline import stages
from pipeline.bundle import BudgetError, BundleRefused, check_bundle
from pipeline.bundle.check import compare_submissions, numeric_columns, run_offline
from pipeline.bundle.predict_template import __file__ as TEMPLATE
from pipeline.competitions.demo import make_demo_dataset
from pipeline.config import config_to_dict, load_config
from tests.conftest import REPO, tiny_config_dict, write_config


def _quiet(*_):
    pass


def _config(root, task: str, **overrides) -> dict:
    cfg = tiny_config_dict(root, root / "data")
    cfg["data"]["demo_task"] = task
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def _finished_run(root, task: str, overrides=None, **sections):
    """A tiny demo run of `task`, trained, predicted and voted by the stages in Make's order, so that Make finds
    every file up to date: the config's stamps, the data, then the images' manifests (a second resolve)."""
    path = write_config(root / "tiny.yaml", _config(root, task, **sections))
    cfg = load_config(path, overrides)
    stages.resolve(cfg)
    make_demo_dataset(cfg.data.image_root, seed=0, scale=0.05, test_per_class=120, task=task)   # 60 test images
    stages.resolve(cfg)
    stages.folds(cfg, log=_quiet)
    stages.train(cfg)
    stages.predict(cfg, log=_quiet)
    stages.ensemble(cfg, log=_quiet)
    return cfg


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("labels"), "digits", folds={"n_splits": 2},
                         tta={"views": ["identity", "hflip", "scale_0.9"], "select": "auto"},
                         ensemble={"checkpoints": "auto", "logit_adjust": "on", "class_bias": "on",
                                   "prior_shift": "calibrated_em"})


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("binary"), "odd", competition={"metric": "roc_auc"},
                         augment={"image_size": 24},
                         tta={"views": ["identity", "brightness_0.1", "contrast_1.2", "scale_1.1"],
                              "merge": "geometric_mean"},
                         ensemble={"prior_shift": "auto"})


@pytest.fixture(scope="module")
def seeds_make(tmp_path_factory):
    """A SEEDS= run (trained by the stages), then `make bundle bundle-check SEEDS="0 1"`: (its config, Make's output)."""
    cfg = _finished_run(tmp_path_factory.mktemp("seeds"), "digits", ["seeds=[0,1]"], folds={"n_splits": 2},
                        augment={"pre_resize_crop": [30, 30]}, tta={"views": ["identity", "vflip"], "merge": "logit_mean"},
                        ensemble={"voting": "hard", "prior_shift": "bbse"})
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "bundle", "bundle-check",
                             f"CONFIG={cfg.exp_dir.parent.parent / 'tiny.yaml'}", "SEEDS=0 1"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cfg, result.stdout


@pytest.fixture(scope="module")
def labels_bundle(labels):
    return stages.bundle(labels, timing_images=8, log=_quiet)


@pytest.fixture(scope="module")
def binary_bundle(binary):
    return stages.bundle(binary, timing_images=8, log=_quiet)


@pytest.fixture
def one_second_per_view(monkeypatch):
    """Build-time timings replaced by constructed ones: 1 s per 1,000 images for each fold on each view."""
    import pipeline.bundle.build as build

    def measured(folder, manifest, decisions, paths, device, batch_size, log):
        folds, views = [str(f["fold"]) for f in manifest["folds"]], decisions["tta"]["views"]
        return {"measured_on": {"device": "cpu"}, "decode_per_1000": 0.0, "load": {k: 0.0 for k in folds},
                "fold_view_per_1000": {k: {v: 1.0 for v in views} for k in folds}}
    monkeypatch.setattr(build, "measure_timing", measured)


def _offline(cfg, bundle, out, explain=None):
    run = run_offline(bundle, cfg.data.image_root, cfg.data.sample_submission, out, explain=explain)
    assert run.returncode == 0, run.stderr
    return run


def _compare(cfg, bundle, ours):
    manifest = json.loads((bundle / "bundle.json").read_text())
    return compare_submissions(ours, cfg.exp_dir / "submission.csv",
                               numeric_columns(manifest["submission"], manifest["classes"]))


def test_the_labels_bundle_votes_the_chains_views_and_checkpoints_and_refits_the_prior_shift(labels, labels_bundle,
                                                                                               tmp_path):
    record = json.loads((labels.exp_dir / "ensemble.json").read_text())
    entry, decisions = record["submission"], json.loads((labels_bundle / "decisions.json").read_text())
    assert (decisions["tta"]["views"], decisions["checkpoints"]) == (entry["views"], entry["checkpoints"])
    names = sorted(p.name for p in (labels_bundle / "weights").iterdir())
    assert names == sorted(f"fold_{k}-{c}.safetensors" for k in range(2) for c in entry["checkpoints"])
    assert (labels_bundle / "predict.py").read_bytes() == open(TEMPLATE, "rb").read()
    assert "estimate" not in json.dumps(decisions["prior_shift"])          # the test mix is not carried over
    _offline(labels, labels_bundle, tmp_path / "sub.csv", tmp_path / "explain.json")
    result = _compare(labels, labels_bundle, tmp_path / "sub.csv")
    assert result.equal and "byte for byte" in result.verdict, result.verdict
    ours = json.loads((tmp_path / "explain.json").read_text())
    theirs = next(d for d in record["chain"] if d["step"] == "prior_shift")
    assert ours["prior_shift"]["applied"] and theirs["applied"]
    assert ours["prior_shift"]["estimate"] == pytest.approx(theirs["fitted"]["estimate"], rel=1e-9, abs=1e-12)
    assert ours["log_factor"] == pytest.approx(entry["log_factor"], rel=1e-9, abs=1e-12)


def test_the_binary_bundle_writes_the_ensembles_probabilities_and_decides_the_prior_shift_again(binary, binary_bundle,
                                                                                                 tmp_path):
    _offline(binary, binary_bundle, tmp_path / "sub.csv", tmp_path / "explain.json")
    assert json.loads((binary_bundle / "bundle.json").read_text())["submission"]["kind"] == "probability"
    result = _compare(binary, binary_bundle, tmp_path / "sub.csv")
    assert result.equal, result.verdict
    ours = json.loads((tmp_path / "explain.json").read_text())["prior_shift"]
    theirs = json.loads((binary.exp_dir / "ensemble.json").read_text())["prior_shift"]
    assert ours["setting"] == "auto" and ours["applied"] == theirs["applied"]
    assert ours["p_value"] == pytest.approx(theirs["p_value"], rel=1e-9)
    assert ours["g_statistic"] == pytest.approx(theirs["g_statistic"], rel=1e-9)
    assert ours["estimate"] == pytest.approx(theirs["estimates"]["calibrated_em"], rel=1e-9, abs=1e-12)


def test_make_bundle_and_bundle_check_on_a_seeds_run_vote_every_seeds_weights(seeds_make):
    cfg, stdout = seeds_make
    ran = [line.split(" -m pipeline ")[1].split()[0] for line in stdout.splitlines() if " -m pipeline " in line]
    assert ran == ["bundle", "bundle-check"], stdout[-2000:]          # the run was up to date: nothing retrained
    assert "[bundle-check] PASS" in stdout and "byte for byte" in stdout, stdout[-2000:]
    manifest = json.loads((cfg.exp_dir / "bundle/bundle.json").read_text())
    assert [sorted(m["seed"] for m in f["members"]) for f in manifest["folds"]] == [[0, 1]] * 2
    assert (cfg.exp_dir / "bundle/oof.safetensors").is_file()          # BBSE inverts the OOF confusion matrix


def test_bundle_check_fails_when_the_bundle_does_not_reproduce_the_ensemble(labels, labels_bundle, tmp_path):
    bundle = shutil.copytree(labels_bundle, tmp_path / "bundle")
    decisions = json.loads((bundle / "decisions.json").read_text())
    decisions["prior_shift"] = None                                     # forgets the correction
    (bundle / "decisions.json").write_text(json.dumps(decisions))
    with pytest.raises(RuntimeError, match="does not reproduce the ensemble: differs .* on [1-9][0-9]* of 60 rows"):
        check_bundle(labels, bundle=bundle, log=_quiet)


def _copy(cfg, tmp_path):
    """The run's outputs copied (times kept) under `tmp_path`, without a bundle: the same run, to damage."""
    shutil.copytree(cfg.output_dir, tmp_path / "outputs", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("bundle"))
    return load_config(None, {**config_to_dict(cfg), "output_dir": str(tmp_path / "outputs")})


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage,message", [
    (lambda exp: (exp / "seed_1/fold_1/weights.safetensors").unlink(),
     r"^fold 1 \(seed 1\): .*weights.safetensors is missing: run `make train`"),
    (lambda exp: _edit_json(exp / "seed_0/fold_1/weights.json", fingerprint="0" * 16),
     r"^fold 1 \(seed 0\): .* was trained with another config .*fingerprint 0000000000000000"),
    (lambda exp: _edit_json(exp / "ensemble.json", submission_format="top3"),
     r"submission format 'top3' is not one the bundle can write"),
    (lambda exp: _edit_json(exp / "ensemble.json", submission={"format": "kfold-tta-pipeline/ensemble-1"}),
     r"ensemble.json has no `submission` entry of format kfold-tta-pipeline/ensemble-2 .*run `make ensemble`$"),
    (lambda exp: (exp / "fold_0/test_probs.csv").write_text((exp / "fold_1/test_probs.csv").read_text()),
     r"ensemble.json is not what the experiment's files give now .*: run `make ensemble`$"),
])
def test_a_bundle_it_cannot_stand_behind_is_refused_in_one_line_before_anything_is_written(seeds_make, tmp_path, damage,
                                                                                            message):
    cfg = _copy(seeds_make[0], tmp_path)
    os.utime(cfg.exp_dir / "ensemble.json")          # newer than every weights file, as after `make ensemble`
    damage(cfg.exp_dir)
    with pytest.raises(BundleRefused, match=message) as refused:
        stages.bundle(cfg, timing_images=8, log=_quiet)
    assert "\n" not in str(refused.value)
    assert not (cfg.exp_dir / "bundle").exists()


def test_a_budget_keeps_what_fits_deletes_the_rest_and_the_bundle_still_runs(binary, tmp_path, one_second_per_view):
    lines = []
    bundle = stages.bundle(binary, out=tmp_path / "bundle", budget=2.0, images_count=1000, log=lines.append)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [f["fold"] for f in manifest["folds"]] == [0, 1] and manifest["budget"]["dropped_folds"] == [2]
    kept = json.loads((bundle / "decisions.json").read_text())["tta"]["views"]
    assert len(kept) == 1 and manifest["budget"]["kept_views"] == kept
    assert sorted(p.name for p in (bundle / "weights").iterdir()) == ["fold_0-best.safetensors",
                                                                      "fold_1-best.safetensors"]
    assert any(line.startswith("[bundle] kept folds 0, 1 and views " + kept[0]) for line in lines), lines
    result = check_bundle(binary, bundle=bundle, log=lines.append)      # runs; differs as expected, no error
    assert "[bundle-check] PASS" in lines[-1] or "BUDGETED" in lines[-1], lines[-1]
    assert result.rows == 60


def test_a_budget_too_small_leaves_the_previous_bundle_untouched(binary, binary_bundle, tmp_path, one_second_per_view):
    bundle = shutil.copytree(binary_bundle, tmp_path / "bundle")
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    with pytest.raises(BudgetError, match="budget of 5 s for 10000 images is too small: even one fold with one "
                                          "view needs about 10 s"):
        stages.bundle(binary, out=bundle, budget=5.0, images_count=10_000, log=_quiet)
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before


def test_a_config_that_scales_16_bit_images_is_refused_before_anything_is_read(tmp_path):
    cfg = load_config(None, {**tiny_config_dict(tmp_path, tmp_path / "data"), "data": {"high_bit_depth": "range"}})
    with pytest.raises(BundleRefused, match="^data.high_bit_depth: 'range': the bundle's predict.py decodes 8-bit"):
        stages.bundle(cfg, log=_quiet)
    assert not (cfg.exp_dir / "bundle").exists()
