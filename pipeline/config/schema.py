"""The whole config: its sections, the rules across them, the folders it derives, one seed's copy."""

import typing
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pipeline.config.base import ConfigError, Section, is_section
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
    def run_dir(self) -> Path:
        """Where the folds train: the experiment folder, or its seed_<s> folder for one seed of `seeds`."""
        return self.exp_dir / self._run_subdir if self._run_subdir else self.exp_dir

    def fold_dir(self, fold: int) -> Path:
        return self.run_dir / f"fold_{fold}"


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
