"""The chain of post-processing steps on constructed out-of-fold files: one nested loop, each step's gain against
its noise, `auto` applying a step that helps and leaving one that hurts or is noise, and the record that
reproduces the test set's probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from pipeline.ensemble.chain import Nested, Rows, nested_chain
from pipeline.ensemble.decide import Choice, decide
from pipeline.ensemble.gain import Gain, exceeds_noise, paired_gain, stratified_resamples
from pipeline.ensemble.record import apply_submission, submission_entry
from pipeline.ensemble.steps.factors import ClassBiasStep, Factor, LogitAdjustStep, apply_log_factor
from pipeline.ensemble.steps.selection import CheckpointsStep, ViewsStep, merge_views, view_candidates
from pipeline.metrics import metric_gain
from pipeline.predict.probs import candidate_frame, candidate_probs, candidates_of

F1 = "f1_macro"


def _model(y, n_classes: int, skill: float, rng) -> np.ndarray:
    """Probabilities that put `skill` of their mass on the true class, the rest on a random Dirichlet draw."""
    return (1 - skill) * rng.dirichlet(np.ones(n_classes), size=len(y)) + skill * np.eye(n_classes)[y]


def _rows(n=600, n_classes=3, folds=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    return y, np.arange(n) % folds, rng


# ---- the one nested loop ------------------------------------------------------------------------------

def test_a_folds_rows_go_through_the_chain_fitted_on_the_other_folds_only():
    """Relabel fold 0: its rows through views -> bias do not move (both were fitted without them); the other
    folds' rows do (fold 0 helped fit their chain)."""
    y, folds, rng = _rows(n=300)
    views = np.stack([_model(y, 3, 0.3, rng), _model(y, 3, 0.1, rng)])[None]       # (K=1, V=2, N, C)
    steps = [ViewsStep(("identity", "hflip"), view_candidates(["identity", "hflip"]), F1),
             CheckpointsStep(("best",), [(0,)], F1), ClassBiasStep(F1)]
    out = nested_chain(steps, Rows(views, y, folds))
    relabelled = y.copy()
    relabelled[folds == 0] = (y[folds == 0] + 1) % 3
    again = nested_chain(steps, Rows(views, relabelled, folds))
    np.testing.assert_array_equal(out[folds == 0], again[folds == 0])
    assert not np.allclose(out[folds != 0], again[folds != 0])
    assert out.shape == (300, 3)


def test_the_chain_fitted_on_every_row_is_what_the_test_rows_get():
    y, folds, rng = _rows()
    oof, test = _model(y, 3, 0.3, rng), rng.dirichlet(np.ones(3), size=(5, 40))
    chain = Nested(Rows(oof, y, folds, test)).add(LogitAdjustStep((0.0, 1.0, 2.0), F1, (0.6, 0.3, 0.1)))
    tau = chain.fitted[0].params()["tau"]
    np.testing.assert_allclose(chain.test(), chain.fitted[0].transform(test))
    assert tau == LogitAdjustStep((0.0, 1.0, 2.0), F1, (0.6, 0.3, 0.1)).fit(Rows(oof, y, folds)).params()["tau"]


# ---- the steps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mean", "geometric_mean", "max", "logit_mean"])
def test_views_merged_from_probabilities_equal_the_predict_stages_merge_of_logits(mode):
    import torch

    from pipeline.predict.tta import merge_view_logits

    logits = torch.randn(3, 7, 4, dtype=torch.float64)
    expected = merge_view_logits(logits, mode).numpy()
    np.testing.assert_allclose(merge_views(logits.softmax(-1).numpy(), mode, axis=0), expected, atol=1e-12)


def test_the_views_step_keeps_the_subset_that_scores_best_and_records_every_candidate():
    y, folds, rng = _rows()
    good, noise = _model(y, 3, 0.3, rng), rng.dirichlet(np.ones(3), size=len(y))
    probs = np.stack([good, noise, good])[None]                     # the second view knows nothing
    pick = ViewsStep(("identity", "vflip", "hflip"), view_candidates(["identity", "vflip", "hflip"]), F1).fit(
        Rows(probs, y, folds))
    assert pick.params()["views"] in (["identity"], ["identity", "hflip"])
    assert len(pick.params()["candidates"]) == 5
    np.testing.assert_allclose(pick.transform(probs)[0], good)


