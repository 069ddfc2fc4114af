"""Models a competition provides, by the name ``model.heads`` gives them (``single`` is timm's own head).

The trainer builds every model through :func:`heads_model`; it knows no competition. A competition
registers its model when its package is imported (``register_heads`` in its ``__init__``); the first
lookup of a name nobody registered imports :data:`COMPETITIONS` (each competition's package, by name),
so a worker process that only received a config finds the model too.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

__all__ = ["COMPETITIONS", "Heads", "register_heads", "registered_heads", "heads_model"]

COMPETITIONS = "pipeline.competitions"   # the package whose subpackages are competitions


@dataclass(frozen=True)
class Heads:
    """A competition's model: `build(backbone, num_classes, pretrained, drop_rate)` returns the module;
    `check_classes(classes)` raises a ConfigError when the data's classes (texts, model order) do not fit it."""
    name: str
    build: Callable
    check_classes: Callable[[list], None]


_HEADS: dict[str, Heads] = {}


def register_heads(name: str, build: Callable, check_classes: Callable[[list], None]) -> None:
    """Make `name` a value of ``model.heads`` (a second registration of the same name replaces the first)."""
    _HEADS[name] = Heads(name, build, check_classes)


def _import_competitions() -> None:
    package = importlib.import_module(COMPETITIONS)
    for found in pkgutil.iter_modules(package.__path__, f"{COMPETITIONS}."):
        if found.ispkg:
            importlib.import_module(found.name)


def registered_heads(name: str) -> Heads:
    """The model registered as `name`; a ValueError listing the registered ones when none is."""
    if name not in _HEADS:
        _import_competitions()
    if name not in _HEADS:
        raise ValueError(f"model.heads: no competition registers '{name}'; registered: "
                         f"{', '.join(sorted(_HEADS)) or 'none'} (or 'single', timm's own head)")
    return _HEADS[name]


def heads_model(name: str, backbone: str, num_classes: int, pretrained: bool, drop_rate: float):
    """The registered model `name` built on the timm `backbone`."""
    return registered_heads(name).build(backbone, num_classes, pretrained, drop_rate)
