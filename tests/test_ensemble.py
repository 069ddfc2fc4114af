"""Fold voting on hand-made probabilities: soft, hard (with ties), geometric, rank; fitted blend weights and
post-hoc logit adjustment on synthetic out-of-fold probabilities."""

from __future__ import annotations


import numpy as np
import pytest

from pipeline.ensemble.voting import (VOTING_MODES, choose_tau, class_priors, fit_weights,
                               geometric_vote, hard_vote, log_loss, logit_adjust, rank_average, soft_vote, vote,
                               vote_scores)
from pipeline.metrics import classification_metrics

A, B, C = 0, 1, 2


def test_soft_vote_is_the_mean():
    probs = np.array([[[0.8, 0.2], [0.3, 0.7]],
                      [[0.4, 0.6], [0.1, 0.9]]])
    np.testing.assert_allclose(soft_vote(probs), [[0.6, 0.4], [0.2, 0.8]])
    np.testing.assert_array_equal(vote(probs, "soft"), [A, B])


def test_weighted_soft_vote():
    probs = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    np.testing.assert_allclose(soft_vote(probs, weights=(1, 0)), probs[0])
    np.testing.assert_allclose(soft_vote(probs, weights=(0, 2)), probs[1])
    np.testing.assert_allclose(soft_vote(probs, weights=(1, 3)), [[0.5, 0.5]])  # .25*.8 + .75*.4
    np.testing.assert_array_equal(vote(probs, "soft", weights=(1, 0)), [A])


def test_hard_vote_majority_beats_soft():
    # folds 0-1 weakly vote A, fold 2 strongly votes B: soft says B, the majority says A
    probs = np.array([[[0.55, 0.45]], [[0.55, 0.45]], [[0.0, 1.0]]])
    np.testing.assert_array_equal(hard_vote(probs), [A])
    np.testing.assert_array_equal(vote(probs, "soft"), [B])


def test_hard_vote_tie_goes_to_the_soft_favourite():
    probs = np.array([
        # row 0: 2 folds vote A, 2 vote B; mean A = .3, mean B = .65 -> B
        # row 1: the mirror image with A stronger; mean A = .675, mean B = .325 -> A
        [[0.5, 0.4, 0.1], [0.9, 0.1, 0.0]],
        [[0.5, 0.4, 0.1], [0.9, 0.1, 0.0]],
        [[0.1, 0.9, 0.0], [0.45, 0.55, 0.0]],
        [[0.1, 0.9, 0.0], [0.45, 0.55, 0.0]],
    ])
    np.testing.assert_array_equal(hard_vote(probs), [B, A])
    assert hard_vote(probs).dtype == np.int64


def test_hard_vote_three_way_split():
    # each fold votes a different class; the soft means are A .267, B .35, C .383 -> C
    probs = np.array([[[0.4, 0.35, 0.25]], [[0.3, 0.4, 0.3]], [[0.1, 0.3, 0.6]]])
    np.testing.assert_array_equal(hard_vote(probs), [C])
    # only tied classes enter the tie-break: A and B have 2 votes each, C 1 vote but the top mean
    probs = np.array([[[0.4, 0.3, 0.3]], [[0.4, 0.3, 0.3]], [[0.3, 0.4, 0.3]], [[0.3, 0.4, 0.3]],
                      [[0.0, 0.1, 0.9]]])
    np.testing.assert_array_equal(vote(probs, "soft"), [C])  # means A .28, B .30, C .42
    np.testing.assert_array_equal(hard_vote(probs), [B])


def test_weighted_hard_vote():
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.3, 0.7]]])
    np.testing.assert_array_equal(hard_vote(probs), [B])
    np.testing.assert_array_equal(hard_vote(probs, weights=(3, 1, 1)), [A])
    np.testing.assert_array_equal(vote(probs, "hard", weights=(1, 0, 0)), [A])


def test_geometric_vote():
    probs = np.array([[[0.9, 0.1], [0.9, 0.1]],
                      [[0.5, 0.5], [0.1, 0.9]]])
    np.testing.assert_allclose(geometric_vote(probs), [[0.75, 0.25], [0.5, 0.5]])
    # one fold's zero lowers a class sharply (the arithmetic mean picks A) but gives no NaN
    probs = np.array([[[0.95, 0.05]], [[0.95, 0.05]], [[0.0, 1.0]]])
    scores = geometric_vote(probs)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    np.testing.assert_array_equal(vote(probs, "soft"), [A])
    np.testing.assert_array_equal(vote(probs, "geometric"), [B])
    np.testing.assert_allclose(geometric_vote(probs, weights=(0, 1, 0)), probs[1], atol=1e-12)


