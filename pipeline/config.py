"""Typed, validated experiment configuration.

One YAML file per experiment (`configs/*.yaml`) is read into nested pydantic models.
Unknown keys, wrong types and impossible values are errors that name the key,
raised before any work starts. Command-line overrides use dotted keys
(`train.lr=0.01`). The resolved configuration is saved with the run, and each
stage gets a *stamp*: a file holding only the keys that stage depends on,
rewritten only when they change, so Make reruns exactly what a change affects
(:mod:`pipeline.stamps`).

Longer than the other modules (~475 lines) on purpose: every key's type, default and rule sits in
one place, in the order of the README's configuration reference.
"""

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from pipeline.progress import PROGRESS_MODES

__all__ = [
    "ConfigError",
    "Config",
    "load_config",
    "parse_overrides",
    "config_to_dict",
    "flatten",
    "nest",
    "with_values",
    "matches",
    "seed_config",
]


class ConfigError(ValueError):
    """A configuration value a user can fix: the message names the key."""


class _Broken(ValueError):
    """A section's rule that does not hold: the key (within the section), the rule, the value."""

    def __init__(self, key: str, rule: str, value: Any):
        super().__init__(f"{key}: {rule}")
        self.key, self.rule, self.value = key, rule, value


def _yaml_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `3e-4` as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


# A float that also takes an int (1 -> 1.0) or a number written as a string; never a bool.
Float = Annotated[float, BeforeValidator(_yaml_float)]


def literal_choices(annotation) -> tuple:
    """The documented choices of a key (its Literal's values, also inside `Literal[...] | None`), else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return next((typing.get_args(a) for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal), ())

# Metrics `competition.metric` may name (pipeline.metrics.metric_value), and whether higher is better.
COMPETITION_METRICS = {"f1_macro": True, "accuracy": True, "roc_auc": True, "log_loss": False, "qwk": True}
# Metrics `train.monitor` may name, and whether a higher value is better (pipeline.metrics.MAXIMISE);
# `loss` is the training loss on the validation fold, `log_loss` the plain log-loss of its probabilities.
MONITOR_MAXIMISE = {**COMPETITION_METRICS, "f1_weighted": True, "precision_macro": True, "recall_macro": True,
                    "loss": False}
SUBMISSION_FORMATS = ("auto", "labels", "probability", "class_probabilities")


class _Section(BaseModel):
    """The config and each of its sections."""
    # strict: no bool for an int, no "5" for an int, no 1 for a bool (Float takes ints and numeric strings);
    # assignment in code (cfg.train.batch_size = 32) is not re-validated, as with plain attributes.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)

    def _rules(self) -> list[tuple[str, bool, str]]:
        """(key, holds, rule) for what types and Field bounds cannot say (rules across keys, list shapes)."""
        return []

    @model_validator(mode="before")
    @classmethod
    def _choices_as_written(cls, data):
        """A documented choice written unquoted: YAML 1.1 reads `off`, `no`, `on`, `yes` as booleans, so a key
        whose choices include `off` (or `none`) takes false as that choice, and one with `on` takes true."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is None or not isinstance(value, bool):
                continue
            choices = literal_choices(field.annotation)
            pick = next((c for c in (("on",) if value else ("off", "none")) if c in choices), None)
            if pick is not None:
                out[key] = pick
        return out

    @model_validator(mode="after")
    def _check_rules(self):
        for key, holds, rule in self._rules():
            if not holds:
                raise _Broken(key, rule, getattr(self, key))
        return self


class DataConfig(_Section):
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


class FoldsConfig(_Section):
    n_splits: int = Field(5, ge=2)
    name: str | None = None
    dir: str = "folds"
    # Group suspected near-duplicates (pipeline/data/leaks.py) before splitting, joined with any group column.
    auto_groups: bool = False
    # The leak rule (see leaks.py): a same-class pair is a suspected duplicate when its distance after
    # alignment is under this share of each image's median distance to its nearest look-alikes.
    leak_ratio: float = Field(0.2, gt=0, lt=1)


class ModelConfig(_Section):
    name: str = "resnet10t"
    pretrained: bool = False
    pretrained_file: str | None = None
    drop_rate: Float = 0.0
    heads: Literal["single", "mask"] = "single"   # mask: one backbone, heads mask 3 x gender 2 x age 3
    freeze_backbone: bool = False      # train only the classifier head (feature extraction)
    unfreeze_epoch: int | None = None  # then fine-tune everything from this epoch on


