"""Shared fixtures: one tiny base config (CPU, tiny model, 32x32, one epoch) and a tiny demo dataset.

Every output goes to `tmp_path`, never to the repository's outputs/ or folds/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


def tiny_config_dict(root: Path, data_dir: Path) -> dict:
    """The demo config shrunk for tests: test_resnet, 1 epoch, 3 folds, everything under `root`."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["output_dir"] = str(root / "outputs")
    cfg["folds"] = {"n_splits": 3, "dir": str(root / "folds")}
    cfg["data"].update({
        "demo_scale": 0.05,
        "train_csv": str(data_dir / "train.csv"),
        "image_root": str(data_dir),
        "sample_submission": str(data_dir / "sample_submission.csv"),
        "test_labels": str(data_dir / "test_labels.csv"),
    })
    cfg["model"] = {"name": "test_resnet", "pretrained": False}
    cfg["train"].update({"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "device": "cpu"})
    cfg["tta"] = {"views": ["identity", "hflip"], "merge": "mean", "select": "all"}
    # A 1-epoch model on 30 test images: whether `auto` applies a step there is noise. These runs check the
    # plain votes; `auto` is tested on constructed OOF files (test_chain.py, test_prior_shift.py) and once on
    # a tiny trained run (test_cv_table.py).
    cfg.setdefault("ensemble", {}).update(prior_shift="off", logit_adjust="off", class_bias="off")
    return cfg


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A tiny demo dataset, made once per test session (scale 0.05: a handful of images per class)."""
    from pipeline.competitions.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(out, seed=0, scale=0.05, test_per_class=3)
    return out


@pytest.fixture
def tiny_cfg_dict(tmp_path, demo_dir) -> dict:
    return tiny_config_dict(tmp_path, demo_dir)


@pytest.fixture
def tiny_cfg(tiny_cfg_dict):
    return load_config(None, tiny_cfg_dict)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def offline_caches(monkeypatch, tmp_path) -> Path:
    """No network (HF_HUB_OFFLINE) and empty pretrained-weight caches, so that what a test sees decides and not
    this machine's caches; returns the (empty) Hugging Face hub cache folder."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))     # for subprocesses (make init)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def cache_weights(hf_cache: Path, model: str) -> Path:
    """A file where the Hugging Face hub cache keeps `model`'s pretrained weights (its snapshot layout)."""
    import timm

    repo = timm.models.get_pretrained_cfg(model).hf_hub_id
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    weights = folder / "snapshots" / ("0" * 40) / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    return weights
