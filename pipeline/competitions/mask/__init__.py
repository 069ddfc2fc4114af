"""The Boostcamp mask-classification competition: labels, layout, the three-head model, a sample."""

from pipeline.registry import register_heads

from pipeline.competitions.mask.labels import N_CLASSES, MaskDataError, check_mask_classes
from pipeline.competitions.mask.layout import people_csv, prepare_from_config, prepare_mask_data, read_relabel_file
from pipeline.competitions.mask.sample import make_mask_sample

__all__ = ["N_CLASSES", "MaskDataError", "people_csv", "prepare_mask_data", "prepare_from_config", "read_relabel_file",
           "make_mask_sample"]


def _build_heads(backbone: str, num_classes: int, pretrained: bool, drop_rate: float):
    """The three-head model (torch and timm are imported only when a model is built)."""
    from pipeline.config import ConfigError
    from pipeline.competitions.mask.heads import MaskHeadsModel

    if num_classes != N_CLASSES:
        raise ConfigError(f"model.heads: 'mask' needs the {N_CLASSES} mask classes, the data has {num_classes}")
    return MaskHeadsModel(backbone, pretrained, drop_rate)


# The trainer builds `model.heads: mask` through the registry; it never imports this competition.
register_heads("mask", _build_heads, check_mask_classes)