def test_rank_average():
    # fold 0 ranks rows (0, 1, 2) in class A as (3, 1, 2); fold 1 as (3, 2, 1)
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]],
                      [[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]]])
    expected_a = np.array([3 + 3, 1 + 2, 2 + 1]) / 2 / 3
    expected_b = np.array([1 + 1, 3 + 2, 2 + 3]) / 2 / 3
    np.testing.assert_allclose(rank_average(probs), np.stack([expected_a, expected_b], axis=1))
    # scale-free: a fold whose scores are squashed counts as much as a confident one
    squashed = probs.copy()
    squashed[1] = 0.5 + 0.01 * (probs[1] - 0.5)
    np.testing.assert_allclose(rank_average(squashed), rank_average(probs))
    # ties share their average rank
    np.testing.assert_allclose(rank_average(np.array([[[0.5], [0.5], [0.9]]])), [[0.5], [0.5], [1.0]])
    np.testing.assert_array_equal(vote(probs, "rank"), [A, B, B])


@pytest.mark.parametrize("mode", VOTING_MODES)
def test_vote_returns_class_indices(mode):
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=(5, 7))
    picked = vote(probs, mode)
    assert picked.shape == (7,) and picked.dtype == np.int64
    assert ((picked >= 0) & (picked < 4)).all()
    if mode != "rank":  # one fold alone: every probability vote is that fold's argmax
        np.testing.assert_array_equal(vote(probs[:1], mode), probs[0].argmax(axis=1))


def test_unknown_voting_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ensemble.voting") as err:
        vote(np.ones((1, 1, 2)), "majority")
    assert all(mode in str(err.value) for mode in VOTING_MODES)


FUNCTIONS = [soft_vote, hard_vote, geometric_vote, rank_average] + [
    (lambda p, w=None, m=m: vote(p, m, w)) for m in VOTING_MODES]


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("probs, message", [
    (np.ones((2, 3)), "3-D"),
    (np.ones((2, 3, 4, 5)), "3-D"),
    (np.ones((0, 3, 2)), "at least one fold"),
    (np.array([[[0.5, np.nan]]]), "non-finite"),
    (np.array([[[0.5, np.inf]]]), "non-finite"),
    (np.array([[[1.2, -0.2]]]), "non-negative"),
    ([[["a", "b"]]], "numeric"),
])
def test_bad_probs_are_rejected(fn, probs, message):
    with pytest.raises(ValueError, match=message):
        fn(probs)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("weights, message", [
    ((1.0,), "one entry per fold"),
    ((1.0, 1.0, 1.0), "one entry per fold"),
    ((1.0, -1.0), "non-negative"),
    ((0.0, 0.0), "not all zero"),
    ((1.0, np.nan), "finite"),
])
def test_bad_weights_are_rejected(fn, weights, message):
    with pytest.raises(ValueError, match=message):
        fn(np.full((2, 3, 2), 0.5), weights)


@pytest.mark.parametrize("weights", [None, (1, 2, 3, 4), (1, 1, 2, 2)])
def test_hard_vote_scores_are_the_vote_shares_and_their_argmax_the_hard_vote(weights):
    probs = np.random.default_rng(3).dirichlet(np.ones(3), size=(4, 200))
    scores = vote_scores(probs, "hard", weights)
    w = np.ones(4) / 4 if weights is None else np.asarray(weights) / sum(weights)
    expected = np.zeros((200, 3))
    for k in range(4):                                   # each fold adds its weight to its argmax class
        expected[np.arange(200), probs[k].argmax(axis=1)] += w[k]
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    tied = np.isclose(expected, expected.max(1, keepdims=True)).sum(1) > 1
    assert tied.any() and not tied.all()
    picked = vote(probs, "hard", weights)
    np.testing.assert_array_equal(picked[~tied], scores.argmax(axis=1)[~tied])   # a clear majority wins
    soft = np.tensordot(w, probs, axes=1)                      # a tie goes to the soft favourite among the tied
    among = np.where(np.isclose(expected, expected.max(1, keepdims=True)), soft, -1)
    np.testing.assert_array_equal(picked[tied], among.argmax(axis=1)[tied])