def test_candidate_columns_round_trip_through_a_probability_file():
    rng = np.random.default_rng(0)
    classes = ["a", "b:c"]                                          # a class name with the separator in it
    probs = {"best": rng.dirichlet(np.ones(2), size=(3, 5)), "last": rng.dirichlet(np.ones(2), size=(3, 5))}
    frame = pd.concat([pd.DataFrame({"id": list("vwxyz")}), candidate_frame(probs, ["identity", "hflip", "scale_0.9"],
                                                                           classes)], axis=1)
    for c in classes:   # the merged and per-checkpoint columns the predict stage writes beside them
        frame[f"prob_{c}"] = 0.5
        frame[f"identity:prob_{c}"] = frame[f"hflip:prob_{c}"] = frame[f"scale_0.9:prob_{c}"] = 0.5
        frame[f"@best:prob_{c}"] = frame[f"@last:prob_{c}"] = 0.5
    found = candidates_of(frame, classes)
    assert found.checkpoints == ("best", "last") and found.views == ("identity", "hflip", "scale_0.9")
    np.testing.assert_array_equal(candidate_probs(frame, classes, found), np.stack([probs["best"], probs["last"]]))


# ---- gain and noise -------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["f1_macro", "accuracy"])
def test_the_bootstraps_counted_metric_is_scikit_learns_on_every_resample(metric):
    from pipeline.ensemble.gain import _resample_scores

    y, folds, rng = _rows(n=200, n_classes=4)
    probs = _model(y, 4, 0.2, rng)
    idx = stratified_resamples(folds, resamples=20)
    expected = [metric_gain(metric, y[i], probs[i]) for i in idx]
    np.testing.assert_allclose(_resample_scores(metric, y, probs, idx), expected, atol=1e-12)


def test_resamples_stay_inside_their_folds():
    folds = np.repeat([0, 1, 2], [5, 7, 9])
    idx = stratified_resamples(folds, resamples=50)
    assert (folds[idx] == folds[None, :]).all()


def test_the_noise_of_a_gain_shrinks_with_more_rows():
    small = paired_gain(F1, *_pair(200))
    large = paired_gain(F1, *_pair(3200))
    assert large.noise < small.noise / 2.5                          # ~ 1 / sqrt(16) = 1/4


def _pair(n):
    y, folds, rng = _rows(n=n)
    a, b = _model(y, 3, 0.25, rng), _model(y, 3, 0.2, rng)
    return y, folds, a, b


# ---- auto: applied when it helps, left when it hurts or is noise ---------------------------------------

def _decide(choice, rows, margin=2.0):
    _, decisions = decide([choice], rows, F1, margin)
    return decisions[0]


def test_auto_chooses_a_view_subset_that_helps():
    y, folds, rng = _rows()
    probs = np.stack([_model(y, 3, 0.3, rng), rng.dirichlet(np.ones(3), size=len(y))])[None]
    names = ("identity", "noise")
    every = ViewsStep(names, [(0, 1)], F1)
    choice = Choice("views", "auto", ViewsStep(names, view_candidates(list(names)), F1), every)
    d = _decide(choice, Rows(probs, y, folds))
    assert d.applied and d.gain.gain > 2 * d.gain.noise and d.fitted["views"] == ["identity"]


def _fold_dependent_views(n=600, seed=0):
    """View 'identity' knows the class on fold 0 and nothing on fold 1, view 'hflip' the reverse: each fold's
    choice, made on the other fold, is the view that knows nothing about it, while merging both keeps half."""
    rng = np.random.default_rng(seed)
    y, folds = rng.integers(0, 3, n), np.arange(n) % 2
    good = lambda: _model(y, 3, 0.5, rng)                                        # noqa: E731
    noise = lambda: rng.dirichlet(np.ones(3), size=n)                             # noqa: E731
    a = np.where((folds == 0)[:, None], good(), noise())
    b = np.where((folds == 1)[:, None], good(), noise())
    return Rows(np.stack([a, b])[None], y, folds)


def test_auto_leaves_a_view_subset_that_hurts_out_of_fold():
    rows = _fold_dependent_views()
    names = ("identity", "hflip")
    every = ViewsStep(names, [(0, 1)], F1)
    d = _decide(Choice("views", "auto", ViewsStep(names, view_candidates(list(names)), F1), every), rows)
    assert d.per_fold[0]["views"] == ["hflip"] and d.per_fold[1]["views"] == ["identity"]
    assert d.gain.gain < 0 and not d.applied and "not positive" in d.why
    assert d.baseline["views"] == ["identity", "hflip"]


def test_auto_chooses_the_checkpoint_that_helps():
    y, folds, rng = _rows()
    probs = np.stack([_model(y, 3, 0.1, rng), _model(y, 3, 0.4, rng)])            # (K=2: best, last)
    step = CheckpointsStep(("best", "last"), [(0,), (1,), (0, 1)], F1)
    best = CheckpointsStep(("best", "last"), [(0,)], F1)
    d = _decide(Choice("checkpoints", "auto", step, best), Rows(probs, y, folds))
    assert d.applied and d.fitted["checkpoints"] in (["last"], ["best", "last"])


