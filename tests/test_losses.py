"""Losses: each test checks a value or an effect against an independent computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from timm.loss import SoftTargetCrossEntropy

from pipeline.config import CHOICES, ConfigError, LossConfig
from pipeline.train.losses import LOSS_NAMES, FocalLoss, SoftF1Loss, build_loss

COUNTS = np.array([6, 3, 1])          # training rows per class: imbalanced, 3 classes


@pytest.fixture
def batch():
    """Random logits (8, 3) and class-id targets covering every class."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g) * 2
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    return logits, targets


def _nll(logits, targets):
    """Per-row -log softmax of the target class, written out by hand."""
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp[torch.arange(len(targets)), targets]


def test_loss_names_match_config_choices():
    assert LOSS_NAMES == CHOICES["loss.name"]


# ---- focal ------------------------------------------------------------------------------

def test_focal_gamma_zero_equals_cross_entropy(batch):
    logits, targets = batch
    focal = build_loss(LossConfig(name="focal", focal_gamma=0.0), COUNTS)
    assert torch.allclose(focal(logits, targets), F.cross_entropy(logits, targets), atol=1e-6)


def test_focal_matches_formula_and_is_below_ce_when_well_classified():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    targets = torch.tensor([0, 1])
    p_t = torch.softmax(logits, 1)[torch.arange(2), targets]
    expected = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    focal = FocalLoss(gamma=2.0)(logits, targets)
    ce = F.cross_entropy(logits, targets)
    assert torch.allclose(focal, expected, atol=1e-6)
    assert focal < 0.1 * ce          # p_t ≈ 0.96 / 0.84: (1-p)^2 shrinks the loss tenfold at least


def _grad_norm(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    loss_fn(x, target).backward()
    return x.grad.norm().item()


def test_focal_down_weights_easy_examples_gradient():
    easy = torch.tensor([[3.0, 0.0, 0.0]])      # p_y ≈ 0.91
    hard = torch.tensor([[0.0, 2.0, 0.0]])      # p_y ≈ 0.11
    y = torch.tensor([0])
    focal, ce = FocalLoss(gamma=2.0), torch.nn.CrossEntropyLoss()
    ratio_easy = _grad_norm(focal, easy, y) / _grad_norm(ce, easy, y)
    ratio_hard = _grad_norm(focal, hard, y) / _grad_norm(ce, hard, y)
    assert ratio_easy < 0.05                    # easy example's gradient nearly switched off
    assert ratio_hard > 0.5                     # hard example keeps most of it
    assert _grad_norm(focal, easy, y) < 0.01 * _grad_norm(focal, hard, y)


def test_focal_alpha_scales_each_class_term(batch):
    logits, targets = batch
    alpha = [0.25, 0.5, 2.0]
    weighted = build_loss(LossConfig(name="focal", focal_gamma=2.0, focal_alpha=alpha), COUNTS)
    plain = FocalLoss(gamma=2.0)
    per_row = torch.stack([plain(logits[i:i + 1], targets[i:i + 1]) for i in range(len(targets))])
    expected = (torch.tensor(alpha)[targets] * per_row).mean()
    assert torch.allclose(weighted(logits, targets), expected, atol=1e-6)


def test_focal_uses_class_weights_as_alpha_when_alpha_unset(batch):
    logits, targets = batch
    w = [1.0, 2.0, 3.0]
    via_weights = build_loss(LossConfig(name="focal", class_weights=w), COUNTS)
    via_alpha = build_loss(LossConfig(name="focal", focal_alpha=w), COUNTS)
    assert torch.allclose(via_weights(logits, targets), via_alpha(logits, targets))


# ---- class weights ---------------------------------------------------------------------

def test_balanced_weights_equal_sklearn_and_weighted_mean(batch):
    logits, targets = batch
    loss_fn = build_loss(LossConfig(name="ce", class_weights="balanced"), COUNTS)
    labels = np.repeat(np.arange(3), COUNTS)
    expected_w = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert np.allclose(loss_fn.weight.numpy(), expected_w)
    assert np.allclose(expected_w, 10 / (3 * COUNTS))
    w_y = torch.tensor(expected_w, dtype=torch.float32)[targets]
    expected = (w_y * _nll(logits, targets)).sum() / w_y.sum()
    assert torch.allclose(loss_fn(logits, targets), expected, atol=1e-6)
    assert not torch.allclose(loss_fn(logits, targets), F.cross_entropy(logits, targets))


def test_weighted_ce_defaults_to_balanced_and_keeps_explicit_list(batch):
    logits, targets = batch
    default = build_loss(LossConfig(name="weighted_ce"), COUNTS)
    balanced = build_loss(LossConfig(name="ce", class_weights="balanced"), COUNTS)
    assert torch.allclose(default(logits, targets), balanced(logits, targets))
    explicit = build_loss(LossConfig(name="weighted_ce", class_weights=[1.0, 1.0, 5.0]), COUNTS)
    assert explicit.weight.tolist() == [1.0, 1.0, 5.0]
    assert isinstance(build_loss(LossConfig(), COUNTS), torch.nn.CrossEntropyLoss)
    assert build_loss(LossConfig(), COUNTS).weight is None


# ---- label smoothing -------------------------------------------------------------------

def test_label_smoothing_hand_formula_two_classes():
    eps = 0.1
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    smoothed = build_loss(LossConfig(label_smoothing=eps), np.array([1, 1]))(logits, target)
    plain = build_loss(LossConfig(), np.array([1, 1]))(logits, target)
    logp0, logp1 = -math.log1p(math.exp(-2.0)), -math.log1p(math.exp(2.0))
    assert smoothed.item() == pytest.approx(-(1 - eps / 2) * logp0 - (eps / 2) * logp1, abs=1e-6)
    assert plain.item() == pytest.approx(-logp0, abs=1e-6)
    assert smoothed > plain                     # smoothing penalises the confident right answer


# ---- soft F1 ---------------------------------------------------------------------------

def test_soft_f1_perfect_wrong_and_hand_value():
    targets = torch.tensor([0, 1, 2, 1])
    perfect = F.one_hot(targets, 3).float() * 30
    wrong = F.one_hot((targets + 1) % 3, 3).float() * 30
    f1 = SoftF1Loss()
    assert f1(perfect, targets).item() < 1e-6
    assert f1(wrong, targets).item() > 1 - 1e-6
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.2, 0.0]])
    y = torch.tensor([0, 1, 1])
    p = torch.softmax(logits, 1)
    f1s = []
    for c in range(2):
        pc, yc = p[:, c], (y == c).float()
        tp, fp, fn = (pc * yc).sum(), (pc * (1 - yc)).sum(), ((1 - pc) * yc).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert f1(logits, y).item() == pytest.approx(1 - (f1s[0] + f1s[1]).item() / 2, abs=1e-6)


