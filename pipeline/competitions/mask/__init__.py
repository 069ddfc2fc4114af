"""The Boostcamp mask-classification competition: labels, layout, the three-head model, a sample."""

from pipeline.competitions.mask.labels import N_CLASSES, MaskDataError
from pipeline.competitions.mask.layout import people_csv, prepare_from_config, prepare_mask_data, read_relabel_file
from pipeline.competitions.mask.sample import make_mask_sample

__all__ = ["N_CLASSES", "MaskDataError", "people_csv", "prepare_mask_data", "prepare_from_config", "read_relabel_file",
           "make_mask_sample"]
