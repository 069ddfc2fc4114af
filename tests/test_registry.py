"""A competition hands its model to the trainer through pipeline.registry: the trainer imports no competition."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.registry import register_heads, registered_heads
from tests.conftest import REPO


def test_a_fresh_process_builds_the_mask_heads_without_importing_the_competition_first():
    """Only the config names 'mask': the registry finds the competition that registers it."""
    code = ("import sys; from pipeline.config import load_config; from pipeline.train.models import create_model; "
            "assert 'pipeline.competitions.mask' not in sys.modules; "
            "m = create_model(load_config(None, {'model': {'name': 'test_resnet', 'heads': 'mask'}}).model, 18); "
            "print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "MaskHeadsModel"


def test_the_registered_check_refuses_classes_the_heads_cannot_read():
    from pipeline.train.models import create_model

    cfg = load_config(None, {"model": {"name": "test_resnet", "heads": "mask"}})
    with pytest.raises(ConfigError, match="'mask' needs the classes '0'..'17'"):
        create_model(cfg.model, 18, classes=[f"c{i}" for i in range(18)])


def test_an_unregistered_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"no competition registers 'nothing'; registered: .*mask"):
        registered_heads("nothing")


def test_a_registered_model_is_what_the_trainer_builds():
    import torch

    from pipeline.train.models import _timm_model

    register_heads("test-linear", lambda backbone, n, pretrained, drop: torch.nn.Linear(3, n), lambda classes: None)
    model = _timm_model("test_resnet", "test-linear", 4, False, 0.0)
    assert isinstance(model, torch.nn.Linear) and model.out_features == 4
