"""Every key is checked before any work starts: what the libraries judge is built at resolve time."""

from __future__ import annotations

import re
import subprocess

import pytest

from pipeline.config import ConfigError, load_config, parse_overrides
from pipeline.tools.preflight import preflight
from tests.conftest import write_config
from tests.test_end_to_end import _make


def _resolve(config, capsys, *sets):
    """`python -m pipeline resolve`, what Make runs at parse time (in-process: torch imports once)."""
    from pipeline.cli import main

    code = main(["resolve", "--config", str(config), "--make-vars", *(["--set", *sets] if sets else [])])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out.out, out.err)


@pytest.mark.parametrize("override, message", [
    ("augment.train=[{Affine: {rotat: 10}}]", r"augment.train\[0\]: invalid parameters for Affine: "
                                              r"Argument\(s\) 'rotat' .* Valid parameters: .*rotate"),
    ("tta.views=[identity, flipx]", "tta.views: unknown view 'flipx'; valid views: identity, hflip"),
    ("model.name=resnet_nope", "model.name: 'resnet_nope' is not a timm model"),
    ("loss.class_weights=[1, 2, 3]", "loss.class_weights: expected a list of 10 positive numbers"),
    ("train.optimizer=adamw train.amp=fp16 train.device=cpu", "train.amp: fp16 needs CUDA"),
])
def test_resolve_refuses_what_only_the_libraries_can_judge(tiny_cfg_dict, tmp_path, capsys, override, message):
    config = write_config(tmp_path / "c.yaml", tiny_cfg_dict)
    result = _resolve(config, capsys, override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr   # one line, no traceback
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "outputs").exists()        # nothing written before the check


def test_a_valid_config_is_checked_once_then_remembered(tiny_cfg, monkeypatch):
    assert preflight(tiny_cfg) is True
    import pipeline.tools.preflight as pf
    monkeypatch.setattr(pf, "build_everything", lambda *a: pytest.fail("rebuilt an unchanged config"))
    assert preflight(tiny_cfg) is False
    changed = load_config(None, {**_plain(tiny_cfg), "tta": {"views": ["identity", "vflip"]}})
    monkeypatch.undo()
    assert preflight(changed) is True


def test_the_check_uses_the_real_number_of_classes(tiny_cfg, demo_dir):
    """The demo has 10 classes: a class-weight list of 10 passes, one of 2 does not."""
    ok = load_config(None, {**_plain(tiny_cfg), "loss": {"name": "ce", "class_weights": [1.0] * 10}})
    assert preflight(ok)
    bad = load_config(None, {**_plain(tiny_cfg), "loss": {"name": "ce", "class_weights": [1.0, 2.0]}})
    with pytest.raises(ConfigError, match="loss.class_weights"):
        preflight(bad)


def _plain(cfg):
    from pipeline.config import config_to_dict
    return config_to_dict(cfg)


def test_set_values_with_spaces_are_one_value(tiny_cfg_dict, tmp_path):
    assert parse_overrides(["tta.views=[identity,", "hflip]", "train.lr=0.1"]) == {
        "tta": {"views": ["identity", "hflip"]}, "train": {"lr": 0.1}}
    config = write_config(tmp_path / "c.yaml", tiny_cfg_dict)
    result = _make("-n", "train", config=config, extra=["SET=tta.views=[identity, vflip] augment.train=[{Affine: "
                                                        "{rotate: [-5, 5], p: 1.0}}]"])
    assert result.returncode == 0, result.stderr
    resolved = load_config(tmp_path / "outputs/demo/config.yaml")
    assert resolved.tta.views == ["identity", "vflip"]
    assert resolved.augment.train == [{"Affine": {"rotate": [-5, 5], "p": 1.0}}]   # braces and commas intact


def test_a_broken_set_value_is_one_line(tiny_cfg_dict, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_cfg_dict)
    result = _make("-n", "train", config=config, extra=["SET=tta.views=[identity, hflip"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "override 'tta.views=[identity, hflip': the value is not valid YAML" in result.stderr
