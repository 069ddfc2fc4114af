"""Whether a timm model's pretrained weights can be loaded here, found the way timm finds them.

timm loads `model.pretrained: true` weights from the Hugging Face hub cache (``hf_hub_id``: the
snapshot of ``<HF_HUB_CACHE>/models--timm--<name>/``), else from torch hub's
``<TORCH_HOME>/hub/checkpoints/<file of the url>``; anything else is a download at the first fold.
`check_pretrained_available` lets resolve say so before any work when the weights are in neither
cache and the hub cannot be reached, instead of the first fold failing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import ConfigError, ModelConfig

__all__ = ["cached_weights", "hub_reachable", "check_pretrained_available"]

# File names timm tries in a hub repository, in its order (timm.models._hub).
_HUB_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_HUB_HOST = "huggingface.co"


def cached_weights(name: str) -> Path | None:
    """The local file timm would load `name`'s pretrained weights from without the network, or None
    (also for a model with no pretrained weights)."""
    from huggingface_hub import constants, try_to_load_from_cache

    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    torch_checkpoints = Path(torch_home) / "hub" / "checkpoints"      # torch.hub.get_dir() without importing torch
    if not any(Path(constants.HF_HUB_CACHE).glob("models--*")) and not any(torch_checkpoints.glob("*")):
        return None          # both caches empty: no need to import timm (and torch: seconds) to know
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else _HUB_FILES):
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
    return Path(cfg.file) if cfg.file and Path(cfg.file).is_file() else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be connected to within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_pretrained_available(mcfg: ModelConfig) -> None:
    """ConfigError naming `model.pretrained` when timm has no weights for the model, or they are in no local
    cache and cannot be downloaded."""
    if not mcfg.pretrained:
        return
    import timm

    cfg = timm.models.get_pretrained_cfg(mcfg.name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(f"model.pretrained: true, but timm has no pretrained weights for '{mcfg.name}'; "
                          "set model.pretrained: false, or model.pretrained_file to weights of your own")
    if cached_weights(mcfg.name) is not None or hub_reachable():
        return
    raise ConfigError(
        f"model.pretrained: true, but the weights of '{mcfg.name}' ({cfg.hf_hub_id or cfg.url}) are in no local "
        f"cache and {_HUB_HOST} cannot be reached (offline), so the first fold would fail. Set model.pretrained: "
        "false (train from scratch), or copy the weights file here and set model.pretrained_file: <file> with "
        "model.pretrained: false, or fill the cache where the network works: python -c \"import timm; "
        f"timm.create_model('{mcfg.name}', pretrained=True)\" (then copy ~/.cache/huggingface here)")
