"""What the competition's files are and how they are split: the data, folds and mask-layout sections."""

from pathlib import PurePath
from typing import Literal

from pydantic import Field

from pipeline.config.base import Float, Section

__all__ = ["DataConfig", "FoldsConfig", "MaskConfig"]


class DataConfig(Section):
    # How the training images are laid out (pipeline/data/layouts.py): a CSV naming each image (`csv`), or
    # one folder per class under image_root/class_folders (`folders`: the class is the folder's name, and the
    # pipeline writes the list of images itself, to <output_dir>/lists/, in place of train_csv).
    layout: Literal["csv", "folders"] = "csv"
    class_folders: str = "train"            # folders: the folder (under image_root) holding one folder per class
    train_csv: str = "data/demo/train.csv"
    image_root: str = "data/demo"
    image_column: str = "image"
    # The image of a row: image_column holds an id, the image is this template filled with it ("train/{id}.jpg").
    # A template ending in {id} (no extension) finds each image's extension by looking in its folder.
    train_image_template: str | None = None
    label_column: str = "label"
    group_column: str | None = None
    stratify_column: str | None = None      # stratify folds on this column instead of the label
    true_label_column: str | None = None    # validation is scored on this column (train on label)
    # null: no sample submission ships; the pipeline lists the folder of test_image_template ("test/{id}") into one
    # (id = the file name, an empty target column) in <output_dir>/lists/; data.id_column must then be set.
    sample_submission: str | None = "data/demo/sample_submission.csv"
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
    # 16/32-bit images (medical, satellite): refused by the data check (refuse), or scaled to 8-bit when decoded,
    # by the type's range (range: 0..65535 for 16-bit) or by the 0.5th..99.5th percentiles of the training images'
    # pixels (percentile; pipeline/data/bit_depth.py), the same window for every image, train and test.
    high_bit_depth: Literal["refuse", "range", "percentile"] = "refuse"

    def _rules(self):
        folders = self.layout == "folders"
        template = self.test_image_template or ""
        return [("test_image_template", (self.test_image_template is None) != (self.test_path_column is None),
                 "set exactly one of data.test_image_template and data.test_path_column"),
                ("train_image_template", self.train_image_template is None or "{id}" in self.train_image_template,
                 "must contain {id}, e.g. 'train/{id}.jpg' (or 'train/{id}': the extension is found by looking)"),
                ("train_image_template", not (folders and self.train_image_template),
                 "is for data.layout: csv; with folders every image is found in its class folder"),
                ("layout", not folders or not (self.group_column or self.stratify_column or self.true_label_column),
                 "folders has no columns: data.group_column, stratify_column and true_label_column must be null"),
                ("layout", not folders or (self.image_column, self.label_column) == ("image", "label"),
                 "folders writes the columns 'image' and 'label': leave data.image_column and label_column unset"),
                ("class_folders", not folders or _relative(self.class_folders),
                 "must be a folder under data.image_root, without '..' (or '.': image_root itself)"),
                ("sample_submission", self.sample_submission is not None or (
                    template.endswith("{id}") and "{id}" not in template[:-4] and _relative(template[:-4] or ".")),
                 "null lists the test folder into a sample submission: it needs data.test_image_template "
                 "'<folder>/{id}' (the id is the file name)"),
                ("sample_submission", self.sample_submission is not None or "id_column" in self.model_fields_set,
                 "null writes a sample submission whose ids are the test images' file names: name its id column "
                 "with data.id_column (and its label column with data.target_column)")]


def _relative(path: str) -> bool:
    """A path that stays under the folder it is joined to: relative, no '..'."""
    return not PurePath(path).is_absolute() and ".." not in PurePath(path).parts


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
