"""16-bit images: refused by default, scaled to 8-bit at decode time with data.high_bit_depth (range, percentile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import stages
from pipeline.data.bit_depth import Scaling, percentile_window, scaling_for, to_uint8
from pipeline.data.cache import cache_key, decoded_for
from pipeline.data.check import check_data
from pipeline.data.tables import DataError, read_train_table
from pipeline.data.transforms import load_rgb
from tests.test_layouts import CLASSES, config, data_keys


def png16(path: Path, pixels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def dataset16(root: Path) -> None:
    """Class folders of 32x32 16-bit PNGs (the first one constant 32768), a 16-bit test folder and its sample."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(CLASSES):
        for k in range(4):
            pixels = np.full((32, 32), 32768) if (c, k) == (0, 0) else rng.integers(0, 4096, (32, 32)) + 2000 * c
            png16(root / "train" / cls / f"{k}.png", pixels)
    for k in range(3):
        png16(root / "test" / f"t{k}.png", rng.integers(0, 8000, (32, 32)))
    (root / "sample_submission.csv").write_text("id,label\n" + "".join(f"t{k},NA\n" for k in range(3)))


def test_range_maps_0_65535_onto_0_255():
    # 65535 = 255 x 257: a pixel v becomes v / 257, rounded (33025 / 257 = 128.502 → 129).
    pixels = np.array([[0, 257, 32768, 33025, 65535]], dtype=np.uint16)
    assert to_uint8(pixels, "I;16", Scaling("range"), "x.png").tolist() == [[0, 1, 128, 129, 255]]


def test_the_percentile_window_is_the_data_s_and_clips_outside_it(tmp_path):
    # The pixels 1000, 1001, ..., 3000 (2001 values, split over two images): their 0.5th and 99.5th
    # percentiles are the 11th and the 1991st values, 1010 and 2990.
    a = png16(tmp_path / "a.png", np.arange(1000, 2001).reshape(7, 143))
    b = png16(tmp_path / "b.png", np.arange(2001, 3001).reshape(8, 125))
    assert percentile_window([a, b]) == (1010.0, 2990.0)
    scaled = to_uint8(np.array([[1000, 1010, 2000, 2990, 3000]]), "I;16", Scaling("percentile", (1010.0, 2990.0)), "x")
    assert scaled.tolist() == [[0, 0, 128, 255, 255]]      # (2000 - 1010) / 1980 * 255 = 127.5 → 128


def test_without_the_key_16_bit_images_are_refused(tmp_path):
    root = tmp_path / "data"
    dataset16(root)
    with pytest.raises(ValueError, match=r"t0.png has I;16 pixels .* set data.high_bit_depth: range or percentile"):
        load_rgb(str(root / "test" / "t0.png"))
    cfg = config(tmp_path, data_keys(root, layout="folders"))
    stages.resolve(cfg)
    with pytest.raises(DataError, match=r"\[high-bit-depth\] x15"):        # 12 training + 3 test images
        stages.folds(cfg)


def test_range_refuses_float_images_naming_percentile(tmp_path):
    path = tmp_path / "f.tiff"
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(path)
    with pytest.raises(ValueError, match="data.high_bit_depth: percentile"):
        load_rgb(str(path), Scaling("range"))
    assert load_rgb(str(path), Scaling("percentile", (0.0, 1.0)))[-1, -1].tolist() == [255, 255, 255]


def test_16_bit_images_train_and_predict_with_the_key(tmp_path):
    root = tmp_path / "data"
    dataset16(root)
    cfg = config(tmp_path, data_keys(root, layout="folders", high_bit_depth="range"))
    stages.resolve(cfg)
    report = check_data(cfg, n_jobs=1)
    assert report.ok, report.format()
    [note] = [w for w in report.warnings if w.kind == "high-bit-scaled"]
    assert "15 image(s) are 16/32-bit (I;16 x15" in note.message and "the type's range 0..65535" in note.message
    paths = read_train_table(cfg)["image"]
    decoded = decoded_for(cfg, paths, log=None)            # the cache training reads: 32768 became 128
    assert set(np.unique(decoded[paths.tolist().index(str(root / "train" / CLASSES[0] / "0.png"))])) == {128}
    stages.folds(cfg, log=lambda line: None)
    stages.train(cfg, [0])
    stages.predict(cfg, [0], log=lambda line: None)
    assert len(pd.read_csv(cfg.fold_dir(0) / "test_probs.csv")) == 3


def test_the_check_states_the_percentile_window_the_decode_uses(tmp_path):
    root = tmp_path / "data"
    dataset16(root)
    cfg = config(tmp_path, data_keys(root, layout="folders", high_bit_depth="percentile"))
    stages.resolve(cfg)
    low, high = scaling_for(cfg).window
    [note] = [w for w in check_data(cfg, n_jobs=1).warnings if w.kind == "high-bit-scaled"]
    assert f"0.5th..99.5th percentiles {low:g}..{high:g} → 0..255" in note.message
    paths = [str(p) for p in sorted((root / "train").rglob("*.png"))]
    assert cache_key(paths, 32, None, Scaling("percentile", (low, high))) != cache_key(paths, 32, None, Scaling("range"))
