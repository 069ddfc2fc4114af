"""The offline bundle on tiny real runs: its predict.py, run with `python -I` from a temporary folder with the
package unimportable, writes the ensemble's submission, byte for byte (probabilities: within 1e-6).

Three runs, each a different path through the template: labels through `make ... bundle bundle-check`
(two checkpoints, four views, logit adjustment, class bias, prior shift auto); the binary variant (a
probability submission, images resized 32 -> 24 by albumentations, geometric TTA merge, prior shift em
re-estimated on the test images); a seeds run (two seeds per fold averaged as merge-seeds averages them,
a centre crop, logit-mean merge, hard vote, prior shift bbse).
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

pytestmark = pytest.mark.slow


def _quiet(*_):
    pass


def _finished_run(root, task: str, **overrides):
    """A tiny demo run of `task` (60 test images), trained, predicted and voted by the stages."""
    data = root / "data"
    make_demo_dataset(data, seed=0, scale=0.05, test_per_class=120, task=task)
    cfg = tiny_config_dict(root, data)
    cfg["data"]["demo_task"] = task
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    cfg = load_config(None, cfg)
    stages.resolve(cfg)
    stages.folds(cfg, log=_quiet)
    stages.train(cfg)
    stages.predict(cfg, log=_quiet)
    stages.ensemble(cfg, log=_quiet)
    return cfg


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("binary"), "odd", competition={"metric": "roc_auc"},
                         augment={"image_size": 24},
                         tta={"views": ["identity", "brightness_0.1", "contrast_1.2", "scale_1.1"],
                              "merge": "geometric_mean"},
                         ensemble={"prior_shift": "em", "class_bias": True})


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("seeds"), "digits", seeds=[0, 1],
                         augment={"pre_resize_crop": [30, 30]},
                         tta={"views": ["identity", "vflip"], "merge": "logit_mean"},
                         ensemble={"voting": "hard", "prior_shift": "bbse"})


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


def test_make_bundle_and_bundle_check_reproduce_the_labels_submission(tmp_path):
    cfg = tiny_config_dict(tmp_path, tmp_path / "data")
    cfg["tta"] = {"views": ["identity", "hflip", "scale_0.9", "rot90"], "merge": "mean"}
    cfg["ensemble"] = {"checkpoints": ["best", "last"], "logit_adjust": True, "class_bias": True,
                       "prior_shift": "auto"}
    config = write_config(tmp_path / "tiny.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "folds", "train", "ensemble", "bundle",
                             "bundle-check", f"CONFIG={config}"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[bundle-check] PASS" in result.stdout and "byte for byte" in result.stdout
    bundle = tmp_path / "outputs/demo/bundle"
    assert (bundle / "predict.py").read_bytes() == open(TEMPLATE, "rb").read()
    assert len(list((bundle / "weights").iterdir())) == 3 * 2        # every fold's best and last
    steps = [s["step"] for s in json.loads((bundle / "decisions.json").read_text())["steps"]]
    assert steps[0] == "prior_shift" and steps[-1] == "class_bias"


def test_the_binary_bundle_writes_the_ensembles_probabilities_and_estimates_the_prior_shift_again(binary, binary_bundle,
                                                                                                   tmp_path):
    bundle = binary_bundle
    decisions = (bundle / "decisions.json").read_text()
    assert '"mode": "em"' in decisions and "estimates" not in decisions   # the test mix is not carried over
    _offline(binary, bundle, tmp_path / "sub.csv", tmp_path / "explain.json")
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["submission"]["kind"] == "probability"
    result = compare_submissions(tmp_path / "sub.csv", binary.exp_dir / "submission.csv",
                                 numeric_columns(manifest["submission"], manifest["classes"]))
    assert result.equal and "byte for byte" in result.verdict, result.verdict    # 1e-6 is allowed; it is exact
    ours = json.loads((tmp_path / "explain.json").read_text())["prior_shift"]
    theirs = json.loads((binary.exp_dir / "ensemble.json").read_text())["prior_shift"]
    assert ours["applied"] and (ours["method"], ours["estimates"]) == (theirs["method"], theirs["estimates"])
    assert ours["p_value"] == pytest.approx(theirs["p_value"], rel=1e-9)


def test_a_seeds_bundle_votes_every_seeds_weights_averaged_as_merge_seeds_averages_them(seeds):
    bundle = stages.bundle(seeds, timing_images=8, log=_quiet)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [sorted(m["seed"] for m in f["members"]) for f in manifest["folds"]] == [[0, 1]] * 3
    result = check_bundle(seeds, log=_quiet)
    assert result.equal and "byte for byte" in result.verdict, result.verdict


def test_bundle_check_fails_when_the_bundle_does_not_reproduce_the_ensemble(binary, binary_bundle, tmp_path):
    bundle = shutil.copytree(binary_bundle, tmp_path / "bundle")
    decisions = json.loads((bundle / "decisions.json").read_text())
    decisions["steps"] = [s for s in decisions["steps"] if s["step"] != "prior_shift"]   # forgets the correction
    (bundle / "decisions.json").write_text(json.dumps(decisions))
    with pytest.raises(RuntimeError, match="does not reproduce the ensemble: differs .* on [0-9]+ of 60 rows"):
        check_bundle(binary, bundle=bundle, log=_quiet)


def _copy(cfg, tmp_path):
    """The run's outputs copied (times kept) under `tmp_path`, without a bundle: the same run, to damage."""
    shutil.copytree(cfg.output_dir, tmp_path / "outputs", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("bundle"))
    return load_config(None, {**config_to_dict(cfg), "output_dir": str(tmp_path / "outputs")})