def _imbalanced(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    prior = np.array([0.8, 0.15, 0.05])
    y = rng.choice(3, size=n, p=prior)
    probs = (rng.dirichlet(np.ones(3), size=n) * 0.6 + np.eye(3)[y] * 0.4) * prior ** 1.5
    return Rows(probs / probs.sum(axis=1, keepdims=True), y, np.arange(n) % 5), prior


def test_auto_applies_a_logit_adjustment_that_helps():
    rows, prior = _imbalanced()
    d = _decide(Choice("logit_adjust", "auto", LogitAdjustStep((0.0, 0.5, 1.0, 1.5), F1, tuple(prior))), rows)
    assert d.applied and d.fitted["tau"] > 0 and d.gain.gain > 2 * d.gain.noise


def _fold_dependent_tau():
    """Fold 0 alone wants a strong adjustment, fold 1 none (the rows of test_ensemble's nested-tau case, 20 times):
    each fold gets the other's tau, the wrong one."""
    y = np.array(([0] * 6 + [1] * 2 + [0] * 6 + [1] * 2) * 20)
    fold0 = [[0.9, 0.1]] * 6 + [[0.55, 0.45]] * 2
    fold1 = [[0.52, 0.48]] * 6 + [[0.3, 0.7]] * 2
    probs = np.array((fold0 + fold1) * 20)
    return Rows(probs, y, np.tile(np.repeat([0, 1], 8), 20))


def test_auto_leaves_a_logit_adjustment_that_hurts_out_of_fold_and_on_forces_it():
    rows = _fold_dependent_tau()
    step = LogitAdjustStep((0.0, 1.0), F1)
    d = _decide(Choice("logit_adjust", "auto", step), rows)
    assert d.gain.gain < 0 and not d.applied
    forced = _decide(Choice("logit_adjust", "on", step, key="ensemble.logit_adjust", value=True), rows)
    assert forced.applied and forced.why == "forced on (ensemble.logit_adjust: True)"
    off = _decide(Choice("logit_adjust", "off", step, key="ensemble.logit_adjust", value=False), _imbalanced()[0])
    assert not off.applied and off.gain.gain > 0                  # scored all the same: the record shows it


@dataclass(frozen=True)
class _Guess:
    """A step fitted on nothing it could learn from: a random per-class factor, drawn anew for every set of rows
    it is fitted on (each fold's chain gets its own)."""
    scale: float
    seed: int
    name: str = "guess"

    def fit(self, rows):
        return Factor(np.random.default_rng([self.seed, int(rows.folds.sum())]).normal(scale=self.scale, size=3))


def test_auto_leaves_a_step_whose_gain_is_within_its_noise():
    """An unbiased model of balanced classes, and random guesses at a class bias: most gains are within their
    noise (some of them positive) and are not applied; with no margin a positive gain alone would be."""
    rng = np.random.default_rng(100)
    y, folds = np.tile(np.arange(3), 200), np.arange(600) % 5
    rows = Rows(0.8 * rng.dirichlet(np.ones(3), size=600) + 0.2 * np.eye(3)[y], y, folds)
    found = [_decide(Choice("guess", "auto", _Guess(0.1, seed)), rows) for seed in range(12)]
    within = [(s, d) for s, d in enumerate(found) if 0 < d.gain.gain <= 2 * d.gain.noise]
    assert len(within) >= 3, "the construction gives positive gains within the noise"
    assert not any(d.applied for _, d in within) and all("within 2 x its noise" in d.why for _, d in within)
    assert all(_decide(Choice("guess", "auto", _Guess(0.1, s)), rows, margin=0.0).applied for s, _ in within)
    assert not any(d.applied for d in found if d.gain.gain <= 0)


def test_the_rule_compares_the_gain_with_its_noise():
    assert exceeds_noise(Gain(0.01, 0.004, 0.9, 0.89), 2.0)
    assert not exceeds_noise(Gain(0.01, 0.006, 0.9, 0.89), 2.0)
    assert not exceeds_noise(Gain(-0.01, 0.0, 0.88, 0.89), 0.0)


def test_steps_are_decided_in_order_each_against_the_steps_kept_before_it():
    rows, prior = _imbalanced()
    plan = [Choice("logit_adjust", "auto", LogitAdjustStep((0.0, 0.5, 1.0, 1.5), F1, tuple(prior))),
            Choice("class_bias", "auto", ClassBiasStep(F1))]
    states, decisions = decide(plan, rows, F1)
    assert decisions[0].applied
    adjusted = states[0].oof()
    assert decisions[1].gain.baseline == pytest.approx(metric_gain(F1, rows.y, adjusted))


# ---- the record -----------------------------------------------------------------------------------------

def test_the_submission_entry_reproduces_the_chains_test_probabilities():
    y, folds, rng = _rows()
    classes, views, ckpts = ["a", "b", "c"], ["identity", "hflip"], ["best", "last"]
    oof = rng.dirichlet(np.ones(3), size=(2, 2, len(y)))
    test = {k: rng.dirichlet(np.ones(3), size=(2, 2, 25)) for k in range(5)}         # per fold: (K, V, T, C)
    frames = [pd.concat([pd.DataFrame({"id": [f"t{i}" for i in range(25)]}),
                         candidate_frame(dict(zip(ckpts, t)), views, classes)], axis=1) for t in test.values()]
    found = candidates_of(frames[0].assign(**{f"@{k}:prob_{c}": 0.0 for k in ckpts for c in classes},
                                           **{f"{v}:prob_{c}": 0.0 for v in views for c in classes}), classes)
    rows = Rows(oof, y, folds, np.stack([candidate_probs(f, classes, found) for f in frames]))
    plan = [Choice("views", "on", ViewsStep(tuple(views), [(0, 1)], F1, "geometric_mean")),
            Choice("checkpoints", "on", CheckpointsStep(tuple(ckpts), [(0, 1)], F1)),
            Choice("logit_adjust", "on", LogitAdjustStep((1.0,), F1, (0.5, 0.3, 0.2))),
            Choice("class_bias", "on", ClassBiasStep(F1))]
    states, _ = decide(plan, rows, F1)
    chain = states[-1]
    factor = sum(np.asarray(f.params()["log_factor"]) for f in chain.fitted[2:])
    entry = submission_entry(classes, 5, "soft", found, views, "geometric_mean", ckpts, factor)
    probs, scores, picked = apply_submission(entry, frames)
    np.testing.assert_allclose(probs, chain.test(), atol=1e-12)
    np.testing.assert_array_equal(picked, chain.test().mean(axis=0).argmax(axis=1))
    with pytest.raises(ValueError, match="lack columns"):
        apply_submission({**entry, "views": ["vflip"]}, frames)


# ---- the settings -----------------------------------------------------------------------------------------

def test_older_configs_keep_their_meaning_true_and_false_are_on_and_off(tmp_path):
    import yaml

    from pipeline.config import load_config
    from pipeline.results.ensemble_stage import chain_settings
    from tests.conftest import REPO

    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)                                       # every checked-in config still loads
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"ensemble": {"logit_adjust": True, "class_bias": False,
                                                "checkpoints": ["best", "last"]}, "tta": {"select": "all"}}))
    settings = chain_settings(load_config(old))
    assert (settings.logit_adjust, settings.class_bias, settings.checkpoints, settings.views) == ("on", "off", "listed",
                                                                                                  "all")
    default = chain_settings(load_config(None, {}))
    assert (default.logit_adjust, default.class_bias, default.views, default.prior_shift) == ("auto",) * 4


