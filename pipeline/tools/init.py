"""`make init DATA=<folder>`: a commented config for a competition's folder, one that runs as it is.

`pipeline.tools.detect` reads the folder (layout, columns, test side); here the rest is decided from
the data: the image size from a few images' sizes, the 16-bit scaling from their pixel modes, the
sampling from the class balance, the number of folds from the smallest class, the backbone and
whether it is pretrained from the local weight caches. Each decision is printed with its evidence
and written above its key. The config is read back through the pipeline's own readers before it is
written (atomically); the data folder is only read, and an existing config is kept unless `force`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import yaml

from pipeline.config import load_config
from pipeline.data.sizes import sample_images, typical_size
from pipeline.fileio import read_text_csv, write_text_atomic
from pipeline.tools.detect import InitOptions, Reading, read_folder

__all__ = ["init_config", "InitOptions"]

_MAX_SIZE = 224                 # augment.image_size for large photos: what most pretrained backbones saw
_MIN_SIZE = 32
# Backbones init picks when their pretrained weights are in a local cache, in this order.
_PRETRAINED = ("efficientnet_b0", "resnet18", "resnet34", "convnext_nano", "resnet50")
_SCRATCH = "resnet10t"          # small and quick to train from scratch
_IMBALANCED = 3                 # largest / smallest class at or above this: oversample the small classes
_SECTIONS = ("data", "folds", "model", "augment", "sampling", "train", "loss", "tta", "ensemble", "competition",
             "report", "mask", "tune")
_MASK_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mask.yaml"


def init_config(folder: str | Path, out: str | Path | None = None, force: bool = False,
                opts: InitOptions | None = None, log=print) -> Path:
    """Read `folder`, decide, print each decision, write the config to `out` (default configs/<name>.yaml)."""
    root = Path(folder)
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", root.resolve().name).strip("_") or "competition"
    out = Path(out or f"configs/{name}.yaml")
    _check_out(out, root, force)
    reading = read_folder(root, opts or InitOptions())
    config, why = (_mask_base(reading, name) if reading.layout == "mask" else {"seed": 42}), {}
    config["experiment"] = name
    _decide_model(reading, _decide_images(reading))
    if reading.layout != "mask":    # configs/mask.yaml knows the competition's classes and folds
        _decide_classes(reading)
    for finding in reading.findings:
        if "." in finding.key:
            section, key = finding.key.split(".", 1)
            config.setdefault(section, {})[key] = finding.value
            why[finding.key] = finding.why
    text = _render(config, why, root)
    _reads_back(yaml.safe_load(text))
    for finding in reading.findings:
        shown = f" = {finding.value}" if "." in finding.key else ""
        log(f"[init] {finding.key}{shown}: {finding.why}")
    write_text_atomic(out, text)
    log(f"[init] wrote {out}; next: make folds train ensemble CONFIG={out}")
    return out


def _check_out(out: Path, root: Path, force: bool) -> None:
    if out.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"--out {out} lies inside the data folder {root}, which init never writes to; write the "
                         "config elsewhere (default configs/<name>.yaml)")
    if out.exists() and not force:
        raise ValueError(f"{out} exists: init keeps it; pass --force to replace it, or --out another path")


# ---- decisions from the data -------------------------------------------------------------------

def _decide_images(reading: Reading) -> int:
    """augment.image_size from the sampled images' median size (and 16-bit scaling from their modes)."""
    sampled = sample_images(reading.images, 16)
    if not sampled:
        raise ValueError(f"none of the {len(reading.images)} sampled training images can be read "
                         f"(e.g. {reading.images[:1]}); run the data check once the config exists")
    width, height = typical_size(sampled)
    side = min(width, height)
    size = max(_MIN_SIZE, min(_MAX_SIZE, side // 8 * 8))
    why = f"the images are about {width}x{height} (median of {len(sampled)} sampled)"
    if side > 2 * size:
        why += f"; much larger than {size}: shrunk {side / size:.0f}x (raise it if fine detail matters, at more compute)"
    if max(width, height) > 1.5 * side:
        why += "; not square: they are squashed to a square (augment.pre_resize_crop crops first)"
    reading.set("augment.image_size", size, why)
    modes = Counter(mode for _, _, mode in sampled)
    high = {m: n for m, n in modes.items() if m in ("I", "F") or m.startswith("I;")}
    if high:
        reading.set("data.high_bit_depth", "percentile", f"{sum(high.values())} of {len(sampled)} sampled images "
                    f"are 16/32-bit ({', '.join(high)}): scaled to 8-bit by the training pixels' percentiles")
    return size


def _decide_model(reading: Reading, size: int) -> None:
    """A backbone whose pretrained weights are in a local cache, else a small one trained from scratch."""
    from pipeline.train.pretrained import cached_weights, hub_reachable

    cached = next((n for n in _PRETRAINED if cached_weights(n) is not None), None)
    if cached:
        reading.set("model.name", cached, f"its pretrained weights are in the local cache ({cached_weights(cached)})")
        reading.set("model.pretrained", True, "fine-tuning pretrained weights beats training from scratch")
        reading.set("train.lr", 3.0e-4, "a fine-tuning rate")
        return
    if hub_reachable():
        reading.set("model.name", _PRETRAINED[0], "small, strong, and its weights can be downloaded here")
        reading.set("model.pretrained", True, "downloaded into the cache by the first fold")
        reading.set("train.lr", 3.0e-4, "a fine-tuning rate")
        return
    reading.set("model.name", _SCRATCH, f"no pretrained weights of {', '.join(_PRETRAINED)} in the local cache, and "
                "the hub cannot be reached: a small network trained from scratch")
    reading.set("model.pretrained", False, "offline: to fine-tune, put weights in the cache or set "
                "model.pretrained_file (README, 'Your own competition')")
    reading.set("train.lr", 1.0e-3, "a from-scratch rate")


def _decide_classes(reading: Reading) -> None:
    """sampling.method from the class balance, folds.n_splits from the smallest class."""
    counts = Counter(reading.labels)
    (big, n_big), (small, n_small) = counts.most_common()[0], counts.most_common()[-1]
    ratio = n_big / n_small
    balance = f"{len(counts)} classes; the largest ({big!r}) has {n_big} rows, the smallest ({small!r}) {n_small}"
    if ratio >= _IMBALANCED:
        reading.set("sampling.method", "oversample", f"{balance} ({ratio:.0f}x): small classes are oversampled")
    else:
        reading.set("sampling.method", "none", f"{balance}: balanced enough")
    units = counts
    if reading.groups is not None:
        units = Counter(label for label, _ in set(zip(reading.labels, reading.groups)))
    fewest = min(units.values())
    if fewest < 2:
        rare = [c for c, n in units.items() if n < 2]
        raise ValueError(f"class(es) {rare[:5]} have a single {'group' if reading.groups else 'row'}: cross-validation "
                         "needs at least 2 per class; drop or merge them before init")
    unit = "groups" if reading.groups else "rows"
    reading.set("folds.n_splits", min(5, fewest), f"five folds, or fewer so that every fold validates on each "
                f"class: the smallest has {fewest} {unit}")
    n = len(reading.labels)
    reading.set("train.batch_size", 64 if n >= 1000 else 32, f"{n} training rows")
    reading.set("train.epochs", 10, "a first run; watch the learning curves (make report) before training longer")
    reading.set("tta.views", ["identity", "hflip"], "a mirrored image is the same class; not so for text, digits or "
                "left/right classes: then [identity]")
    reading.set("competition.metric", "f1_macro", "init cannot know the competition's metric: set it (f1_macro, "
                "accuracy, roc_auc, log_loss, qwk); it picks the kept epoch and every fitted choice")


# ---- the mask competition ----------------------------------------------------------------------

def _mask_base(reading: Reading, name: str) -> dict:
    """configs/mask.yaml with the competition's folder in place of its synthetic sample."""
    config = yaml.safe_load(_MASK_CONFIG.read_text())
    data, root = config["data"], reading.path()
    for key in ("image_root", "train_csv", "sample_submission"):
        data[key] = data[key].replace("data/mask_sample", root)
    reading.set("data.train_csv", f"outputs/lists/mask_train-{name}.csv",
                "written by `make data` from train/train.csv (one row per photo), outside the data folder")
    reading.set("data.test_labels", None, "the real competition has no test labels")
    reading.set("mask.sample", False, "the real data is here: never write the synthetic sample")
    reading.images = [str(p) for p in sorted(Path(root, "train", "images").glob("*/*"))[:16]]
    _mask_folds(reading)
    return config


def _mask_folds(reading: Reading) -> None:
    """folds.n_splits from the people per gender x true age group, what the grouped folds stratify on."""
    from pipeline.competitions.mask.labels import age_group, parse_age, parse_gender

    people = read_text_csv(reading.root / "train" / "train.csv")
    units = Counter((parse_gender(g), age_group(parse_age(a))) for g, a in zip(people["gender"], people["age"])
                    if parse_gender(g) is not None and parse_age(a) is not None)
    if not units or min(units.values()) < 2:
        raise ValueError(f"{reading.root}/train/train.csv: a gender x age group has fewer than 2 people; the grouped "
                         "folds need at least 2")
    fewest = min(units.values())
    reading.set("folds.n_splits", min(5, fewest), f"five folds, or fewer so that every fold validates on each gender "
                f"x age group (the folds keep a person's photos together): the smallest has {fewest} people")


# ---- the YAML ----------------------------------------------------------------------------------

def _value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)          # a JSON string is a YAML string: braces, 'on', '007' stay text
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _render(config: dict, why: dict[str, str], root: Path) -> str:
    lines = [f"# Written by `make init DATA={root}` (pipeline/tools/init.py) from what it found there: the",
             "# comment above a key is its evidence. Every key is documented in the README's config reference."]
    for key in ("experiment", "seed"):
        lines.append(f"{key}: {_value(config[key])}")
    for section in _SECTIONS:
        if not config.get(section):
            continue
        lines += ["", f"{section}:"]
        for key, value in config[section].items():
            if f"{section}.{key}" in why:
                lines.append(f"  # {why[f'{section}.{key}']}")
            lines.append(f"  {key}: {_value(value)}")
    return "\n".join(lines) + "\n"


def _reads_back(raw: dict) -> None:
    """Load the config and read its tables the way the stages will: a config init writes runs as it is."""
    from pipeline.data.layouts import listed_test_ids
    from pipeline.data.tables import read_test_table, read_train_table

    cfg = load_config(None, raw)
    d = cfg.data
    if d.layout == "csv" and not cfg.mask.enabled:
        read_train_table(cfg)
    if Path(d.sample_submission) == cfg.derived_sample_file:
        listed_test_ids(d.test_root or d.image_root, d.test_image_template)
    else:
        read_test_table(cfg)