class AugmentConfig(_Section):
    image_size: int = Field(32, ge=8)      # pixels
    pre_resize_crop: list | None = None   # [h, w] centre crop before the resize (train and eval)
    train: list = [{"HorizontalFlip": {"p": 0.5}}]   # pydantic copies mutable defaults per instance
    mean: list = [0.485, 0.456, 0.406]
    std: list = [0.229, 0.224, 0.225]
    # Random flips of whole batches on the device (one tensor op instead of one call per image);
    # use in place of HorizontalFlip/VerticalFlip in `train`. Applied after `train`'s steps.
    device_hflip: Float = Field(0.0, ge=0, le=1)
    device_vflip: Float = Field(0.0, ge=0, le=1)

    def _rules(self):
        crop = self.pre_resize_crop
        return [("pre_resize_crop", crop is None or (len(crop) == 2 and all(isinstance(v, int) and v >= 8
                                                                            for v in crop)),
                 "must be [height, width] in pixels, each at least 8"),
                ("mean", len(self.mean) == 3, "must list 3 channel means"),
                ("std", len(self.std) == 3 and all(s > 0 for s in self.std),
                 "must list 3 positive channel standard deviations")]


class SamplingConfig(_Section):
    method: Literal["none", "balanced", "oversample"] = "none"
    target_ratio: Float = Field(0.5, gt=0, le=1)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(1e-4, ge=0)
    optimizer: Literal["sgd", "momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "lamb", "lion"] = "adamw"
    momentum: Float = 0.9
    scheduler: Literal["none", "step", "cosine", "plateau", "onecycle"] = "cosine"
    step_size: int = Field(3, ge=1)
    gamma: Float = 0.1
    warmup_epochs: int = Field(0, ge=0)   # and below `epochs`
    plateau_patience: int = 2
    backbone_lr: Float | None = Field(None, gt=0)   # lower rate for the pretrained backbone; the head uses `lr`
    accumulate: int = Field(1, ge=1)      # gradient accumulation: updates of an N-times larger batch
    grad_clip: Float | None = Field(None, gt=0)     # max gradient norm
    amp: Literal["off", "bf16", "fp16"] = "off"      # fp16 on CUDA only
    channels_last: bool = False
    compile: bool = False              # torch.compile the model
    mixup_alpha: Float = Field(0.0, ge=0)
    cutmix_alpha: Float = Field(0.0, ge=0)
    mix_prob: Float = Field(1.0, ge=0, le=1)
    mix_off_epoch: int | None = None   # switch Mixup/CutMix off from this epoch on
    ema: bool = False                  # validate and save an exponential moving average of the weights
    ema_decay: Float = Field(0.998, gt=0, lt=1)
    patience: int | None = Field(None, ge=1)   # early stopping: epochs without improvement of `monitor`
    monitor: Literal[tuple(MONITOR_MAXIMISE)] | None = None   # None: competition.metric
    num_workers: int | str = "auto"    # auto: 0 on CPU, one per spare core (up to 8) on a GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def _rules(self):
        w = self.num_workers
        return [("num_workers", w == "auto" or (isinstance(w, int) and w >= 0),
                 "must be 'auto' or a non-negative integer"),
                ("warmup_epochs", self.warmup_epochs < self.epochs, "must be in [0, train.epochs)"),
                ("batch_size", not (self.mixup_alpha or self.cutmix_alpha) or self.batch_size % 2 == 0,
                 "must be even when Mixup/CutMix is on (they pair images within a batch)")]


class LossConfig(_Section):
    name: Literal["ce", "focal", "f1", "weighted_ce"] = "ce"
    mix: dict | None = None            # e.g. {ce: 0.7, f1: 0.3}; overrides `name`
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    focal_gamma: Float = Field(2.0, ge=0)
    focal_alpha: list | None = None    # per-class alpha for focal loss
    class_weights: str | list | None = None   # "balanced" (from class frequencies) or a list


class CompetitionConfig(_Section):
    """What the competition scores and the submission it wants: the metric decides every fitted choice."""
    metric: Literal[tuple(COMPETITION_METRICS)] = "f1_macro"
    # auto: read from the sample submission (one column per class -> class_probabilities; a target column
    # of fractions such as 0.5 -> probability; otherwise labels).
    submission: Literal[SUBMISSION_FORMATS] = "auto"
    positive_class: str | None = None   # probability format: the class whose probability is written


class TTAConfig(_Section):
    views: list = ["identity", "hflip"]
    merge: Literal["mean", "geometric_mean", "max", "logit_mean"] = "mean"
    batch_size: int = Field(256, ge=1)


class EnsembleConfig(_Section):
    voting: Literal["soft", "hard", "geometric", "rank"] = "soft"
    checkpoints: list = ["best"]       # best | last: each joins the vote
    logit_adjust: bool = False         # p / prior^tau, tau chosen on the out-of-fold competition.metric
    class_bias: bool = False           # p * exp(b), one b per class fitted out of fold (binary: a threshold)
    tau_grid: list = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    prior_shift: Literal["off", "auto", "em", "bbse"] = "auto"   # re-weight to the estimated test class mix
    prior_shift_alpha: Float = Field(0.01, gt=0, lt=1)         # auto: correct when the shift test's p < alpha

    def _rules(self):
        names = [str(n) for n in self.checkpoints]
        return [("checkpoints", names and len(set(names)) == len(names) and set(names) <= {"best", "last"},
                 "must be a non-empty list of distinct checkpoints from: best, last"),
                ("tau_grid", self.tau_grid and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                   and 0 <= t < float("inf") for t in self.tau_grid),
                 "must be a non-empty list of numbers >= 0")]


