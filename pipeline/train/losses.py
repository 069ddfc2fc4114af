"""Training losses, built from the ``loss:`` section of the configuration.

:func:`build_loss` turns a :class:`~pipeline.config.LossConfig` and the class
counts of a fold's *training* part into one ``torch.nn.Module`` called as
``loss_fn(logits, targets)``:

* ``logits``: ``(B, C)`` floats (any float dtype; computed in float32).
* ``targets``: either ``(B,)`` integer class ids, or ``(B, C)`` float class
  probabilities ("soft targets", e.g. from timm's ``Mixup``/``CutMix``). Soft
  targets generalise one-hot ones: a one-hot soft target gives exactly the loss
  of the matching class id, for every loss here.

Losses (``loss.name``, or several at once with ``loss.mix``):

* ``"ce"``: cross-entropy with ``loss.label_smoothing`` and, when
  ``loss.class_weights`` is set, per-class weights. Integer targets go straight
  to :func:`torch.nn.functional.cross_entropy`. Soft targets use timm's
  ``SoftTargetCrossEntropy`` formula ``-(y * log_softmax(x)).sum(1).mean()``;
  with class weights the batch is normalised by the targets' weight mass
  ``sum(w * y)`` instead of ``B``, i.e. torch's integer-target rule
  ``sum(w_y * l) / sum(w_y)`` -- so one-hot soft targets equal integer ones,
  weighted or not. (torch's own probability-target mode divides by ``B``; it
  would not.)
* ``"weighted_ce"``: ``"ce"`` whose ``class_weights`` default to ``"balanced"``.
* ``"focal"``: :class:`FocalLoss`, ``-alpha_y (1 - p_y)^gamma log p_y`` averaged
  over the batch (Lin et al. 2017). Per-class ``alpha`` is ``loss.focal_alpha``,
  else ``loss.class_weights`` when those are set, else none. No label
  smoothing: focal loss already tempers confident predictions, and smoothing
  its targets would make ``gamma = 0`` differ from plain cross-entropy.
* ``"f1"``: :class:`SoftF1Loss`, ``1 - macro soft-F1`` of the batch. Neither
  class weights (macro-F1 already weighs classes equally) nor label smoothing.

``loss.class_weights`` is ``"balanced"`` (scikit-learn's
``compute_class_weight``: ``n_samples / (n_classes * count)``, from the
training counts, never the validation rows) or an explicit list, one positive
number per class.

Settings a user can get wrong raise :class:`~pipeline.config.ConfigError`
naming the key (``loss.class_weights``, ``loss.focal_alpha``, ``loss.mix``,
``loss.name``). Settings that the chosen losses ignore (label smoothing with
``focal`` only, ...) give a ``UserWarning``, not an error, so that a tuning
search over ``loss.name`` keeps running.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from pipeline.config import ConfigError, LossConfig

__all__ = ["build_loss", "FocalLoss", "SoftF1Loss", "LOSS_NAMES", "loss_class_tilt"]

LOSS_NAMES = ("ce", "focal", "f1", "weighted_ce")

# Losses that use each setting; a setting none of the chosen losses uses draws a warning.
_USES_SMOOTHING = {"ce", "weighted_ce"}
_USES_CLASS_WEIGHTS = {"ce", "weighted_ce", "focal"}
_USES_ALPHA = {"focal"}


# ----------------------------------------------------------------------------------------
# Targets


def _soft_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets as (B, C) float class probabilities: class ids become one-hot rows.

    One code path for both kinds of targets keeps "one-hot soft == class id" true by
    construction for the losses that work on probabilities (focal, F1).
    """
    if _is_soft(logits, targets):
        return targets.to(torch.float32)
    return F.one_hot(targets.long(), logits.shape[1]).to(torch.float32)


