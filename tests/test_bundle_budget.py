"""The time budget's choice of folds and views, on constructed timings and out-of-fold files.

Three folds; the submission's views (the chain's choice, the budget's candidates) identity / good / bad: `good`
fixes the rows identity gets wrong and keeps the others right, `bad` spoils rows identity gets right, so `good`
alone is the best subset by the out-of-fold estimate (a subset of fewer views wins a tie).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.bundle.budget import BudgetError, Timing, estimated_seconds, merged_views, select_within_budget
from pipeline.bundle.sources import OofViews, oof_views
from pipeline.ensemble.chain import Rows
from pipeline.ensemble.steps.selection import CheckpointsStep, ViewsStep
from pipeline.predict.probs import Candidates

VIEWS = ["identity", "good", "bad"]


def _oof(n_per_fold: int = 40, folds: int = 3) -> OofViews:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n_per_fold * folds)
    right, wrong = np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.8 + 0.1
    hard = rng.random(len(y)) < 0.3                  # identity's mistakes, fixed by `good`
    identity = np.where(hard[:, None], wrong * 0.55 + right * 0.45, right)
    good = np.where(hard[:, None], right, right * 0.7 + 0.15)
    bad = np.where(hard[:, None], wrong, wrong * 0.9 + right * 0.1)
    views = {"identity": identity, "good": good, "bad": bad}
    return OofViews(y, np.repeat(np.arange(folds), n_per_fold), {v: p[None] for v, p in views.items()})


def _timing(per_view=1.0, decode=0.5, load=0.0, slow_fold=None) -> Timing:
    cost = {k: {v: per_view * (3 if k == slow_fold else 1) for v in VIEWS} for k in range(3)}
    return Timing(decode, cost, {k: load for k in range(3)})


def test_the_whole_ensemble_is_kept_when_it_fits():
    t = _timing()
    full = estimated_seconds(t, [0, 1, 2], VIEWS, 1000)            # 0.5 + 9 x 1.0
    selection = select_within_budget(t, _oof(), full, 1000, "mean", "accuracy")
    assert (selection.folds, selection.views, selection.seconds) == ([0, 1, 2], VIEWS, 9.5)
    assert selection.describe(full, 1000)[-1].endswith("everything kept")


def test_views_are_dropped_before_folds_keeping_the_best_out_of_fold_subset():
    selection = select_within_budget(_timing(), _oof(), 6.5, 1000, "mean", "accuracy")   # 3 folds x 2 views fit
    assert selection.folds == [0, 1, 2] and selection.views == ["good"]
    assert selection.dropped_views == ["identity", "bad"] and selection.seconds == 3.5
    assert selection.estimate == 1.0 and selection.full_estimate < 1.0
    lines = " ".join(selection.describe(6.5, 1000))
    assert "dropped views identity, bad" in lines and "nested out-of-fold accuracy: 1.0000" in lines


def test_folds_go_only_when_one_view_does_not_fit_with_them_and_the_slow_one_goes_first():
    t = _timing(slow_fold=1)                                        # fold 1 costs 3 s per view
    selection = select_within_budget(t, _oof(), 3.0, 1000, "mean", "accuracy")   # 0.5 + 1 + 1 for folds 0, 2
    assert selection.folds == [0, 2] and selection.views == ["good"] and selection.dropped_folds == [1]
    assert "cannot price the 1 dropped fold" in " ".join(selection.describe(3.0, 1000))


def test_the_load_time_counts_once_per_fold_and_the_images_scale_the_rest():
    t = _timing(load=10.0)
    assert estimated_seconds(t, [0, 2], ["identity"], 4000) == 4 * (0.5 + 2.0) + 20.0
    selection = select_within_budget(t, _oof(), 25.0, 2000, "mean", "accuracy")  # 2 folds: 20 + 2 * 2.5
    assert selection.folds == [0, 1] and selection.views == ["good"]


def test_a_budget_too_small_for_one_fold_and_one_view_is_an_error_with_the_numbers():
    with pytest.raises(BudgetError, match=r"budget of 1 s for 1000 images is too small.*needs about 2 s"):
        select_within_budget(_timing(), _oof(), 1.0, 1000, "mean", "accuracy")


def test_the_estimate_is_nested_each_folds_views_chosen_on_the_other_folds():
    """20 rows per fold, every label 0. Identity misses fold 0's first 10 rows; view A fixes them but spoils
    the first 6 rows of folds 1 and 2; view B is identity again. On all rows A loses (+10 - 12): identity
    alone is kept (B ties it, later). Nested, fold 0 is scored with the choice of folds 1 and 2 (identity: 10
    wrong), folds 1 and 2 with the choice of the other two, where A alone wins (+10 - 6): 6 wrong each. 22 of
    60 wrong."""
    y, folds = np.zeros(60, dtype=int), np.repeat([0, 1, 2], 20)
    identity = np.tile([0.55, 0.45], (60, 1))
    identity[:10] = [0.45, 0.55]
    a = identity.copy()
    a[:10] = [0.9, 0.1]
    a[20:26] = a[40:46] = [0.1, 0.9]
    oof = OofViews(y, folds, {"identity": identity[None], "A": a[None], "B": identity[None].copy()})
    timing = Timing(0.0, {k: {"identity": 1.0, "A": 1.0, "B": 1.0} for k in range(3)})
    selection = select_within_budget(timing, oof, 6.0, 1000, "mean", "accuracy")   # two views per fold
    assert selection.views == ["identity"] and selection.dropped_views == ["A", "B"]
    assert selection.estimate == pytest.approx(38 / 60)
    assert selection.full_estimate == pytest.approx(48 / 60)    # all three views: fold 0 right, 12 rows wrong


def test_timings_read_back_from_bundle_json_have_integer_folds():
    t = Timing.from_record({"decode_per_1000": 1.0, "fold_view_per_1000": {"0": {"identity": 2.0}},
                            "load": {"0": 0.25}})
    assert t.fold_view == {0: {"identity": 2.0}} and t.load == {0: 0.25}


def test_the_candidates_are_the_submissions_views_under_its_checkpoints():
    """The ensemble's inputs hold every predicted (checkpoint, view) pair; the budget gets the submission's views
    under the submission's checkpoints, in the submission's order."""
    rng = np.random.default_rng(1)
    probs = rng.random((3, 4, 10, 2))                                   # checkpoints x views x rows x classes
    inputs = type("Inputs", (), {"candidates": Candidates(("best", "last", "swa"), ("identity", "hflip", "vflip",
                                                                                    "rot90"), ""),
                                 "oof_probs": probs, "y": np.zeros(10, dtype=int), "folds": np.arange(10) % 2})
    oof = oof_views(inputs, {"views": ["vflip", "identity"], "checkpoints": ["swa", "best"]})
    assert list(oof.views) == ["vflip", "identity"]
    np.testing.assert_array_equal(oof.views["vflip"], probs[[2, 0], 2])
    np.testing.assert_array_equal(oof.views["identity"], probs[[2, 0], 0])


@pytest.mark.parametrize("merge", ["mean", "geometric_mean", "max"])
def test_a_subsets_rows_are_merged_as_the_ensembles_chain_merges_them(merge):
    """Per checkpoint the views merged, then the checkpoints averaged: the chain's view and checkpoint steps."""
    rng = np.random.default_rng(2)
    probs = rng.random((2, 3, 12, 4))
    probs /= probs.sum(axis=-1, keepdims=True)
    views = {v: probs[:, i] for i, v in enumerate(["identity", "hflip", "vflip"])}
    rows = Rows(probs, np.zeros(12, dtype=int), np.arange(12) % 3)
    picked = ViewsStep(("identity", "hflip", "vflip"), [(0, 2)], "accuracy", merge).fit(rows).transform(probs)
    expected = CheckpointsStep(("best", "last"), [(0, 1)], "accuracy").fit(rows).transform(picked)
    np.testing.assert_allclose(merged_views(views, ["identity", "vflip"], merge), expected, rtol=1e-15)
