"""Config validation: every mistake a user can make names the key; stamps move only on change."""

import json

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_overrides, stage_fingerprint, write_resolved
from tests.conftest import REPO


def _demo(overrides):
    return load_config(REPO / "configs" / "demo.yaml", overrides)


@pytest.mark.parametrize("override, needle", [
    (["train.lerning_rate=0.1"], "unknown key 'train.lerning_rate'"),
    (["trian.lr=0.1"], "Did you mean 'train'"),
    (["train.lr=-0.1"], "train.lr: must be positive"),
    (["train.epochs=two"], "train.epochs: expected int"),
    (["folds.n_splits=1"], "folds.n_splits: must be at least 2"),
    (["ensemble.voting=average"], "ensemble.voting: 'average' is not one of: soft, hard"),
    (["sampling.method=smote"], "sampling.method"),
    (["sampling.target_ratio=1.5"], "sampling.target_ratio"),
    (["tta.views=hflip"], "tta.views: expected a list"),
    (["model=resnet18"], "model: expected a mapping"),
    (["data.test_path_column=path"], "exactly one of data.test_image_template and data.test_path_column"),
])
def test_invalid_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as err:
        _demo(override)
    assert needle in str(err.value)
    assert "demo.yaml" in str(err.value)  # names the file too


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["train.lr=0.5", "tta.views=[identity, vflip]", "model.pretrained=true"]) == {
        "train": {"lr": 0.5}, "tta": {"views": ["identity", "vflip"]}, "model": {"pretrained": True}}
    cfg = _demo(["train.lr=3e-4", "ensemble.voting=hard"])  # YAML 1.1 reads 3e-4 as a string
    assert cfg.train.lr == 3e-4 and cfg.ensemble.voting == "hard"
    assert cfg.train.epochs == yaml.safe_load((REPO / "configs/demo.yaml").read_text())["train"]["epochs"]


def test_int_accepted_for_float_but_bool_is_not_int():
    assert _demo(["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        _demo(["train.epochs=true"])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_voting_change_moves_only_the_ensemble_stamp(tmp_path):
    base = ["output_dir=" + str(tmp_path)]
    cfg = _demo(base)
    write_resolved(cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in (cfg.exp_dir / "stamps").iterdir()}
    contents = {p.name: p.read_text() for p in (cfg.exp_dir / "stamps").iterdir()}
    write_resolved(_demo(base + ["ensemble.voting=hard"]))
    changed = {p.name for p in (cfg.exp_dir / "stamps").iterdir() if p.read_text() != contents[p.name]}
    assert changed == {"ensemble.json"}
    unchanged_mtimes = {p.name: p.stat().st_mtime_ns for p in (cfg.exp_dir / "stamps").iterdir()
                        if p.name != "ensemble.json"}
    assert unchanged_mtimes == {k: v for k, v in stamps.items() if k != "ensemble.json"}
    assert json.loads((cfg.exp_dir / "stamps" / "ensemble.json").read_text())["ensemble.voting"] == "hard"


def test_training_keys_change_the_train_fingerprint_only_where_relevant():
    base = _demo([])
    assert stage_fingerprint(base, "train") != stage_fingerprint(_demo(["train.lr=0.1"]), "train")
    assert stage_fingerprint(base, "train") == stage_fingerprint(_demo(["tta.merge=max"]), "train")
    assert stage_fingerprint(base, "predict") != stage_fingerprint(_demo(["tta.merge=max"]), "predict")
