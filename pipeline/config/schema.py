"""The whole config: its sections, the rules across them, the folders it derives, one seed's copy."""

import hashlib
import re
import typing
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pipeline.config.base import Broken, ConfigError, Section, is_section
from pipeline.config.data_keys import DataConfig, FoldsConfig, MaskConfig
from pipeline.config.decision_keys import CompetitionConfig, EnsembleConfig, PseudoConfig, TTAConfig
from pipeline.config.running_keys import ParallelConfig, ReportConfig, TuneConfig
from pipeline.config.training_keys import AugmentConfig, LossConfig, ModelConfig, SamplingConfig, TrainConfig

__all__ = ["Config", "seed_config", "CHOICES"]


class Config(Section):
    experiment: str = "demo"
    seed: int = 42
    seeds: list | None = None          # several seeds on the same folds, averaged within each fold
    output_dir: str = "outputs"
    competition: CompetitionConfig = Field(default_factory=CompetitionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tta: TTAConfig = Field(default_factory=TTAConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    # Set by `seed_config` only: the sub-folder (seed_<s>) one seed of a `seeds` run trains and predicts in.
    _run_subdir: str | None = PrivateAttr(None)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section(cls, v, info):
        """`train:` with nothing under it keeps the defaults."""
        return {} if v is None and is_section(cls.model_fields[info.field_name].annotation) else v

    @model_validator(mode="after")
    def _monitor_follows_the_metric(self):
        """`train.monitor` unset: the best checkpoint is the one the competition would score best."""
        if self.train.monitor is None:
            self.train.monitor = self.competition.metric
        return self

    @model_validator(mode="after")
    def _lists_the_pipeline_writes(self):
        """A class-folder layout's train list and a missing sample submission are written by the pipeline
        (pipeline/data/layouts.py) to the paths derived here; `data.train_csv` / `data.sample_submission` name them,
        so every stage reads them like the files of any competition."""
        d = self.data
        if d.layout == "folders":
            derived = self.folder_list_file
            # A resolved config names the list; under another output_dir it is the same list (same name), moved.
            if "train_csv" in d.model_fields_set and Path(d.train_csv).name != derived.name:
                raise Broken("data.train_csv", "data.layout: folders lists the class folders itself (into "
                             f"{derived}); remove data.train_csv", d.train_csv)
            d.train_csv = str(derived)
        if d.sample_submission is None or Path(d.sample_submission).name == self.derived_sample_file.name:
            d.sample_submission = str(self.derived_sample_file)
        return self

    def _rules(self):
        seeds = self.seeds
        return [("experiment", self.experiment.replace("-", "").replace("_", "").isalnum(),
                 "must be letters, digits, '-' or '_' (it names a folder)"),
                ("seeds", seeds is None or (len(seeds) >= 2 and len(set(seeds)) == len(seeds) and all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)),
                 "must be null or a list of at least 2 distinct non-negative integers (one seed: set `seed`)"),
                ("experiment", self.pseudo.source != self.experiment,
                 "pseudo.source names this experiment itself: give the pseudo-label round its own experiment name")]

    # Derived locations: one place decides where every stage reads and writes.
    @property
    def exp_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment

    @property
    def folds_file(self) -> Path:
        return Path(self.folds.dir) / f"{self.folds.name or self.experiment}.csv"

    @property
    def folder_list_file(self) -> Path:
        """data.layout: folders: the train CSV the pipeline writes from the class folders (one per data folder)."""
        return _derived_csv(self.output_dir, "train", self.data.image_root, self.data.class_folders)

    @property
    def derived_sample_file(self) -> Path:
        """data.sample_submission: null: the sample submission the pipeline writes from the test folder."""
        d = self.data
        return _derived_csv(self.output_dir, "sample_submission", d.test_root or d.image_root,
                            d.test_image_template or "", d.id_column, d.target_column)

    @property
    def run_dir(self) -> Path:
        """Where the folds train: the experiment folder, or its seed_<s> folder for one seed of `seeds`."""
        return self.exp_dir / self._run_subdir if self._run_subdir else self.exp_dir

    def fold_dir(self, fold: int) -> Path:
        return self.run_dir / f"fold_{fold}"


def _derived_csv(output_dir: str, kind: str, root: str, *what: str) -> Path:
    """``<output_dir>/lists/<kind>-<root's name>-<hash>.csv``: shared by every experiment on the same data (so
    their folds stay up to date), a different file for other data; only path characters Make can use."""
    key = hashlib.sha256("\0".join([str(Path(root)), *what]).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(root).resolve().name or "data")
    return Path(output_dir) / "lists" / f"{kind}-{name}-{key}.csv"


def seed_config(cfg: Config, seed: int) -> Config:
    """One seed of a `seeds` run: `seed` set, trained and predicted in ``<exp>/seed_<seed>/fold_<k>/``.

    Everything else (folds file, cache, pseudo-labels, experiment folder) is the parent's, so the seeds
    differ in their seed alone; ``<exp>/fold_<k>/`` then holds the seeds' average.
    """
    if not cfg.seeds or seed not in cfg.seeds:
        raise ConfigError(f"seed {seed} is not among seeds {cfg.seeds}; set seeds: [..] to train several seeds")
    one = cfg.model_copy(update={"seed": seed, "seeds": None})
    one._run_subdir = f"seed_{seed}"
    return one


# The keys with a fixed set of values, and those values: {"loss.name": ("ce", "focal", ...), ...}.
CHOICES = {f"{section}.{key}": typing.get_args(field.annotation)
           for section, outer in Config.model_fields.items() if is_section(outer.annotation)
           for key, field in outer.annotation.model_fields.items() if typing.get_origin(field.annotation) is Literal}