class PseudoConfig(_Section):
    # A second round: confident test images of a finished experiment join every fold's training part.
    source: str | None = None          # the finished experiment whose voted test probabilities label them
    threshold: Float = Field(0.9, gt=0, le=1)   # keep images whose voted probability is at least this
    max_per_class: Float | None = Field(None, gt=0, le=1)   # per class at most this fraction of the test set

    def _rules(self):
        src = self.source
        return [("source", src is None or src.replace("-", "").replace("_", "").isalnum(),
                 "must name an experiment folder (letters, digits, '-' or '_')")]


class ReportConfig(_Section):
    samples_per_class: int = 8
    near_duplicate_distance: int = 4   # max Hamming distance of 64-bit average hashes
    progress: Literal[PROGRESS_MODES] = "auto"
    tensorboard: bool = False
    wandb: bool = False
    mlflow: bool = False


class MaskConfig(_Section):
    enabled: bool = False              # build data.train_csv from the competition's layout
    sample: bool = False               # write the synthetic sample first when the raw data is absent
    age_cutoff: int = 60               # training labels only; validation is scored on true labels
    relabel_file: str | None = None    # CSV: id, field, value


class ParallelConfig(_Section):
    backend: Literal["local", "dask"] = "local"
    scheduler: str | None = None       # tcp://host:8786; None starts nothing (local processes)
    gpus: list | None = None           # device ids for round-robin fold placement


class TuneConfig(_Section):
    trials: int = Field(20, ge=1)
    storage: str | None = None         # default: sqlite:///<output_dir>/<experiment>/tune.db
    study_name: str | None = None
    folds: list = [0]
    space: dict = {}
    pruner: Literal["median", "none"] = "median"


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


class Config(_Section):
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
        return {} if v is None and _is_section(cls.model_fields[info.field_name].annotation) else v

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
           for section, outer in Config.model_fields.items() if _is_section(outer.annotation)
           for key, field in outer.annotation.model_fields.items() if typing.get_origin(field.annotation) is Literal}


# ----------------------------------------------------------------------------------------
# pydantic's errors as one line per key: the dotted key, what is wrong, the value given.

_TYPE_WORDS = {int: "int", float: "float", str: "str", bool: "bool", list: "a list", dict: "a mapping",
               type(None): "null"}


