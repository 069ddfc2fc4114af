"""Reading a config: the YAML file, `key=value` overrides merged over it, every key checked."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.config.base import ConfigError
from pipeline.config.errors import problems
from pipeline.config.schema import Config

__all__ = ["load_config", "parse_overrides", "config_to_dict", "flatten", "nest", "with_values", "matches"]


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
        raise ConfigError("\n".join(f"{where}{line}" for line in problems(exc))) from None


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (what the resolved YAML and the stage fingerprints hold)."""
    return cfg.model_dump()