def _is_soft(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """True for (B, C) float targets, False for (B,) integer ids; anything else is an error."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if targets.dim() == 1 and not targets.is_floating_point() and targets.dtype != torch.bool:
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"{targets.shape[0]} targets for {logits.shape[0]} logit rows")
        return False
    if targets.dim() == 2 and targets.is_floating_point() and targets.shape == logits.shape:
        return True
    raise ValueError(f"targets must be (B,) integer class ids or (B, C) float probabilities matching "
                     f"logits {tuple(logits.shape)}; got {targets.dtype} of shape {tuple(targets.shape)}")


# ----------------------------------------------------------------------------------------
# Loss modules


class _CrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that also takes soft (B, C) targets (see the module docstring).

    Class weights follow the logits to their device, so a loss built on the CPU works on
    CUDA logits even if nobody moved it.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        if _is_soft(logits, targets):
            return _soft_cross_entropy(logits, targets, weight, self.label_smoothing)
        if weight is not None:
            weight = weight.to(logits.dtype)
        return F.cross_entropy(logits, targets.long(), weight=weight, label_smoothing=self.label_smoothing)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                        label_smoothing: float) -> torch.Tensor:
    """Cross-entropy against class probabilities, normalised like torch's class-id version.

    Smoothing mixes the targets with the uniform distribution; with weights the sum is
    divided by ``sum(w * y)`` of the unsmoothed targets, which is exactly how
    ``F.cross_entropy`` normalises smoothed, weighted class-id targets.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    y = targets.float()
    smoothed = y * (1 - label_smoothing) + label_smoothing / logits.shape[1] if label_smoothing else y
    if weight is None:
        return -(smoothed * logp).sum(dim=1).mean()
    w = weight.float()
    return -(smoothed * w * logp).sum() / (y * w).sum()


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_y (1 - p_y)^gamma log p_y``, averaged over the batch.

    The factor ``(1 - p_y)^gamma`` shrinks the loss (and gradient) of examples the model
    already gets right, so training concentrates on hard ones; ``gamma = 0`` without alpha
    is exactly cross-entropy. ``alpha`` (one weight per class) scales each class's term;
    the mean is over the batch, not normalised by alpha. Soft targets ``y`` give
    ``-sum_c alpha_c y_c (1 - p_c)^gamma log p_c`` per row, the one-hot generalisation.
    Built from ``log_softmax`` for numerical stability; no label smoothing.
    """

    def __init__(self, gamma: float = 2.0, alpha=None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = _soft_targets(logits, targets)
        logp = F.log_softmax(logits.float(), dim=1)
        # 1 - p via expm1 stays accurate when p is close to 1; the clamp keeps the gradient
        # of (1 - p)^gamma finite for gamma < 1 when p rounds to exactly 1.
        modulator = (-torch.expm1(logp)).clamp(min=1e-12) ** self.gamma
        per_class = -y * modulator * logp
        if self.alpha is not None:
            per_class = per_class * self.alpha.to(logits.device)
        return per_class.sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={None if self.alpha is None else self.alpha.tolist()}"


class SoftF1Loss(nn.Module):
    """Differentiable macro-F1 loss: ``1 - mean_c soft-F1_c`` over the batch.

    With ``p`` the softmax probabilities and ``y`` the one-hot (or soft) targets, per
    class ``tp = sum p*y``, ``fp = sum p*(1-y)``, ``fn = sum (1-p)*y`` over the batch and
    ``F1 = 2tp / (2tp + fp + fn + eps)``. It optimises the competition metric directly
    and weighs every class equally whatever its frequency. A class absent from the batch
    has ``tp = 0``, so it adds a constant ``1 / C`` (no gradient) to the loss: compare
    values across batches with the same classes only.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = _soft_targets(logits, targets)
        p = F.softmax(logits.float(), dim=1)
        tp = (p * y).sum(dim=0)
        fp = (p * (1 - y)).sum(dim=0)
        fn = ((1 - p) * y).sum(dim=0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class _WeightedSum(nn.Module):
    """``sum_k weight_k * loss_k(logits, targets)``: the ``loss.mix`` combination."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, targets) for name, loss in self.losses.items())

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


# ----------------------------------------------------------------------------------------
# Validating the configuration


def _check_class_counts(class_counts) -> np.ndarray:
    """Training rows per class: a 1-D array of non-negative integers (a caller's bug otherwise)."""
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.number) \
            or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError(f"class_counts must be a non-empty 1-D array of non-negative integers "
                         f"(training rows per class id), got {class_counts!r}")
    return counts.astype(np.int64)


def _per_class_numbers(key: str, values, n_classes: int, *, positive: bool) -> list[float]:
    """A list of one finite number per class; ``positive`` demands > 0, else >= 0."""
    rule = "positive" if positive else "non-negative"
    expected = f"expected a list of {n_classes} {rule} numbers, one per class id"
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{key}: {expected}, got {values!r}")
    if len(values) != n_classes:
        raise ConfigError(f"{key}: {expected}, got {len(values)} value(s): {list(values)!r}")
    for v in values:
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) \
            and (v > 0 if positive else v >= 0)
        if not ok:
            raise ConfigError(f"{key}: {expected}, got {v!r} in {list(values)!r}")
    return [float(v) for v in values]


def _balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" weights ``n_samples / (n_classes * count)`` from class counts.

    Every class must have training rows: a class missing from a fold's training part has
    no defined weight, and silently giving it one would hide a fold problem.
    """
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ConfigError(f"loss.class_weights: 'balanced' needs every class in the fold's training "
                          f"rows, but class id(s) {missing.tolist()} have none; give an explicit list "
                          f"or fix the folds")
    labels = np.repeat(np.arange(len(counts)), counts)
    return compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)


def _class_weights(setting, counts: np.ndarray) -> torch.Tensor | None:
    """``loss.class_weights`` as a float tensor, or None when unset."""
    if setting is None:
        return None
    if isinstance(setting, str):
        if setting != "balanced":
            raise ConfigError(f"loss.class_weights: expected 'balanced' or a list of {len(counts)} "
                              f"positive numbers, got {setting!r}")
        return torch.as_tensor(_balanced_class_weights(counts), dtype=torch.float32)
    return torch.tensor(_per_class_numbers("loss.class_weights", setting, len(counts), positive=True))


def _mix_weights(lcfg: LossConfig) -> dict[str, float]:
    """The losses to build and their weights: ``loss.mix`` if set, else ``{loss.name: 1}``."""
    if lcfg.mix is None:
        if lcfg.name not in LOSS_NAMES:
            raise ConfigError(f"loss.name: expected one of {LOSS_NAMES}, got {lcfg.name!r}")
        return {lcfg.name: 1.0}
    if not isinstance(lcfg.mix, dict) or not lcfg.mix:
        raise ConfigError(f"loss.mix: expected a non-empty mapping of loss name to positive weight "
                          f"(names from {LOSS_NAMES}), got {lcfg.mix!r}")
    for name, weight in lcfg.mix.items():
        if name not in LOSS_NAMES:
            raise ConfigError(f"loss.mix: unknown loss {name!r}; expected names from {LOSS_NAMES}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) \
                or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"loss.mix: weight of {name!r} must be a positive number, got {weight!r}")
    return {name: float(weight) for name, weight in lcfg.mix.items()}


def _warn_unused(lcfg: LossConfig, names: set[str]) -> None:
    """Warn about settings that none of the chosen losses uses (kept as warnings for tuning)."""
    chosen = sorted(names)
    if lcfg.label_smoothing and not names & _USES_SMOOTHING:
        warnings.warn(f"loss.label_smoothing={lcfg.label_smoothing} has no effect on {chosen}; "
                      f"only ce and weighted_ce smooth labels", UserWarning, stacklevel=3)
    if lcfg.focal_alpha is not None and not names & _USES_ALPHA:
        warnings.warn(f"loss.focal_alpha has no effect on {chosen}; only focal uses it",
                      UserWarning, stacklevel=3)
    class_weight_users = names & _USES_CLASS_WEIGHTS
    if lcfg.focal_alpha is not None:
        class_weight_users -= {"focal"}
    if lcfg.class_weights is not None and not class_weight_users:
        warnings.warn(f"loss.class_weights has no effect on {chosen}"
                      + (" (focal uses loss.focal_alpha, which is set)" if "focal" in names else ""),
                      UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------
# Factory


def _build_one(name: str, lcfg: LossConfig, counts: np.ndarray, class_weights: torch.Tensor | None,
               alpha: torch.Tensor | None) -> nn.Module:
    """One named loss, given the already validated class weights and focal alpha."""
    if name == "ce":
        return _CrossEntropy(weight=class_weights, label_smoothing=lcfg.label_smoothing)
    if name == "weighted_ce":
        if class_weights is None:
            class_weights = _class_weights("balanced", counts)
        return _CrossEntropy(weight=class_weights, label_smoothing=lcfg.label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=lcfg.focal_gamma, alpha=alpha if alpha is not None else class_weights)
    if name == "f1":
        return SoftF1Loss()
    raise ConfigError(f"loss.name: expected one of {LOSS_NAMES}, got {name!r}")


def build_loss(lcfg: LossConfig, class_counts: np.ndarray) -> nn.Module:
    """The training loss described by ``lcfg`` for a fold whose training rows have ``class_counts``.

    ``class_counts[k]`` is the number of *training* rows of class id ``k`` (validation rows
    must not leak into "balanced" weights); its length is the number of classes, against
    which list settings are checked. ``loss.mix`` overrides ``loss.name``. The result is
    called as ``loss_fn(logits, targets)`` with class-id or soft targets (module docstring).
    Every setting is validated even when the chosen losses ignore it: a wrong list is a
    mistake worth reporting either way.
    """
    counts = _check_class_counts(class_counts)
    weights = _mix_weights(lcfg)
    class_weights = _class_weights(lcfg.class_weights, counts)
    alpha = None if lcfg.focal_alpha is None else torch.tensor(
        _per_class_numbers("loss.focal_alpha", lcfg.focal_alpha, len(counts), positive=False))
    _warn_unused(lcfg, set(weights))
    losses = {name: _build_one(name, lcfg, counts, class_weights, alpha) for name in weights}
    if lcfg.mix is None:
        return losses[lcfg.name]
    return _WeightedSum(losses, weights)


def loss_class_tilt(lcfg: LossConfig, class_counts) -> tuple[np.ndarray | None, float, str]:
    """How the loss tilts the class mix a model learns: (per-class weights or None, label smoothing, note).

    A class weight ``w_c`` on a per-row loss has, in expectation, the effect of drawing class ``c``
    ``w_c`` times as often, so the model's prior is the sampled mix times ``w``, renormalised; label
    smoothing ``eps`` then mixes that with the uniform mix. ``focal`` uses ``focal_alpha`` (else the
    class weights) the same way; its ``gamma`` has no prior to name and is left out. ``f1`` has none.
    ``loss.mix`` combines losses whose tilts do not add up to one prior: none is folded in (the note says so).
    """
    counts = _check_class_counts(class_counts)
    if lcfg.mix is not None:
        return None, 0.0, "loss.mix: its losses' class weights and smoothing are not folded into the prior"
    weights = _class_weights(lcfg.class_weights, counts)
    if lcfg.name == "weighted_ce" and weights is None:
        weights = _class_weights("balanced", counts)
    if lcfg.name == "focal" and lcfg.focal_alpha is not None:
        weights = torch.tensor(_per_class_numbers("loss.focal_alpha", lcfg.focal_alpha, len(counts), positive=False))
    if lcfg.name == "f1":
        weights = None
    smoothing = lcfg.label_smoothing if lcfg.name in _USES_SMOOTHING else 0.0
    note = f"loss {lcfg.name}" + (": class weights folded in" if weights is not None else "")
    return (None if weights is None else weights.double().numpy()), float(smoothing), note