# ---- fitted weights ------------------------------------------------------------------------------

def _oof_members(n=600, classes=4, skills=(0.3, 0.05, 0.15), seed=0):
    """Synthetic OOF probabilities of several experiments for the same rows: member m puts skills[m]
    of its mass on the true class, the rest on a random Dirichlet draw."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    members = [(1 - s) * rng.dirichlet(np.ones(classes), size=n) + s * np.eye(classes)[y] for s in skills]
    return np.stack(members), y


def _f1(y, probs):
    return classification_metrics(y, probs)["f1_macro"]


def _two_member_case(q: float, n: int = 1000):
    """Binary rows: on a share `q` member A gives the true class 0.9 and member B 0.1; elsewhere the reverse.

    The mixture's log-loss -q log(0.1 + 0.8 w) - (1 - q) log(0.9 - 0.8 w) is smallest at
    w_A = (q - 0.1) / 0.8 (its derivative is zero there), so the fitted weight is known exactly.
    """
    y = np.zeros(n, dtype=np.int64)
    a_right = np.arange(n) < round(q * n)
    pa = np.where(a_right, 0.9, 0.1)
    pb = 1 - pa
    return np.stack([np.stack([pa, 1 - pa], 1), np.stack([pb, 1 - pb], 1)]), y


@pytest.mark.parametrize("q, expected", [(0.7, 0.75), (0.5, 0.5), (0.3, 0.25), (0.95, 1.0)])
def test_fitted_logloss_weights_are_the_analytic_optimum(q, expected):
    probs, y = _two_member_case(q)
    w = fit_weights(probs, y, "logloss")
    assert w == pytest.approx([expected, 1 - expected], abs=2e-3)   # (q=0.95: the optimum 1.06 is clipped to 1)


def test_fitted_f1_weights_find_a_blend_that_uniform_misses():
    """Member 0 is always right with 0.6, member 1 always wrong with 0.9: the uniform mean follows
    member 1 (F1 0), and only a weight above 3/4 on member 0 gets every row right."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    right = np.full((300, 3), 0.2)
    right[np.arange(300), y] = 0.6
    wrong = np.full((300, 3), 0.05)
    wrong[np.arange(300), (y + 1) % 3] = 0.9
    probs = np.stack([right, wrong])
    assert _f1(y, soft_vote(probs)) == 0.0
    w = fit_weights(probs, y, "f1")
    assert w[0] > 0.75 and _f1(y, soft_vote(probs, w)) == 1.0


def test_complementary_experiments_get_interior_weights():
    # member 0 knows classes 0-1 (clueless on 2-3), member 1 the reverse, member 1 a bit less well
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 800)
    onehot, flat = np.eye(4)[y], np.full((800, 4), 0.25)
    knows = lambda classes, s: np.where(np.isin(y, classes)[:, None], (1 - s) * flat + s * onehot, flat)
    probs = np.stack([knows([0, 1], 0.8), knows([2, 3], 0.5)])
    w = fit_weights(probs, y)
    assert 0.5 < w[0] < 0.95 and w.sum() == pytest.approx(1.0)
    assert log_loss(soft_vote(probs, w), y) < min(log_loss(p, y) for p in probs)


@pytest.mark.parametrize("seed", range(3))
def test_fitted_logloss_weights_match_a_brute_force_search(seed):
    probs, y = _oof_members(n=400, classes=3, skills=(0.2, 0.15), seed=seed)
    true = probs[:, np.arange(len(y)), y]                              # each member's probability of the truth
    grid = np.linspace(0, 1, 2001)
    losses = [-np.log(g * true[0] / probs[0].sum(1) + (1 - g) * true[1] / probs[1].sum(1)).mean() for g in grid]
    best = grid[int(np.argmin(losses))]
    assert 0.05 < best < 0.95                                          # an interior optimum: not uniform, not a corner
    assert fit_weights(probs, y)[0] == pytest.approx(best, abs=1e-3)