def _expected(tp: Any) -> str:
    """`str | list | None` -> 'str, a list or null' (`Float` is a float)."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    words = [_TYPE_WORDS.get(typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m, str(m))
             for m in members]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _range(field: FieldInfo) -> str:
    """A field's bounds as a rule: 'must be positive', 'must be at least 2', 'must be in [0, 1)'."""
    b = {k: getattr(m, k) for m in field.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    lo = f"[{b['ge']}" if "ge" in b else f"({b['gt']}" if "gt" in b else "(-inf"
    hi = f"{b['le']}]" if "le" in b else f"{b['lt']})" if "lt" in b else ""
    if hi:
        return f"must be in {lo}, {hi}"
    named = {"(0": "must be positive", "[0": "must be non-negative"}
    return named.get(lo) or f"must be {'at least' if lo[0] == '[' else 'greater than'} {lo[1:]}"


# Keys an earlier version read, with what replaced them: a config written for it gets told, not just refused.
_RETIRED = {"folds.leak_mads": "the leak rule is now relative to each image's neighbourhood; set "
                               "folds.leak_ratio (default 0.2, see README 'Leaks') or remove the key"}


def _problem(err: dict) -> tuple[str, str]:
    """(dotted key, one line saying what is wrong) for one of pydantic's errors."""
    model, keys, field = Config, [], None
    for part in err["loc"]:               # down the sections; what follows a leaf key is pydantic's detail
        if model is None or part not in model.model_fields:
            break
        field = model.model_fields[part]
        keys.append(part)
        model = field.annotation if _is_section(field.annotation) else None
    key, value, kind = ".".join(keys) or "config", err["input"], err["type"]
    if kind == "extra_forbidden":
        names = list(model.model_fields)
        unknown = ".".join([*keys, str(err["loc"][len(keys)])])
        if unknown in _RETIRED:
            return unknown, f"'{unknown}' is no longer a key: {_RETIRED[unknown]}"
        close = difflib.get_close_matches(str(err["loc"][len(keys)]), names, n=1)
        hint = f" Did you mean '{'.'.join([*keys, close[0]])}'?" if close else ""
        return unknown, f"unknown key '{unknown}'.{hint} Allowed keys here: {', '.join(names)}"
    if kind == "model_type":
        return key, f"{key}: expected a mapping of keys, got {value!r}"
    if kind == "literal_error":
        choices = ", ".join(map(str, literal_choices(field.annotation)))
        if isinstance(value, bool):      # an unquoted on/off/yes/no/true/false that no choice of this key means
            return key, (f"{key}: YAML reads an unquoted on/off/yes/no/true/false as {value!r}, which is not a "
                         f"choice of this key; write one of: {choices}")
        return key, f"{key}: '{value}' is not one of: {choices}"
    if kind.endswith("_type"):
        return key, f"{key}: expected {_expected(field.annotation)}, got {value!r} ({type(value).__name__})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return key, f"{key}: {_range(field)}; got {value!r}"
    broken = err.get("ctx", {}).get("error")
    if isinstance(broken, _Broken):       # raised by the section at `key`
        key = ".".join([*keys, broken.key])
        return key, f"{key}: {broken.rule}; got {broken.value!r}"
    return key, f"{key}: {err['msg']}; got {value!r}"


def _problems(exc: ValidationError) -> list[str]:
    """One line per key (a value that fails several union members is one problem)."""
    lines: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        key, line = _problem(err)
        lines.setdefault(key, line)
    return list(lines.values())


def flatten(d: dict, prefix: str = "") -> dict:
    """`{"train": {"lr": 0.01}}` → `{"train.lr": 0.01}`: the top-level sections only."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix:  # only the top-level sections are flattened
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict) -> dict:
    """`{"train.lr": 0.01}` → `{"train": {"lr": 0.01}}` (dotted keys become nested sections)."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def with_values(base: dict, flat: dict) -> dict:
    """A copy of the nested config dict `base` with the dotted keys of `flat` set."""
    return _merge(base, nest(flat))


def matches(key: str, prefixes) -> bool:
    """`key` is one of `prefixes`, or lies under one that ends with '.' (a whole section)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def _rejoin(items: list[str]) -> list[str]:
    """`key=value` overrides from words split at spaces (by a shell, by Make, or given as one string):
    a word without '=' continues the value before it.

    >>> _rejoin(["tta.views=[identity,", "hflip]", "train.lr=0.1"])
    ['tta.views=[identity, hflip]', 'train.lr=0.1']
    >>> _rejoin(["train.lr=0.1 tta.views=[identity, hflip]"])
    ['train.lr=0.1', 'tta.views=[identity, hflip]']
    """
    out: list[str] = []
    for item in (word for text in items for word in text.split()):
        if out and "=" not in item:
            out[-1] += " " + item
        else:
            out.append(item)
    return out


def parse_overrides(items: list[str]) -> dict:
    """Turn `["train.lr=0.01", "model.name=resnet18"]` into a nested dict (values parsed as YAML)."""
    flat: dict = {}
    for item in _rejoin(list(items)):
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.subkey=value")
        key, text = item.split("=", 1)
        try:
            flat[key] = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise ConfigError(f"override '{item}': the value is not valid YAML ({problem}); write a list as "
                              "[a, b] and a mapping as {key: value}, and quote the whole SET for Make, e.g. "
                              "SET=\"tta.views=[identity, hflip] train.lr=3e-4\"") from None
    return nest(flat)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config, apply overrides, check every key, type and value."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    where = f"{path}: " if path else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}expected a mapping of keys, got {type(raw).__name__}")
    raw = _merge(raw, overrides or {})
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{where}{line}" for line in _problems(exc))) from None


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (what the resolved YAML and the stage fingerprints hold)."""
    return cfg.model_dump()