def test_soft_f1_gradient_flows_and_a_step_improves_it(batch):
    logits, targets = batch
    x = logits.clone().requires_grad_(True)
    loss = build_loss(LossConfig(name="f1"), COUNTS)(x, targets)
    assert loss.requires_grad
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        after = SoftF1Loss()(x - 1.0 * x.grad, targets)
    assert after < loss


# ---- mix -------------------------------------------------------------------------------

def test_mix_is_weighted_sum_of_parts(batch):
    logits, targets = batch
    mixed = build_loss(LossConfig(name="focal", mix={"ce": 0.7, "f1": 0.3}), COUNTS)
    expected = 0.7 * F.cross_entropy(logits, targets) + 0.3 * SoftF1Loss()(logits, targets)
    assert torch.allclose(mixed(logits, targets), expected, atol=1e-6)


def test_mix_parts_share_settings(batch):
    logits, targets = batch
    cfg = LossConfig(mix={"weighted_ce": 1.0, "focal": 2.0}, focal_gamma=1.0, label_smoothing=0.1)
    mixed = build_loss(cfg, COUNTS)
    ce = build_loss(LossConfig(name="weighted_ce", label_smoothing=0.1), COUNTS)
    focal = FocalLoss(gamma=1.0)
    expected = ce(logits, targets) + 2.0 * focal(logits, targets)
    assert torch.allclose(mixed(logits, targets), expected, atol=1e-6)


# ---- soft targets ----------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    LossConfig(name="ce"),
    LossConfig(name="ce", label_smoothing=0.2),
    LossConfig(name="weighted_ce"),
    LossConfig(name="weighted_ce", label_smoothing=0.2),
    LossConfig(name="focal", focal_alpha=[0.2, 0.3, 0.5]),
    LossConfig(name="f1"),
    LossConfig(mix={"ce": 0.5, "focal": 0.3, "f1": 0.2}, class_weights=[1.0, 2.0, 4.0]),
], ids=lambda c: str(c.mix or c.name) + ("+ls" if c.label_smoothing else ""))
def test_one_hot_soft_targets_equal_class_ids(batch, cfg):
    logits, targets = batch
    loss_fn = build_loss(cfg, COUNTS)
    soft = F.one_hot(targets, 3).float()
    assert torch.allclose(loss_fn(logits, soft), loss_fn(logits, targets), atol=1e-6)


