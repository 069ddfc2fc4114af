"""Prior shift: the effective training prior, the test-mix estimates, the shift test, `auto`'s decision
(synthetic posteriors of a known model, no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data.sampling import balanced_sample_weights, epoch_class_frequencies, oversample_indices
from pipeline.fileio import write_json_atomic
from pipeline.results.ensemble_stage import ensemble
from pipeline.ensemble.label_shift import bbse_prior, em_prior, reweight, shift_test
from pipeline.ensemble.steps.factors import apply_log_factor
from pipeline.ensemble.steps.prior_shift import fit_estimator
from pipeline.results.score import score
from pipeline.ensemble.voting import logit_adjust
from pipeline.report.prior_section import prior_shift_section
from pipeline.stamps import write_resolved
from pipeline.train.prior import train_prior_record

CLASSES = ["cat", "dog", "fox"]
MEANS = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.7]])   # three overlapping Gaussian classes
TRAIN_MIX = np.array([0.75, 0.2, 0.05])                 # the labels' (and OOF rows') mix
MODEL_PRIOR = np.array([0.5, 0.3, 0.2])                 # what oversampling made the model learn
QUIET = dict(log=lambda *_: None)


def _sample(mix, n: int, seed: int, prior=MODEL_PRIOR):
    """`n` rows drawn from `mix` and the exact posteriors of a model that assumes `prior`."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(mix), size=n, p=mix)
    x = MEANS[y] + rng.normal(scale=1.0, size=(n, 2))
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    post = np.exp(log_lik) * prior
    return post / post.sum(axis=1, keepdims=True), y


@pytest.mark.parametrize("mix", [[1 / 3, 1 / 3, 1 / 3], [0.05, 0.2, 0.75]])
def test_em_and_bbse_recover_the_test_mix_from_predictions_alone(mix):
    test, _ = _sample(mix, 4000, seed=1)
    oof, oof_y = _sample(TRAIN_MIX, 4000, seed=2)
    em, _ = em_prior(test, MODEL_PRIOR)
    assert np.abs(em - mix).max() < 0.03
    # BBSE inverts a confusion matrix whose rare column rests on ~200 rows: noisier than EM
    assert np.abs(bbse_prior(oof, oof_y, test) - mix).max() < 0.08
    assert np.abs(em_prior(oof, MODEL_PRIOR)[0] - TRAIN_MIX).max() < 0.03   # no shift: the OOF mix itself


def test_a_class_the_test_set_never_gets_keeps_a_positive_bbse_share_that_can_be_corrected_with():
    oof, oof_y = _sample(TRAIN_MIX, 600, seed=7)
    test, _ = _sample([0.5, 0.5, 0.0], 200, seed=8)
    q = bbse_prior(oof, oof_y, test)
    assert (q > 0).all() and q[2] < 0.05
    assert np.isfinite(reweight(test, MODEL_PRIOR, q)).all()


def test_the_shift_test_tells_a_shifted_mix_from_a_fresh_sample_of_the_same_one():
    oof, _ = _sample(TRAIN_MIX, 2000, seed=3)
    same, _ = _sample(TRAIN_MIX, 300, seed=4)
    balanced, _ = _sample([1 / 3, 1 / 3, 1 / 3], 300, seed=5)
    assert shift_test(oof, same)[1] > 0.05
    assert shift_test(oof, balanced)[1] < 1e-6


def test_the_correction_recovers_the_bayes_decisions_and_commutes_with_logit_adjustment():
    test, y = _sample([1 / 3, 1 / 3, 1 / 3], 3000, seed=6)
    uniform = np.full(3, 1 / 3)
    truth, _ = _sample([1 / 3, 1 / 3, 1 / 3], 3000, seed=6, prior=uniform)   # a model of the test mix
    corrected = reweight(test, MODEL_PRIOR, uniform)
    np.testing.assert_allclose(corrected, truth, atol=1e-12)
    both = [reweight(logit_adjust(test, MODEL_PRIOR, 0.5), MODEL_PRIOR, uniform),
            logit_adjust(reweight(test, MODEL_PRIOR, uniform), MODEL_PRIOR, 0.5)]
    np.testing.assert_allclose(both[0], both[1], atol=1e-12)
    assert (corrected.argmax(1) == y).mean() > (test.argmax(1) == y).mean()


