"""Typed, validated experiment configuration.

One YAML file per experiment (`configs/*.yaml`) is read into nested pydantic models.
Unknown keys, wrong types and impossible values are errors that name the key,
raised before any work starts. Command-line overrides use dotted keys
(`train.lr=0.01`). The resolved configuration is saved with the run, and each
stage gets a *stamp*: a file holding only the keys that stage depends on,
rewritten only when they change, so Make reruns exactly what a change affects
(:mod:`pipeline.stamps`).

Modules: `base` (the error, the section base class), one module per group of sections (`data_keys`,
`training_keys`, `decision_keys`, `running_keys`), `schema` (the whole config), `errors` (pydantic's errors as
one line per key), `loading` (YAML and overrides).
"""

from pipeline.config.base import (COMPETITION_METRICS, MONITOR_MAXIMISE, SUBMISSION_FORMATS, ConfigError, Float,
                                  is_section, literal_choices)
from pipeline.config.data_keys import DataConfig, FoldsConfig, MaskConfig
from pipeline.config.decision_keys import CompetitionConfig, EnsembleConfig, PseudoConfig, TTAConfig
from pipeline.config.loading import config_to_dict, flatten, load_config, matches, nest, parse_overrides, with_values
from pipeline.config.running_keys import ParallelConfig, ReportConfig, TuneConfig
from pipeline.config.schema import CHOICES, Config, seed_config
from pipeline.config.training_keys import AugmentConfig, LossConfig, ModelConfig, SamplingConfig, TrainConfig

__all__ = ["ConfigError", "Config", "load_config", "parse_overrides", "config_to_dict", "flatten", "nest",
           "with_values", "matches", "seed_config", "CHOICES", "COMPETITION_METRICS", "MONITOR_MAXIMISE",
           "SUBMISSION_FORMATS", "Float", "is_section", "literal_choices",
           "DataConfig", "FoldsConfig", "MaskConfig", "ModelConfig", "AugmentConfig", "SamplingConfig", "TrainConfig",
           "LossConfig", "CompetitionConfig", "TTAConfig", "EnsembleConfig", "PseudoConfig", "ReportConfig",
           "ParallelConfig", "TuneConfig"]