def test_soft_ce_matches_timm_on_mixed_targets(batch):
    logits, targets = batch
    lam = 0.7
    soft = lam * F.one_hot(targets, 3).float() + (1 - lam) * F.one_hot(targets.flip(0), 3).float()
    ours = build_loss(LossConfig(name="ce"), COUNTS)(logits, soft)
    assert torch.allclose(ours, SoftTargetCrossEntropy()(logits, soft), atol=1e-6)
    # Mixup targets are a convex mix, so the CE loss is the same mix of the two CE losses.
    expected = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets.flip(0))
    assert torch.allclose(ours, expected, atol=1e-6)


def test_soft_weighted_ce_normalises_by_target_weight_mass(batch):
    logits, targets = batch
    w = torch.tensor([1.0, 2.0, 4.0])
    soft = 0.6 * F.one_hot(targets, 3).float() + 0.4 * F.one_hot(targets.flip(0), 3).float()
    loss = build_loss(LossConfig(class_weights=w.tolist()), COUNTS)(logits, soft)
    logp = torch.log_softmax(logits, 1)
    expected = -(soft * w * logp).sum() / (soft * w).sum()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_validation_style_numpy_inputs_accepted(batch):
    """The trainer scores validation with tensors made from numpy arrays (int32 labels possible)."""
    logits, targets = batch
    loss_fn = build_loss(LossConfig(name="focal"), COUNTS)
    got = loss_fn(torch.from_numpy(logits.numpy()), torch.from_numpy(targets.numpy().astype(np.int32)))
    assert torch.allclose(got, loss_fn(logits, targets))


def test_bad_target_shape_is_an_error(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match="targets must be"):
        build_loss(LossConfig(), COUNTS)(logits, targets.float())


# ---- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, key, expected", [
    (LossConfig(class_weights=[1.0, 2.0]), "loss.class_weights", "3 positive numbers"),
    (LossConfig(class_weights=[1.0, -2.0, 1.0]), "loss.class_weights", "-2.0"),
    (LossConfig(class_weights=[1.0, 0.0, 1.0]), "loss.class_weights", "positive"),
    (LossConfig(class_weights="balance"), "loss.class_weights", "'balanced'"),
    (LossConfig(name="focal", focal_alpha=[0.5, 0.5]), "loss.focal_alpha", "3 non-negative numbers"),
    (LossConfig(name="focal", focal_alpha=[0.5, -0.1, 0.5]), "loss.focal_alpha", "-0.1"),
    (LossConfig(mix={"ce": 0.5, "dice": 0.5}), "loss.mix", "unknown loss 'dice'"),
    (LossConfig(mix={"ce": 1.0, "f1": 0.0}), "loss.mix", "positive"),
    (LossConfig(mix={"ce": -1.0}), "loss.mix", "positive"),
    (LossConfig(mix={}), "loss.mix", "non-empty"),
    (LossConfig.model_construct(name="bce"), "loss.name", "one of"),   # built in code, unvalidated
])
def test_user_errors_name_the_key(cfg, key, expected):
    with pytest.raises(ConfigError) as err:
        build_loss(cfg, COUNTS)
    assert key in str(err.value) and expected in str(err.value)


def test_balanced_with_a_class_missing_from_training_rows_is_an_error():
    with pytest.raises(ConfigError, match=r"loss.class_weights.*class id\(s\) \[1\]"):
        build_loss(LossConfig(name="weighted_ce"), np.array([4, 0, 2]))


def test_settings_the_chosen_loss_ignores_warn():
    with pytest.warns(UserWarning, match="loss.label_smoothing"):
        build_loss(LossConfig(name="focal", label_smoothing=0.1), COUNTS)
    with pytest.warns(UserWarning, match="loss.class_weights"):
        build_loss(LossConfig(name="f1", class_weights="balanced"), COUNTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_loss(LossConfig(mix={"ce": 0.5, "f1": 0.5}, label_smoothing=0.1, class_weights="balanced"), COUNTS)