def test_epoch_frequencies_are_what_the_samplers_draw():
    labels = np.repeat(["a", "b", "c"], [40, 9, 3])
    counts = np.array([40, 9, 3])
    drawn = np.bincount(np.unique(labels, return_inverse=True)[1][oversample_indices(labels, 0.5, seed=0)])
    np.testing.assert_allclose(epoch_class_frequencies(counts, "oversample", 0.5), drawn / drawn.sum())
    per_class = np.bincount(np.unique(labels, return_inverse=True)[1], weights=balanced_sample_weights(labels))
    np.testing.assert_allclose(epoch_class_frequencies(counts, "balanced", 1.0), per_class)
    np.testing.assert_allclose(epoch_class_frequencies(counts, "none", 1.0), counts / counts.sum())


def test_balanced_class_weights_and_smoothing_enter_the_recorded_prior():
    targets = np.repeat([0, 1, 2], [60, 30, 10])
    cfg = load_config(None, {"sampling": {"method": "none"}, "loss": {"name": "weighted_ce"}})
    np.testing.assert_allclose(train_prior_record(cfg, targets, CLASSES)["prior"], [1 / 3] * 3, atol=1e-7)
    cfg = load_config(None, {"sampling": {"method": "none"}, "loss": {"label_smoothing": 0.3}})
    np.testing.assert_allclose(train_prior_record(cfg, targets, CLASSES)["prior"],
                               0.7 * np.array([0.6, 0.3, 0.1]) + 0.1, atol=1e-7)
    cfg = load_config(None, {"sampling": {"method": "none"}, "loss": {"name": "f1", "label_smoothing": 0.3}})
    np.testing.assert_allclose(train_prior_record(cfg, targets, CLASSES)["prior"], [0.6, 0.3, 0.1], atol=1e-7)


# ---- the ensemble stage on synthetic probability files ------------------------------------------

K, N_OOF, N_TEST = 3, 900, 300


def _experiment(root, test_mix, name="exp", prior_file=True, n_oof=N_OOF, n_test=N_TEST, metric="f1_macro",
                **ensemble_keys):
    """outputs/<name>/ as training and prediction leave it; the test labels file does NOT exist."""
    oof, y = _sample(TRAIN_MIX, n_oof, seed=10)
    test, test_y = _sample(test_mix, n_test, seed=11)
    ids = [f"t{i:04d}" for i in range(n_test)]
    pd.DataFrame({"id": ids, "label": "cat"}).to_csv(root / "sample_submission.csv", index=False)
    cfg = load_config(None, {"experiment": name, "output_dir": str(root / "outputs"),
                             "folds": {"n_splits": K, "dir": str(root / "folds")},
                             "ensemble": {"logit_adjust": "off", "class_bias": "off", **ensemble_keys},
                             "competition": {"metric": metric},
                             "data": {"sample_submission": str(root / "sample_submission.csv"),
                                      "train_csv": str(root / "train.csv"),
                                      "test_labels": str(root / f"{name}_labels.csv")}})
    write_resolved(cfg)
    folds = np.arange(n_oof) % K
    rng = np.random.default_rng(12)
    for k in range(K):
        d = cfg.fold_dir(k)
        d.mkdir(parents=True)
        write_json_atomic(d / "weights.json", {"model": "x", "classes": CLASSES, "fold": k})
        if prior_file:
            write_json_atomic(d / "train_prior.json", {"classes": CLASSES, "prior": MODEL_PRIOR.tolist()})
        rows = np.flatnonzero(folds == k)
        frame = pd.DataFrame({"row": rows, "label": np.array(CLASSES)[y[rows]], "fold": k})
        frame[[f"prob_{c}" for c in CLASSES]] = oof[rows]
        frame.to_csv(d / "oof.csv", index=False)
        noisy = test * rng.uniform(0.9, 1.1, size=test.shape)   # each fold's model a little different
        pd.DataFrame({"id": ids, **{f"prob_{c}": noisy[:, i] for i, c in enumerate(CLASSES)}}).to_csv(
            d / "test_probs.csv", index=False)
    return cfg, test_y


