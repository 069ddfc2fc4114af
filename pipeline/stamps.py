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

from pipeline.config import Config, config_to_dict, flatten, matches, seed_config

__all__ = ["STAGE_KEYS", "SEED_STAGES", "stage_fingerprint", "package_versions", "write_resolved", "shared_stamp"]


# Each stage depends on these keys (prefix match). A change elsewhere leaves it up to date:
# changing only `ensemble.voting` re-votes without retraining or re-predicting.
STAGE_KEYS = {
    "data": ["data.demo", "data.demo_scale", "data.demo_seed", "data.demo_task", "data.image_root", "data.train_csv",
             "mask.enabled", "mask.sample", "mask.age_cutoff", "mask.relabel_file"],
    "folds": ["seed", "folds.n_splits", "data.train_csv", "data.label_column", "data.group_column",
              "data.stratify_column", "folds.auto_groups", "folds.leak_ratio"],
    "train": ["seed", "seeds", "pseudo.", "folds.", "model.", "augment.", "sampling.", "train.", "loss.", "mask.", "data.train_csv",
              "data.image_root", "data.image_column", "data.label_column", "data.group_column",
              "data.true_label_column", "data.train_image_template", "data.high_bit_depth"],
    # tta.select is the ensemble's: choosing among the predicted views predicts nothing again
    "predict": ["tta.views", "tta.merge", "tta.batch_size", "ensemble.checkpoints", "augment.image_size", "augment.pre_resize_crop", "augment.mean", "augment.std", "data.sample_submission",
                "data.id_column", "data.test_image_template", "data.test_path_column",
                "data.test_root", "data.image_root", "train.device", "data.high_bit_depth"],
    "ensemble": ["ensemble.", "competition.", "tta.select", "tta.merge", "folds.leak_ratio", "data.sample_submission", "data.id_column", "data.target_column"],
    # The pseudo-label list (pipeline.results.pseudo): the source's votes, thresholded and capped.
    "pseudo": ["pseudo.", "folds.", "data.sample_submission", "data.id_column", "data.test_image_template",
               "data.test_path_column", "data.test_root", "data.image_root"],
}

# Keys left out of stamps and fingerprints while the feature is off (the switch key is null), so that
# adding the feature changed no finished run's fingerprint: old folds are not retrained.
_OFF_WHILE_NULL = {"seeds": "seeds", "pseudo.": "pseudo.source", "data.train_image_template": "data.train_image_template"}
# The same for keys whose "off" is a value: at it, they are left out.
_OFF_AT = {"data.high_bit_depth": "refuse"}

# The stages each seed of a `seeds` run has its own stamps for (in <exp>/seed_<s>/stamps/).
SEED_STAGES = ("train", "predict")


def _stage_subset(cfg: Config, stage: str) -> dict:
    flat = flatten(config_to_dict(cfg))
    prefixes = STAGE_KEYS[stage]
    off = [prefix for prefix, switch in _OFF_WHILE_NULL.items() if flat.get(switch) is None]
    off += [key for key, value in _OFF_AT.items() if flat.get(key) == value]
    return {k: v for k, v in sorted(flat.items()) if matches(k, prefixes) and not matches(k, off)}


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


def shared_stamp(cfg: Config, stage: str) -> Path:
    """Where Make finds the stamp of a stage whose output experiments share: the data (`data.train_csv`) and a
    folds file. Kept per output, not per experiment (in ``<output_dir>/.stamps/``, a name no experiment can
    take), so a second experiment on the same data and folds finds it unchanged and rebuilds neither; with a
    per-experiment stamp, its new stamp would rewrite both and leave the first experiment stale."""
    target = Path(cfg.data.train_csv if stage == "data" else cfg.folds_file)
    key = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    return Path(cfg.output_dir) / ".stamps" / f"{stage}-{target.stem}-{key}.json"


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
        if stage in ("data", "folds"):
            write_text_if_changed(shared_stamp(cfg, stage), text)
    for seed in cfg.seeds or []:
        one = seed_config(cfg, seed)
        for stage in SEED_STAGES:
            text = json.dumps(_stage_subset(one, stage), indent=2, sort_keys=True) + "\n"
            write_text_if_changed(one.run_dir / "stamps" / f"{stage}.json", text)
    return resolved