# ---- per-class factors: summed through the chain, divided out on request ------------------------------------

@dataclass
class _FixedFactor:
    """A step whose fit always returns the same per-class factor, and keeps the rows it was fitted on."""
    name: str
    log_factor: np.ndarray
    seen: list

    def fit(self, rows: Rows) -> Factor:
        self.seen.append(rows)
        return Factor(np.asarray(self.log_factor, dtype=np.float64))


def test_the_factors_of_the_steps_so_far_reach_the_next_step_summed_and_the_oof_rows_can_divide_them_out():
    """Two per-class factors in a row: the second step (and the test rows) see the first's factor, the chain
    ends with their sum, and `oof(factors=False)` gives back the probabilities as they entered the chain."""
    y, folds, rng = _rows(n=200, n_classes=3)
    probs = _model(y, 3, 0.5, rng)
    test = rng.dirichlet(np.ones(3), size=(1, 7))
    first, second = [0.0, 0.7, -0.2], [0.3, 0.0, 0.4]
    seen_first, seen_second = [], []
    chain = (Nested(Rows(probs, y, folds, test=test))
             .add(_FixedFactor("first", first, seen_first)).add(_FixedFactor("second", second, seen_second)))
    assert seen_first[-1].log_factor is None                      # the chain on every row: nothing applied yet
    np.testing.assert_allclose(seen_second[-1].log_factor, first)
    np.testing.assert_allclose(seen_second[-1].test, apply_log_factor(test, first))
    assert all(rows.test is None for rows in seen_second[:-1])    # the per-fold fits never see the test rows
    np.testing.assert_allclose(chain.full.log_factor, np.add(first, second))
    np.testing.assert_allclose(chain.test(), apply_log_factor(test, np.add(first, second)))
    np.testing.assert_allclose(chain.oof(), apply_log_factor(probs, np.add(first, second)))
    np.testing.assert_allclose(chain.oof(factors=False), probs, atol=1e-12)
    fold_rows = seen_second[0]                                    # a fold's chain: the other folds' rows only
    assert len(fold_rows.y) == len(fold_rows.folds) == fold_rows.probs.shape[-2] < len(y)
    assert set(np.unique(fold_rows.folds)) == set(np.unique(folds)) - {0}