@pytest.mark.parametrize("damage,message", [
    (lambda exp: (exp / "seed_1/fold_2/weights.safetensors").unlink(),
     r"^fold 2 \(seed 1\): .*weights.safetensors is missing: run `make train`"),
    (lambda exp: (exp / "seed_0/fold_1/weights.json").write_text(
        json.dumps({**json.loads((exp / "seed_0/fold_1/weights.json").read_text()), "fingerprint": "0" * 16})),
     r"^fold 1 \(seed 0\): .* was trained with another config .*fingerprint 0000000000000000"),
    (lambda exp: (exp / "ensemble.json").write_text(
        json.dumps({**json.loads((exp / "ensemble.json").read_text()), "submission_format": "top3"})),
     r"submission format 'top3' is not one the bundle can write"),
])
def test_a_bundle_it_cannot_stand_behind_is_refused_in_one_line_before_anything_is_written(seeds, tmp_path, damage,
                                                                                            message):
    cfg = _copy(seeds, tmp_path)
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
    assert json.loads((bundle / "decisions.json").read_text())["tta"]["views"] == ["identity"]
    assert sorted(p.name for p in (bundle / "weights").iterdir()) == ["fold_0-best.safetensors",
                                                                      "fold_1-best.safetensors"]
    assert any("dropped folds 2 and views brightness_0.1, contrast_1.2, scale_1.1" in line for line in lines)
    result = check_bundle(binary, bundle=bundle, log=lines.append)      # runs; differs as expected, no error
    assert "[bundle-check] PASS" in lines[-1] or "BUDGETED" in lines[-1], lines[-1]
    assert result.rows == 60


def test_a_budget_too_small_leaves_the_previous_bundle_untouched(binary, binary_bundle, tmp_path, one_second_per_view):
    bundle = shutil.copytree(binary_bundle, tmp_path / "bundle")
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    with pytest.raises(BudgetError, match="budget of 5 s for 10000 images is too small: even one fold with the "
                                          "identity view needs about 10 s"):
        stages.bundle(binary, out=bundle, budget=5.0, images_count=10_000, log=_quiet)
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