def _outputs(cfg):
    record = json.loads((cfg.exp_dir / "ensemble.json").read_text())["prior_shift"]
    submitted = pd.read_csv(cfg.exp_dir / "submission.csv")["label"].map(CLASSES.index).to_numpy()
    probs = np.stack([pd.read_csv(cfg.fold_dir(k) / "test_probs.csv")[[f"prob_{c}" for c in CLASSES]].to_numpy()
                      for k in range(K)]).mean(axis=0)
    return record, submitted, probs


REVERSED = [0.05, 0.2, 0.75]
LARGE = dict(n_oof=3000, n_test=1500)


def _labels_file(cfg, test_y):
    pd.DataFrame({"id": [f"t{i:04d}" for i in range(len(test_y))], "label": np.array(CLASSES)[test_y]}).to_csv(
        cfg.data.test_labels, index=False)


def _step(cfg, name="prior_shift"):
    return next(s for s in json.loads((cfg.exp_dir / "ensemble.json").read_text())["chain"] if s["step"] == name)


def test_auto_corrects_a_shifted_test_set_without_reading_its_labels(tmp_path):
    """The reversed mix: a shift the test finds, estimated within a tenth of it on simulated test sets, whose
    correction gains more than twice its noise there; the submission is the calibrated correction's."""
    cfg, test_y = _experiment(tmp_path, REVERSED, **LARGE)
    assert not Path(cfg.data.test_labels).exists()            # nothing to read: the stage cannot have used labels
    ensemble(cfg, **QUIET)
    record, submitted, probs = _outputs(cfg)
    assert record["applied"] and record["method"] == "calibrated_em" and record["p_value"] < 0.01
    assert np.abs(np.array(record["estimates"]["calibrated_em"]) - REVERSED).max() < 0.06
    np.testing.assert_allclose(record["model_prior"], MODEL_PRIOR, atol=1e-6)
    step = _step(cfg)
    assert step["gain"] > 2 * step["noise"] and step["simulation"]["estimate_l1_error"] < step["simulation"]["shift_l1"] / 10
    expected = apply_log_factor(probs, record["log_factors"]["calibrated_em"]).argmax(axis=1)
    assert (submitted == expected).mean() > 0.99 and (submitted != probs.argmax(axis=1)).any()
    cv_md = (cfg.exp_dir / "cv.md").read_text()
    for text in ["simulated balanced mix: EM correction", "simulated reversed mix: no correction (the posteriors' prior",
                 "simulated training mix: auto's shift test (unchanged", "estimated by EM", "by calibrated EM",
                 "simulated estimated mix", "auto: its simulated gain exceeds 2 x its noise"]:
        assert text in cv_md, text
    section = prior_shift_section(cfg, CLASSES)
    assert "data:image/png;base64," in section and "the calibrated EM correction was applied" in section

    _labels_file(cfg, test_y)
    table = score(cfg, **QUIET).set_index("model")
    assert table.loc["soft vote + prior-shift correction (calibrated_em) (submission)", "f1_macro"] == \
        table.loc["submission.csv", "f1_macro"] > table.loc["soft vote", "f1_macro"] + 0.05   # it did help
    assert "submission without prior-shift correction (calibrated_em)" in table.index


def test_auto_leaves_a_test_set_with_the_training_mix_unchanged(tmp_path):
    cfg, _ = _experiment(tmp_path, TRAIN_MIX)
    ensemble(cfg, **QUIET)
    record, submitted, probs = _outputs(cfg)
    assert not record["applied"] and record["p_value"] >= 0.01 and "no shift found" in record["why"]
    assert (submitted == probs.argmax(axis=1)).all()
    assert "no shift found" in (cfg.exp_dir / "cv.md").read_text()
    assert "the submission was left unchanged" in prior_shift_section(cfg, CLASSES)


def test_auto_leaves_a_correction_that_hurts_after_the_logit_adjustment(tmp_path):
    """A balanced test set, and a logit adjustment (tau 1) that has already balanced the decisions: correcting
    for the balanced mix counts the imbalance twice. The simulation, run on the adjusted decisions, shows the
    loss; the held-back labels confirm it."""
    cfg, test_y = _experiment(tmp_path, [1 / 3, 1 / 3, 1 / 3], logit_adjust="on", tau_grid=[1.0], **LARGE)
    ensemble(cfg, **QUIET)
    step = _step(cfg)
    assert step["gain"] < 0 and not step["applied"] and step["simulation"]["shift_p_value"] < 0.01
    _labels_file(cfg, test_y)
    table = score(cfg, **QUIET).set_index("model")
    assert table.loc["submission + prior-shift correction (calibrated_em) (not applied)", "f1_macro"] < \
        table.loc["submission.csv", "f1_macro"]


