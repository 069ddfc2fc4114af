"""What the competition's files are and how they are split: the data, folds and mask-layout sections."""

from typing import Literal

from pydantic import Field

from pipeline.config.base import Float, Section

__all__ = ["DataConfig", "FoldsConfig", "MaskConfig"]


class DataConfig(Section):
    train_csv: str = "data/demo/train.csv"
    image_root: str = "data/demo"
    image_column: str = "image"
    label_column: str = "label"
    group_column: str | None = None
    stratify_column: str | None = None      # stratify folds on this column instead of the label
    true_label_column: str | None = None    # validation is scored on this column (train on label)
    sample_submission: str = "data/demo/sample_submission.csv"
    id_column: str = "id"
    target_column: str = "label"
    test_image_template: str | None = "test/{id}.png"
    test_path_column: str | None = None
    test_root: str | None = None
    test_labels: str | None = None
    demo: bool = False
    demo_scale: Float = Field(1.0, gt=0, le=1)   # 1.0 uses every digit
    demo_seed: int = 0
    demo_task: Literal["digits", "odd"] = "digits"   # odd: two classes, a probability submission
    # Decode once: images decoded and resized a single time into a memory-mapped uint8 file
    # (pipeline/cache.py). Off or on gives the same numbers, so neither key is in a stage fingerprint.
    cache: bool = True
    cache_dir: str | None = None            # default <output_dir>/cache
    # How Make notices changed images (pipeline/manifest.py): size + modification time, or also sha256.
    manifest: Literal["stat", "sha256"] = "stat"

    def _rules(self):
        return [("test_image_template", (self.test_image_template is None) != (self.test_path_column is None),
                 "set exactly one of data.test_image_template and data.test_path_column")]


class FoldsConfig(Section):
    n_splits: int = Field(5, ge=2)
    name: str | None = None
    dir: str = "folds"
    # Group suspected near-duplicates (pipeline/data/leaks.py) before splitting, joined with any group column.
    auto_groups: bool = False
    # The leak rule (see leaks.py): a same-class pair is a suspected duplicate when its distance after
    # alignment is under this share of each image's distance to its third-nearest look-alike outside its
    # suspected group. Lower flags fewer pairs.
    leak_ratio: float = Field(0.45, gt=0, lt=1)


class MaskConfig(Section):
    enabled: bool = False              # build data.train_csv from the competition's layout
    sample: bool = False               # write the synthetic sample first when the raw data is absent
    age_cutoff: int = 60               # training labels only; validation is scored on true labels
    relabel_file: str | None = None    # CSV: id, field, value
