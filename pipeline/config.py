"""Typed, validated experiment configuration.

One YAML file per experiment (`configs/*.yaml`) is read into nested dataclasses.
Unknown keys, wrong types and impossible values are errors that name the key,
raised before any work starts. Command-line overrides use dotted keys
(`train.lr=0.01`). The resolved configuration is saved with the run, and each
stage gets a *stamp*: a file holding only the keys that stage depends on,
rewritten only when they change, so Make reruns exactly what a change affects.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

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
    "stage_fingerprint",
    "STAGE_KEYS",
    "write_resolved",
]


class ConfigError(ValueError):
    """A configuration value a user can fix: the message names the key."""


@dataclass
class DataConfig:
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
    demo_scale: float = 1.0
    demo_seed: int = 0
    # Decode once: images decoded and resized a single time into a memory-mapped uint8 file
    # (pipeline/cache.py). Off or on gives the same numbers, so neither key is in a stage fingerprint.
    cache: bool = True
    cache_dir: str | None = None            # default <output_dir>/cache
    # How Make notices changed images (pipeline/manifest.py): size + modification time, or also sha256.
    manifest: str = "stat"


@dataclass
class FoldsConfig:
    n_splits: int = 5
    name: str | None = None
    dir: str = "folds"


@dataclass
class ModelConfig:
    name: str = "resnet10t"
    pretrained: bool = False
    pretrained_file: str | None = None
    drop_rate: float = 0.0
    heads: str = "single"              # single | mask (one backbone, heads mask 3 x gender 2 x age 3)
    freeze_backbone: bool = False      # train only the classifier head (feature extraction)
    unfreeze_epoch: int | None = None  # then fine-tune everything from this epoch on


@dataclass
class AugmentConfig:
    image_size: int = 32
    pre_resize_crop: list | None = None   # [h, w] centre crop before the resize (train and eval)
    train: list = field(default_factory=lambda: [{"HorizontalFlip": {"p": 0.5}}])
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Random flips of whole batches on the device (one tensor op instead of one call per image);
    # use in place of HorizontalFlip/VerticalFlip in `train`. Applied after `train`'s steps.
    device_hflip: float = 0.0
    device_vflip: float = 0.0


@dataclass
class SamplingConfig:
    method: str = "none"
    target_ratio: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "cosine"
    step_size: int = 3
    gamma: float = 0.1
    warmup_epochs: int = 0
    plateau_patience: int = 2
    backbone_lr: float | None = None   # lower rate for the pretrained backbone; the head uses `lr`
    accumulate: int = 1                # gradient accumulation: updates of an N-times larger batch
    grad_clip: float | None = None     # max gradient norm
    amp: str = "off"                   # off | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = False
    compile: bool = False              # torch.compile the model
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_off_epoch: int | None = None   # switch Mixup/CutMix off from this epoch on
    ema: bool = False                  # validate and save an exponential moving average of the weights
    ema_decay: float = 0.998
    patience: int | None = None        # early stopping: epochs without improvement of `monitor`
    monitor: str = "f1_macro"
    num_workers: int | str = "auto"      # auto: 0 on CPU, one per spare core (up to 8) on a GPU
    device: str = "auto"


@dataclass
class LossConfig:
    name: str = "ce"
    mix: dict | None = None            # e.g. {ce: 0.7, f1: 0.3}; overrides `name`
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: list | None = None    # per-class alpha for focal loss
    class_weights: str | list | None = None   # "balanced" (from class frequencies) or a list


@dataclass
class TTAConfig:
    views: list = field(default_factory=lambda: ["identity", "hflip"])
    merge: str = "mean"
    batch_size: int = 256


@dataclass
class EnsembleConfig:
    voting: str = "soft"
    checkpoints: list = field(default_factory=lambda: ["best"])   # best | last: each joins the vote
    logit_adjust: bool = False         # p / prior^tau, tau chosen on out-of-fold macro-F1
    tau_grid: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])


@dataclass
class ReportConfig:
    samples_per_class: int = 8
    near_duplicate_distance: int = 4   # max Hamming distance of 64-bit average hashes
    progress: str = "auto"             # auto | bar | lines | off
    tensorboard: bool = False
    wandb: bool = False
    mlflow: bool = False


@dataclass
class MaskConfig:
    enabled: bool = False              # build data.train_csv from the competition's layout
    sample: bool = False               # write the synthetic sample first when the raw data is absent
    age_cutoff: int = 60               # training labels only; validation is scored on true labels
    relabel_file: str | None = None    # CSV: id, field, value


@dataclass
class ParallelConfig:
    backend: str = "local"             # local | dask
    scheduler: str | None = None       # tcp://host:8786; None starts nothing (local processes)
    gpus: list | None = None           # device ids for round-robin fold placement


@dataclass
class TuneConfig:
    trials: int = 20
    storage: str | None = None         # default: sqlite:///<output_dir>/<experiment>/tune.db
    study_name: str | None = None
    folds: list = field(default_factory=lambda: [0])
    space: dict = field(default_factory=dict)
    pruner: str = "median"


@dataclass
class Config:
    experiment: str = "demo"
    seed: int = 42
    output_dir: str = "outputs"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    # Derived locations: one place decides where every stage reads and writes.
    @property
    def exp_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment

    @property
    def folds_file(self) -> Path:
        return Path(self.folds.dir) / f"{self.folds.name or self.experiment}.csv"

    def fold_dir(self, fold: int) -> Path:
        return self.exp_dir / f"fold_{fold}"


# Metrics `train.monitor` may name, and whether a higher value is better (pipeline.metrics.MAXIMISE).
MONITOR_MAXIMISE = {"f1_macro": True, "f1_weighted": True, "accuracy": True, "precision_macro": True,
                    "recall_macro": True, "roc_auc": True, "loss": False}

CHOICES = {
    "train.optimizer": ("sgd", "momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "lamb", "lion"),
    "train.scheduler": ("none", "step", "cosine", "plateau", "onecycle"),
    "loss.name": ("ce", "focal", "f1", "weighted_ce"),
    "model.heads": ("single", "mask"),
    "report.progress": PROGRESS_MODES,
    "parallel.backend": ("local", "dask"),
    "tune.pruner": ("median", "none"),
    "train.monitor": tuple(MONITOR_MAXIMISE),
    "train.amp": ("off", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "sampling.method": ("none", "balanced", "oversample"),
    "data.manifest": ("stat", "sha256"),
    "tta.merge": ("mean", "geometric_mean", "max", "logit_mean"),
    "ensemble.voting": ("soft", "hard", "geometric", "rank"),
}


def _value_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """(key, holds, rule) for every range rule; a failing rule becomes a ConfigError."""
    t = cfg.train
    return [
        ("folds.n_splits", cfg.folds.n_splits >= 2, "must be at least 2"),
        ("train.epochs", t.epochs >= 1, "must be at least 1"),
        ("train.batch_size", t.batch_size >= 1, "must be at least 1"),
        ("train.lr", t.lr > 0, "must be positive"),
        ("train.weight_decay", t.weight_decay >= 0, "must be non-negative"),
        ("loss.label_smoothing", 0 <= cfg.loss.label_smoothing < 1, "must be in [0, 1)"),
        ("loss.focal_gamma", cfg.loss.focal_gamma >= 0, "must be non-negative"),
        ("tune.trials", cfg.tune.trials >= 1, "must be at least 1"),
        ("train.num_workers", t.num_workers == "auto" or (isinstance(t.num_workers, int) and t.num_workers >= 0),
         "must be 'auto' or a non-negative integer"),
        ("train.warmup_epochs", 0 <= t.warmup_epochs < t.epochs, "must be in [0, train.epochs)"),
        ("train.step_size", t.step_size >= 1, "must be at least 1"),
        ("train.accumulate", t.accumulate >= 1, "must be at least 1"),
        ("train.backbone_lr", t.backbone_lr is None or t.backbone_lr > 0, "must be positive"),
        ("train.grad_clip", t.grad_clip is None or t.grad_clip > 0, "must be positive"),
        ("train.ema_decay", 0 < t.ema_decay < 1, "must be in (0, 1)"),
        ("train.patience", t.patience is None or t.patience >= 1, "must be at least 1"),
        ("train.mix_prob", 0 <= t.mix_prob <= 1, "must be in [0, 1]"),
        ("train.mixup_alpha", t.mixup_alpha >= 0 and t.cutmix_alpha >= 0, "mixup/cutmix alphas must be >= 0"),
        ("train.batch_size", not (t.mixup_alpha or t.cutmix_alpha) or t.batch_size % 2 == 0,
         "must be even when Mixup/CutMix is on (they pair images within a batch)"),
        ("sampling.target_ratio", 0 < cfg.sampling.target_ratio <= 1, "must be in (0, 1]"),
        ("augment.image_size", cfg.augment.image_size >= 8, "must be at least 8 pixels"),
        ("augment.pre_resize_crop", cfg.augment.pre_resize_crop is None or (
            len(cfg.augment.pre_resize_crop) == 2
            and all(isinstance(v, int) and v >= 8 for v in cfg.augment.pre_resize_crop)),
         "must be [height, width] in pixels, each at least 8"),
        ("augment.mean", len(cfg.augment.mean) == 3, "must list 3 channel means"),
        ("augment.device_hflip", 0 <= cfg.augment.device_hflip <= 1, "is a probability in [0, 1]"),
        ("augment.device_vflip", 0 <= cfg.augment.device_vflip <= 1, "is a probability in [0, 1]"),
        ("augment.std", len(cfg.augment.std) == 3 and all(s > 0 for s in cfg.augment.std),
         "must list 3 positive channel standard deviations"),
        ("tta.batch_size", cfg.tta.batch_size >= 1, "must be at least 1"),
        ("ensemble.checkpoints", len(cfg.ensemble.checkpoints) >= 1
         and len(set(map(str, cfg.ensemble.checkpoints))) == len(cfg.ensemble.checkpoints)
         and all(str(n) in ("best", "last") for n in cfg.ensemble.checkpoints),
         "must be a non-empty list of distinct checkpoints from: best, last"),
        ("ensemble.tau_grid", len(cfg.ensemble.tau_grid) >= 1 and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < float("inf")
            for t in cfg.ensemble.tau_grid), "must be a non-empty list of numbers >= 0"),
        ("data.demo_scale", 0 < cfg.data.demo_scale <= 1, "must be in (0, 1] (1.0 uses every digit)"),
        ("data.test_image_template",
         (cfg.data.test_image_template is None) != (cfg.data.test_path_column is None),
         "set exactly one of data.test_image_template and data.test_path_column"),
        ("experiment", cfg.experiment.replace("-", "").replace("_", "").isalnum(),
         "must be letters, digits, '-' or '_' (it names a folder)"),
    ]


# ----------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks that name the key.

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_type(key: str, value: Any, tp) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return _check_type(key, value, member)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected one of {[_type_name(a) for a in args]}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads `3e-4` as a string; users mean a number
            return float(value)
        except ValueError:
            pass
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        return value
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} (bool)")
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    raise AssertionError(f"unsupported annotation {tp} for {key}")


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'.{hint} Allowed keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    flat = flatten(config_to_dict(cfg))
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}: '{flat[key]}' is not one of: {', '.join(allowed)}")
    for key, holds, rule in _value_checks(cfg):
        if not holds:
            raise ConfigError(f"{key}: {rule}; got {flat.get(key)!r}")


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
    raw = _merge(raw, overrides or {})
    try:
        cfg = _build(Config, raw, "")
        _validate(cfg)
    except ConfigError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{exc}") from None
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# Each stage depends on these keys (prefix match). A change elsewhere leaves it up to date:
# changing only `ensemble.voting` re-votes without retraining or re-predicting.
STAGE_KEYS = {
    "data": ["data.demo", "data.demo_scale", "data.demo_seed", "data.image_root", "data.train_csv",
             "mask.enabled", "mask.sample", "mask.age_cutoff", "mask.relabel_file"],
    "folds": ["seed", "folds.n_splits", "data.train_csv", "data.label_column", "data.group_column",
              "data.stratify_column"],
    "train": ["seed", "folds.", "model.", "augment.", "sampling.", "train.", "loss.", "mask.", "data.train_csv",
              "data.image_root", "data.image_column", "data.label_column", "data.group_column",
              "data.true_label_column"],
    "predict": ["tta.", "ensemble.checkpoints", "augment.image_size", "augment.pre_resize_crop", "augment.mean", "augment.std", "data.sample_submission",
                "data.id_column", "data.test_image_template", "data.test_path_column",
                "data.test_root", "data.image_root", "train.device"],
    "ensemble": ["ensemble.", "data.sample_submission", "data.id_column", "data.target_column"],
}


def _stage_subset(cfg: Config, stage: str) -> dict:
    flat = flatten(config_to_dict(cfg))
    prefixes = STAGE_KEYS[stage]
    return {k: v for k, v in sorted(flat.items()) if matches(k, prefixes)}


def stage_fingerprint(cfg: Config, stage: str) -> str:
    """Short hash of the keys `stage` depends on; stored in checkpoints to refuse stale resumes."""
    blob = json.dumps(_stage_subset(cfg, stage), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers (saved with every run)."""
    import platform
    from importlib import metadata

    names = ["torch", "torchvision", "timm", "albumentations", "numpy", "scikit-learn", "pandas", "pillow"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_resolved(cfg: Config) -> Path:
    """Save the resolved config and one stamp per stage, each rewritten only on a real change."""
    from pipeline.fileio import write_text_if_changed

    exp_dir = cfg.exp_dir
    resolved = exp_dir / "config.yaml"
    write_text_if_changed(resolved, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_text_if_changed(exp_dir / "versions.json", json.dumps(package_versions(), indent=2) + "\n")
    for stage in STAGE_KEYS:
        text = json.dumps(_stage_subset(cfg, stage), indent=2, sort_keys=True) + "\n"
        write_text_if_changed(exp_dir / "stamps" / f"{stage}.json", text)
    return resolved
