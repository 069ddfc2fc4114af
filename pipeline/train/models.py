"""Building timm models and saving/loading self-describing weights.

Weights are safetensors files with a JSON sidecar (`<name>.json`) holding the
timm model name, the class list, the config fingerprint and the metrics. Loading
never unpickles: a weights file cannot run code.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from pipeline.config import ConfigError, ModelConfig
from pipeline.fileio import atomic_path, write_json_atomic
from pipeline.registry import heads_model, registered_heads

__all__ = ["safe_torch_load", "create_model", "save_weights", "load_weights", "read_sidecar", "load_trained_model",
           "sidecar_path", "unwrap"]


def safe_torch_load(path: str | Path):
    """`torch.load` restricted to tensors and plain containers: a planted pickle cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(f"refusing to load {path}: it holds objects other than tensors and plain "
                           f"values, which could run code ({str(exc).splitlines()[0]}). "
                           "If it is your own checkpoint from an old version, delete it.") from None


def _timm_model(name: str, heads: str, num_classes: int, pretrained: bool, drop_rate: float) -> torch.nn.Module:
    if heads != "single":   # a competition's own model (pipeline.registry), e.g. the mask competition's heads
        return heads_model(heads, name, num_classes, pretrained, drop_rate)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)


def create_model(mcfg: ModelConfig, num_classes: int, classes: list[str] | None = None) -> torch.nn.Module:
    """A timm model with a fresh `num_classes` head; optional pretrained or local weights.

    `classes` (the class texts in model order), when given, is checked against what a competition's heads
    need (``model.heads`` other than ``single``: the competition registered the check with its model).
    """
    if mcfg.heads != "single" and classes is not None:
        registered_heads(mcfg.heads).check_classes(classes)
    if not timm.is_model(mcfg.name):
        close = timm.list_models(f"*{mcfg.name.split('_')[0]}*")[:8]
        raise ConfigError(f"model.name: '{mcfg.name}' is not a timm model. Similar: {close or 'none'}; "
                          "see timm.list_models()")
    try:
        model = _timm_model(mcfg.name, mcfg.heads, num_classes, mcfg.pretrained, mcfg.drop_rate)
    except (OSError, RuntimeError) as exc:
        if not mcfg.pretrained:
            raise
        raise RuntimeError(f"model.pretrained: could not download weights for '{mcfg.name}' ({exc}). "
                           "Offline? Download them once elsewhere and set model.pretrained_file "
                           "to the local .safetensors/.pth file, with model.pretrained: false.") from exc
    if mcfg.pretrained_file:
        _load_backbone_file(getattr(model, "backbone", model), Path(mcfg.pretrained_file))
    return model


def _load_backbone_file(model: torch.nn.Module, path: Path) -> None:
    """Load local weights, keeping this model's classifier where the shapes differ."""
    if not path.is_file():
        raise ConfigError(f"model.pretrained_file: {path} does not exist")
    if path.suffix == ".safetensors":
        state = load_weights(path)
    else:  # .pth/.pt from timm or torchvision: tensors only, never arbitrary objects
        state = safe_torch_load(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"model.pretrained_file: no tensor in {path} matches model.name's layers; "
                          "is it weights of the same architecture?")
    model.load_state_dict(usable, strict=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind a `torch.compile` wrapper (which shares its parameters).

    A compiled model's state dict names every tensor `_orig_mod.<name>`; weights and resumable
    checkpoints are saved and loaded through the plain module, so they fit any model of the
    architecture, compiled or not.
    """
    return getattr(model, "_orig_mod", model)


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """Write the sidecar, then the weights (the Make target) — both atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    write_json_atomic(sidecar_path(path), meta)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"model": meta.get("model", "")})


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle under that name, a cut download)
    is refused naming the file, without running any of it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:   # safetensors raises its own error type for a malformed file
        raise RuntimeError(f"refusing to load {path}: it is not a valid safetensors file ({str(exc).splitlines()[0]}); "
                           "it may be a pickle renamed to .safetensors, or a damaged copy. Delete it and retrain "
                           "(or copy the real file again)") from None


def read_sidecar(path: str | Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side}: the sidecar of {path} is missing; retrain this fold")
    return json.loads(side.read_text())


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model this pipeline trained, from its safetensors weights and sidecar."""
    meta = read_sidecar(path)
    model = _timm_model(meta["model"], meta.get("heads", "single"), len(meta["classes"]), False, 0.0)
    model.load_state_dict(load_weights(path))
    return model.to(device).eval(), meta
