"""What Make sees of a config: the resolved YAML and one stamp per stage.

Each stage depends on a few config keys (``STAGE_KEYS``). ``write_resolved`` writes
``outputs/<exp>/config.yaml`` and ``stamps/<stage>.json`` holding only those keys, each rewritten only
when its content changes, so Make reruns exactly the stages a change affects; ``stage_fingerprint``
hashes the same keys for checkpoints and sidecars.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from pipeline.config import Config, config_to_dict, flatten, matches

__all__ = ["STAGE_KEYS", "stage_fingerprint", "package_versions", "write_resolved"]


# Each stage depends on these keys (prefix match). A change elsewhere leaves it up to date:
# changing only `ensemble.voting` re-votes without retraining or re-predicting.
STAGE_KEYS = {
    "data": ["data.demo", "data.demo_scale", "data.demo_seed", "data.image_root", "data.train_csv",
             "mask.enabled", "mask.sample", "mask.age_cutoff", "mask.relabel_file"],
    "folds": ["seed", "folds.n_splits", "data.train_csv", "data.label_column", "data.group_column",
              "data.stratify_column", "folds.auto_groups", "folds.leak_mads"],
    "train": ["seed", "folds.", "model.", "augment.", "sampling.", "train.", "loss.", "mask.", "data.train_csv",
              "data.image_root", "data.image_column", "data.label_column", "data.group_column",
              "data.true_label_column"],
    "predict": ["tta.", "ensemble.checkpoints", "augment.image_size", "augment.pre_resize_crop", "augment.mean", "augment.std", "data.sample_submission",
                "data.id_column", "data.test_image_template", "data.test_path_column",
                "data.test_root", "data.image_root", "train.device"],
    "ensemble": ["ensemble.", "folds.leak_mads", "data.sample_submission", "data.id_column", "data.target_column"],
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