def test_auto_leaves_the_vote_alone_when_the_estimate_is_unreliable(tmp_path):
    """40 test rows: the estimate's error on simulated test sets of that size is more than half the shift it
    estimates (the shift test's alpha raised so that it does not stop first)."""
    cfg, _ = _experiment(tmp_path, [0.6, 0.3, 0.1], n_test=40, prior_shift_alpha=0.99)
    ensemble(cfg, **QUIET)
    record, submitted, probs = _outputs(cfg)
    assert not record["applied"] and "the estimate is unreliable" in record["why"]
    sim = _step(cfg)["simulation"]
    assert sim["estimate_l1_error"] > sim["shift_l1"] / 2
    assert (submitted == probs.argmax(axis=1)).all()


@pytest.mark.parametrize("method", ["em", "bbse", "calibrated_em"])
def test_a_forced_method_is_applied_whatever_its_gain(tmp_path, method):
    cfg, _ = _experiment(tmp_path, TRAIN_MIX, prior_shift=method)
    ensemble(cfg, **QUIET)
    record, submitted, probs = _outputs(cfg)
    assert record["applied"] and record["method"] == method and record["why"] == f"forced on (ensemble.prior_shift: {method})"
    expected = apply_log_factor(probs, record["log_factors"][method]).argmax(axis=1)
    assert (submitted == expected).mean() > 0.99


def test_calibration_fixes_the_em_estimate_of_overconfident_posteriors():
    """Posteriors three times too sharp (a temperature of 3): EM from the model prior misreads a balanced test
    set; bias-corrected temperature scaling on the OOF rows first recovers it."""
    sharpen = lambda p: p ** 3 / (p ** 3).sum(axis=1, keepdims=True)   # noqa: E731
    oof, oof_y = _sample(TRAIN_MIX, 4000, seed=2)
    test, _ = _sample([1 / 3, 1 / 3, 1 / 3], 4000, seed=1)
    plain = fit_estimator("em", sharpen(oof), oof_y, MODEL_PRIOR).estimate(sharpen(test))
    calibrated = fit_estimator("calibrated_em", sharpen(oof), oof_y, MODEL_PRIOR)
    assert calibrated.calibration.temperature == pytest.approx(3.0, rel=0.15)
    assert np.abs(calibrated.estimate(sharpen(test)) - 1 / 3).sum() < 0.5 * np.abs(plain - 1 / 3).sum()


def test_off_changes_nothing_and_a_run_without_train_prior_files_falls_back_to_raw_counts(tmp_path):
    cfg, _ = _experiment(tmp_path, [1 / 3, 1 / 3, 1 / 3], prior_file=False, prior_shift="off")
    notes = []
    ensemble(cfg, log=notes.append)
    record, submitted, probs = _outputs(cfg)
    assert not record["applied"] and (submitted == probs.argmax(axis=1)).all()
    assert any("train_prior.json is missing" in n for n in notes)
    oof = pd.concat(pd.read_csv(cfg.fold_dir(k) / "oof.csv") for k in range(K))
    raw = (oof["label"].value_counts().reindex(CLASSES).to_numpy() + 1) / (len(oof) + 3)
    np.testing.assert_allclose(record["model_prior"], raw, atol=0.01)


def test_a_train_prior_of_other_classes_is_refused_with_its_file(tmp_path):
    cfg, _ = _experiment(tmp_path, [1 / 3, 1 / 3, 1 / 3])
    stale = cfg.fold_dir(2) / "train_prior.json"
    write_json_atomic(stale, {"classes": ["cat", "dog"], "prior": [0.5, 0.5]})   # left by another run
    with pytest.raises(ValueError, match=f"{re.escape(str(stale))} lists classes .*another training run; retrain this fold"):
        ensemble(cfg, **QUIET)
