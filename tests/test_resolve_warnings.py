"""What resolve says before any work: images much larger than augment.image_size (a warning, from a few
sampled images), and pretrained weights that cannot be loaded offline (an error naming the key)."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
from PIL import Image

from pipeline import stages
from tests.conftest import cache_weights, write_config
from tests.test_layouts import config, data_keys, folders_dataset
from tests.test_preflight import _resolve


def big_images(root: Path, n: int, size: int = 256) -> None:
    """Class folders of `n` (size x size) images in two classes, a test folder and its sample."""
    for k in range(n):
        path = root / "train" / "ab"[k % 2] / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (k, 0, 0)).save(path)
    (root / "test").mkdir()
    Image.new("RGB", (size, size)).save(root / "test" / "t0.png")
    (root / "sample_submission.csv").write_text("id,label\nt0,a\n")


def _config_file(tmp_path: Path, root: Path, **augment) -> Path:
    raw = {"output_dir": str(tmp_path / "outputs"), "experiment": "x", "folds": {"n_splits": 2, "dir": str(tmp_path)},
           "model": {"name": "test_resnet"}, "augment": augment, "data": data_keys(root, layout="folders")}
    return write_config(tmp_path / "c.yaml", raw)


def test_images_much_larger_than_image_size_are_said_before_any_work(tmp_path, capsys):
    root = tmp_path / "data"
    big_images(root, 12)
    result = _resolve(_config_file(tmp_path, root, image_size=32), capsys)
    assert result.returncode == 0, result.stderr
    assert ("[resolve] warning: augment.image_size is 32, but the training images are about 256x256 (median of 8 "
            "sampled): the model sees them shrunk 8x") in result.stderr
    assert "Raise augment.image_size (e.g. 224)" in result.stderr
    assert not list((tmp_path / "outputs" / "x").glob("fold_*"))                 # resolve trains nothing
    quiet = _resolve(_config_file(tmp_path, root, image_size=128), capsys)
    assert quiet.returncode == 0 and "augment.image_size is" not in quiet.stderr


def test_resolve_opens_a_few_images_not_every_one(tmp_path, monkeypatch):
    root = tmp_path / "data"
    big_images(root, 60, size=16)
    opened = []
    real = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    stages.resolve(config(tmp_path, data_keys(root, layout="folders")))
    assert 0 < len(opened) <= 8


def test_pretrained_weights_missing_offline_stop_resolve_naming_the_key(tmp_path, capsys, offline_caches):
    root = tmp_path / "data"
    folders_dataset(root)
    path = _config_file(tmp_path, root)
    result = _resolve(path, capsys, "model.pretrained=true")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: model.pretrained: true, but the weights of 'test_resnet' "
                               "(timm/test_resnet.r160_in1k) are in no local cache")
    assert "model.pretrained_file" in lines[0] and "model.pretrained: false" in lines[0]
    assert not (tmp_path / "outputs" / "x" / "config.yaml").exists()            # stopped before writing anything
    cache_weights(offline_caches, "test_resnet")
    assert _resolve(path, capsys, "model.pretrained=true").returncode == 0