def test_fit_weights_edge_cases():
    probs, y = _oof_members(skills=(0.3,))
    np.testing.assert_array_equal(fit_weights(probs, y), [1.0])             # one member: all its weight
    same = np.stack([probs[0], probs[0]])
    np.testing.assert_allclose(fit_weights(same, y), [0.5, 0.5])            # identical members: stay uniform
    with pytest.raises(ValueError, match="objective"):
        fit_weights(probs, y, "accuracy")
    with pytest.raises(ValueError, match="labels"):
        fit_weights(probs, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        fit_weights(probs, y + 4)


def test_log_loss_hand_computed():
    assert log_loss([[0.5, 0.5]], [1]) == pytest.approx(np.log(2))
    assert log_loss([[2.0, 2.0]], [0]) == pytest.approx(np.log(2))          # rows are renormalised
    assert log_loss([[1.0, 0.0]], [1]) == pytest.approx(-np.log(1e-15))     # floored, finite


# ---- logit adjustment --------------------------------------------------------------------------------

def _imbalanced(n=2000, seed=0):
    """A long-tailed 3-class problem and a model that is right about the evidence but over-trusts the prior."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.8, 0.15, 0.05])
    y = rng.choice(3, size=n, p=prior)
    evidence = rng.dirichlet(np.ones(3), size=n) * 0.6 + np.eye(3)[y] * 0.4
    probs = evidence * prior ** 1.5          # a prior-biased classifier: rare classes rarely win
    return probs / probs.sum(axis=1, keepdims=True), y


def test_logit_adjustment_tau_zero_is_the_identity():
    probs, y = _imbalanced(n=50)
    prior = class_priors(y, 3)
    np.testing.assert_array_equal(logit_adjust(probs, prior, 0.0), probs)
    stacked = np.stack([probs, probs[::-1]])                                # any leading shape (folds)
    np.testing.assert_array_equal(logit_adjust(stacked, prior, 0), stacked)
    adjusted = logit_adjust(stacked, prior, 1.0)
    assert adjusted.shape == stacked.shape
    np.testing.assert_allclose(adjusted.sum(axis=-1), 1.0)
    np.testing.assert_allclose(adjusted[0], probs / prior / (probs / prior).sum(axis=1, keepdims=True))


def test_logit_adjustment_improves_macro_f1_on_an_imbalanced_case():
    probs, y = _imbalanced()
    prior = class_priors(y, 3)
    tau, curve = choose_tau(probs, y, prior)
    assert [t for t, _ in curve] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    before, after = _f1(y, probs), _f1(y, logit_adjust(probs, prior, tau))
    assert tau > 0 and after > before + 0.05
    assert dict(curve)[tau] == pytest.approx(after) and after == pytest.approx(max(f for _, f in curve))


def test_choose_tau_prefers_no_adjustment_on_a_flat_curve_and_checks_its_grid():
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[y] * 0.9 + 0.1 / 3
    assert choose_tau(perfect, y, class_priors(y, 3))[0] == 0.0
    with pytest.raises(ValueError, match="tau_grid"):
        choose_tau(perfect, y, class_priors(y, 3), [])
    with pytest.raises(ValueError, match="tau_grid"):
        choose_tau(perfect, y, class_priors(y, 3), [-0.5, 1])
    with pytest.raises(ValueError, match="prior"):
        logit_adjust(perfect, [0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="tau"):
        logit_adjust(perfect, [0.2, 0.3, 0.5], -1.0)


def test_choose_tau_with_a_hard_vote_of_adjusted_members():
    probs, y = _imbalanced()
    members = np.stack([probs, probs ** 1.1 / (probs ** 1.1).sum(axis=1, keepdims=True), probs])
    prior = class_priors(y, 3)
    tau, _ = choose_tau(members, y, prior, combine=lambda p: vote_scores(p, "hard"))
    assert tau > 0
    assert _f1(y, vote_scores(logit_adjust(members, prior, tau), "hard")) > _f1(y, vote_scores(members, "hard"))



def test_vote_and_its_scores_default_to_the_soft_vote():
    """The default mode is the soft vote (the configs' default too): a row where it and the hard vote differ."""
    probs = np.array([[[0.6, 0.4]], [[0.6, 0.4]], [[0.0, 1.0]]])   # two members lean to 0, one is sure of 1
    assert vote(probs, "soft")[0] == 1 and vote(probs, "hard")[0] == 0
    assert vote(probs).tolist() == vote(probs, "soft").tolist()
    np.testing.assert_array_equal(vote_scores(probs), vote_scores(probs, "soft"))


def test_fitted_weights_that_do_worse_than_uniform_are_not_returned(monkeypatch):
    """A failed optimisation (here: one that lands on the weakest member) must not beat the uniform vote."""
    import pipeline.ensemble.voting as voting

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = 0.4 * rng.dirichlet(np.ones(3), 200) + 0.6 * np.eye(3)[y]
    bad = rng.dirichlet(np.ones(3), 200)
    probs = np.stack([good, bad])

    class Lost:
        x = np.array([0.0, 1.0])   # all weight on the member that knows nothing

    monkeypatch.setattr(voting, "minimize", lambda *a, **k: Lost())
    np.testing.assert_allclose(fit_weights(probs, y, "logloss"), [0.5, 0.5])


def test_class_priors_are_add_one_smoothed_frequencies_over_every_class():
    np.testing.assert_allclose(class_priors([0, 0, 1], 3), np.array([3, 2, 1]) / 6)   # class 2 absent: still > 0


def test_logit_adjust_accepts_one_row_and_zero_probabilities_and_refuses_a_zero_prior():
    np.testing.assert_allclose(logit_adjust([0.6, 0.4, 0.0], [0.5, 0.25, 0.25], 1.0), [0.6, 0.8, 0.0] / np.float64(1.4),
                               atol=1e-12)
    with pytest.raises(ValueError, match="prior must be positive and finite"):
        logit_adjust([[0.5, 0.5]], [1.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="prior must be positive and finite"):
        logit_adjust([[0.5, 0.5]], [np.inf, 0.5], 1.0)
    with pytest.raises(ValueError, match="probs must be finite and non-negative"):
        logit_adjust([[np.nan, 0.5]], [0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="probs must be finite and non-negative"):
        logit_adjust([[-0.1, 1.1]], [0.5, 0.5], 1.0)


def test_log_loss_renormalises_each_row_alone_and_an_all_zero_row_counts_as_uniform():
    """Rows that do not sum to 1 (e.g. unnormalised scores) are scaled row by row, not by the total."""
    assert log_loss([[2.0, 2.0], [0.9, 0.1]], [0, 0]) == pytest.approx((np.log(2) - np.log(0.9)) / 2)
    assert log_loss([[0.0, 0.0, 0.0]], [1]) == pytest.approx(np.log(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got 2..2"):
        log_loss([[0.5, 0.5]], [2])   # class index 2 of 2 classes


def test_tta_merge_defaults_to_the_mean_of_probabilities():
    """`tta.merge`'s default: the mean of the views' softmax, which differs from the softmax of mean logits."""
    import torch

    from pipeline.predict.tta import merge_view_logits

    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 1.0]]])   # two views, one image
    expected = logits.softmax(-1).mean(0)
    torch.testing.assert_close(merge_view_logits(logits), expected)
    assert not torch.allclose(merge_view_logits(logits, "logit_mean"), expected)


def test_nested_logit_adjustment_chooses_each_folds_tau_without_its_rows():
    """Fold 0's rows alone would want a strong adjustment, the other folds none: fold 0 gets the others' tau
    (0), fold 1 gets fold 0's (1) — never a tau fitted on the rows it is then scored on."""
    from pipeline.ensemble.chain import Nested, Rows
    from pipeline.ensemble.steps.factors import LogitAdjustStep

    y = np.array([0] * 6 + [1] * 2 + [0] * 6 + [1] * 2)
    under = [[0.55, 0.45]] * 2       # fold 0: the rare class is under-predicted; adjusting fixes it
    right = [[0.3, 0.7]] * 2         # fold 1: already right; a strong adjustment would not hurt these ...
    majority = [[0.52, 0.48]] * 6    # ... but it flips fold 1's majority rows, so fold 1 alone wants tau 0
    probs = np.array([[0.9, 0.1]] * 6 + under + majority + right)
    folds = np.repeat([0, 1], 8)
    chain = Nested(Rows(probs, y, folds)).add(LogitAdjustStep((0.0, 1.0), "f1_macro"))
    adjusted = chain.oof()
    assert {k: p["tau"] for k, p in chain.per_fold().items()} == {0: 0.0, 1: 1.0}
    np.testing.assert_allclose(adjusted[folds == 0], probs[folds == 0])                     # tau 0: unchanged
    prior_of_fold_0 = class_priors(y[folds == 0], 2)
    np.testing.assert_allclose(adjusted[folds == 1], logit_adjust(probs[folds == 1], prior_of_fold_0, 1.0))
