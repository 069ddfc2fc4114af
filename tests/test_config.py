"""Config validation: every mistake a user can make names the key; stamps move only on change."""

import json

import pytest
import yaml

from pipeline.config import ConfigError, LossConfig, load_config, parse_overrides
from pipeline.stamps import stage_fingerprint, write_resolved
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
    (["train.lrr=0.1"], "unknown key 'train.lrr'. Did you mean 'train.lr'? Allowed keys here: epochs,"),
    (["loss.name=bce"], "loss.name: 'bce' is not one of: ce, focal, f1, weighted_ce"),
    (["loss.label_smoothing=1.5"], "loss.label_smoothing: must be in [0, 1); got 1.5"),
    (["train.warmup_epochs=6", "train.epochs=6"], "train.warmup_epochs: must be in [0, train.epochs); got 6"),
    (["train.mixup_alpha=0.2", "train.batch_size=63"], "train.batch_size: must be even when Mixup/CutMix is on"),
    (["train.num_workers=-1"], "train.num_workers: must be 'auto' or a non-negative integer; got -1"),
    (["data.group_column=5"], "data.group_column: expected str or null, got 5 (int)"),
    (["train.lr=true"], "train.lr: expected float, got True (bool)"),
    (["train.cutmix_alpha=-1"], "train.cutmix_alpha: must be non-negative; got -1"),
    (["experiment=a b"], "experiment: must be letters, digits, '-' or '_'"),
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


def test_every_problem_is_one_line_naming_the_file_and_the_key():
    with pytest.raises(ConfigError) as err:
        _demo(["train.lr=-1", "train.epochs=0", "tta.merge=avg"])
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["train.epochs", "train.lr", "tta.merge"]
    assert all("demo.yaml" in line for line in lines)


def test_an_empty_section_keeps_its_defaults_and_the_top_level_must_be_a_mapping(tmp_path):
    (tmp_path / "empty.yaml").write_text("train:\n")
    assert load_config(tmp_path / "empty.yaml").train.epochs == load_config().train.epochs
    (tmp_path / "list.yaml").write_text("- train\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of keys, got list"):
        load_config(tmp_path / "list.yaml")


def test_sections_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="'ce', 'focal', 'f1' or 'weighted_ce'"):
        LossConfig(name="bce")


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


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    """A typo in a shipped config would stop a new user's first `make`."""
    assert load_config(REPO / "configs" / name).experiment


def _documented_choices():
    """(section, key, choice) for every choice of every key whose values are a fixed list."""
    from pipeline.config import Config, is_section, literal_choices
    for section, field in Config.model_fields.items():
        if is_section(field.annotation):
            for key, leaf in field.annotation.model_fields.items():
                for choice in literal_choices(leaf.annotation):
                    yield section, key, choice


def test_every_documented_choice_works_unquoted_in_a_file_and_in_set(tmp_path):
    """`off`, `no`, `on`, `yes` are booleans to YAML 1.1; written unquoted they must still mean the choice."""
    choices = list(_documented_choices())
    assert ("ensemble", "prior_shift", "off") in choices and ("train", "amp", "off") in choices
    for section, key, choice in choices:
        path = tmp_path / "config.yaml"
        path.write_text(f"{section}:\n  {key}: {choice}\n")
        assert getattr(getattr(load_config(path), section), key) == choice, (section, key, "file")
        assert getattr(getattr(load_config(None, [f"{section}.{key}={choice}"]), section), key) == choice, \
            (section, key, "SET=")


def test_a_boolean_no_choice_means_is_refused_saying_how_yaml_read_it():
    with pytest.raises(ConfigError, match="ensemble.prior_shift: YAML reads an unquoted on/off/yes/no/true/false "
                                          "as True, which is not a choice of this key; write one of: off, auto"):
        load_config(None, ["ensemble.prior_shift=on"])
    assert load_config(None, ["ensemble.prior_shift=no"]).ensemble.prior_shift == "off"
    assert load_config(None, ["model.pretrained=yes"]).model.pretrained is True
