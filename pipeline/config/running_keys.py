"""Around the runs: the report, parallel and tuning sections."""

from typing import Literal

from pydantic import Field

from pipeline.config.base import Section
from pipeline.progress import PROGRESS_MODES

__all__ = ["ReportConfig", "ParallelConfig", "TuneConfig"]


class ReportConfig(Section):
    samples_per_class: int = 8
    near_duplicate_distance: int = 4   # max Hamming distance of 64-bit average hashes
    progress: Literal[PROGRESS_MODES] = "auto"
    tensorboard: bool = False
    wandb: bool = False
    mlflow: bool = False


class ParallelConfig(Section):
    backend: Literal["local", "dask"] = "local"
    scheduler: str | None = None       # tcp://host:8786; None starts nothing (local processes)
    gpus: list | None = None           # device ids for round-robin fold placement


class TuneConfig(Section):
    trials: int = Field(20, ge=1)
    storage: str | None = None         # default: sqlite:///<output_dir>/<experiment>/tune.db
    study_name: str | None = None
    folds: list = [0]
    space: dict = {}
    pruner: Literal["median", "none"] = "median"
