"""Fold voting on hand-made probabilities: soft, hard (with ties), geometric, rank."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import pipeline.ensemble as ensemble
from pipeline.ensemble import VOTING_MODES, geometric_vote, hard_vote, rank_average, soft_vote, vote

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


def test_doctests():
    assert doctest.testmod(ensemble).failed == 0
