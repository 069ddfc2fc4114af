"""One backbone, three heads (mask 3, gender 2, age 3) whose product is the 18-class distribution.

The model returns the 18 classes' log-probabilities, so losses, TTA and voting treat it like any
18-class model, and plain cross-entropy on its outputs is the sum of the three heads' cross-entropies.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from pipeline.competitions.mask.labels import N_CLASSES

__all__ = ["HEADS", "MaskHeadsModel", "multihead_log_probs_18", "multihead_to_18"]


HEADS = (("mask", 3), ("gender", 2), ("age", 3))


def _check_heads(mask_logits, gender_logits, age_logits) -> None:
    for (name, n), t in zip(HEADS, (mask_logits, gender_logits, age_logits)):
        if t.ndim != 2 or t.shape[1] != n:
            raise ValueError(f"{name} logits must have shape [B, {n}], got {tuple(t.shape)}")
    if not mask_logits.shape[0] == gender_logits.shape[0] == age_logits.shape[0]:
        raise ValueError("the three heads' logits must have the same batch size, got "
                         f"{mask_logits.shape[0]}, {gender_logits.shape[0]}, {age_logits.shape[0]}")


def multihead_log_probs_18(mask_logits, gender_logits, age_logits) -> torch.Tensor:
    """log P(class) [B, 18] = log_softmax(mask)[m] + log_softmax(gender)[g] + log_softmax(age)[a].

    Return these from a multi-head model wrapper as its logits: softmax of them is the
    product distribution, and cross-entropy on them is the sum of the heads' cross-entropies.
    """
    _check_heads(mask_logits, gender_logits, age_logits)
    lm, lg, la = (F.log_softmax(t.float(), dim=1) for t in (mask_logits, gender_logits, age_logits))
    return (lm[:, :, None, None] + lg[:, None, :, None] + la[:, None, None, :]).reshape(-1, N_CLASSES)


def multihead_to_18(mask_logits, gender_logits, age_logits) -> torch.Tensor:
    """Class probabilities [B, 18] from three heads: p[m*6 + g*3 + a] = p_mask[m] p_gender[g] p_age[a].

    >>> p = multihead_to_18(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 3))
    >>> tuple(p.shape), bool(torch.allclose(p.sum(1), torch.ones(2)))
    ((2, 18), True)
    """
    _check_heads(mask_logits, gender_logits, age_logits)
    pm, pg, pa = (F.softmax(t.float(), dim=1) for t in (mask_logits, gender_logits, age_logits))
    return (pm[:, :, None, None] * pg[:, None, :, None] * pa[:, None, None, :]).reshape(-1, N_CLASSES)


class MaskHeadsModel(torch.nn.Module):
    """One timm backbone with three heads (mask 3, gender 2, age 3) for the 18 mask classes.

    Its outputs are the 18 classes' log-probabilities (the product of the three heads'
    softmaxes), so losses, TTA and voting treat it like any 18-class model, and plain
    cross-entropy on them is the sum of the three heads' cross-entropies.
    """

    def __init__(self, name: str, pretrained: bool = False, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, drop_rate=drop_rate)
        width = self.backbone.num_features
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, n) for _, n in HEADS])

    def get_classifier(self) -> torch.nn.Module:
        return self.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return multihead_log_probs_18(*(head(features) for head in self.heads))
