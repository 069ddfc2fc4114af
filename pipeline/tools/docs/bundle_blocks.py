"""The offline bundle's sentence: its size and its speed on the test images, from docs/figures/bundle.json
(written by `make bundle-figures`)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["blocks", "bundle_block"]


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def bundle_block(figures: Path) -> str:
    """The demo's bundle: size (and its weights'), seconds per 1,000 test images where it was measured, the check."""
    f = json.loads((figures / "bundle.json").read_text())
    machine = f["machine"]
    where = f"{machine['cores']}-core {machine['cpu']}" if machine["device"] == "cpu" else machine["gpu"]
    load = machine.get("load_average_before") or machine.get("load_average")
    busy = f", load average {load[0]:g}" if load else ""
    return (f"The demo's bundle ({f['folds']} folds x {f['views']} views) is {_mib(f['bundle_bytes'])}, of which "
            f"{_mib(f['weights_bytes'])} weights. Its predict.py took {f['predict_seconds']:g} s for the "
            f"{f['images']} test images on {machine['device']} ({where}{busy}): "
            f"{f['seconds_per_1000_images']:g} s per 1,000 images, model loading included "
            f"({f['wall_seconds']:g} s with Python's start and imports); the build-time timing estimated "
            f"{f['build_time_estimate_per_1000_images']:g} s per 1,000. bundle-check: {f['verdict']}.\n")


def blocks(figures: Path) -> dict[str, str]:
    """The bundle sentence, where the demo's bundle.json exists."""
    return {"bundle": bundle_block(figures)} if (figures / "bundle.json").is_file() else {}
