"""The decode cache: identical pixels, rebuilt exactly when an input changes, atomic, never pickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pipeline.data.cache as cache_mod
from pipeline.data.cache import (BatchNormalize, CachedImageDataset, DeviceFlip, build_cache, cache_key,
                            cached_transform, decoded_for, make_dataset)
from pipeline.config import AugmentConfig
from pipeline.data.transforms import ImageDataset, build_transform, load_rgb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path, demo_dir) -> list[str]:
    """A private copy of a dozen demo PNGs (32x32 RGB), so tests may rewrite them."""
    src = pd.read_csv(demo_dir / "train.csv")["image"].tolist()[:12]
    out = []
    for i, rel in enumerate(src):
        dst = tmp_path / "img" / f"{i:02d}.png"
        dst.parent.mkdir(exist_ok=True)
        shutil.copy2(demo_dir / rel, dst)
        out.append(str(dst))
    return out


def _npy_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


def _reference(path: str, size: int, crop=None) -> np.ndarray:
    steps = [A.CenterCrop(*crop, pad_if_needed=True)] if crop else []
    return A.Compose(steps + [A.Resize(size, size)])(image=load_rgb(path))["image"]


@pytest.mark.parametrize("size,crop", [(24, None), (48, None), (20, [40, 24])])
def test_cached_pixels_equal_decode_then_crop_and_resize(images, tmp_path, size, crop):
    decoded = build_cache(images, size, crop, tmp_path / "cache")
    assert decoded.array.dtype == np.uint8 and decoded.array.shape == (len(images), size, size, 3)
    for i, p in enumerate(images):
        np.testing.assert_array_equal(decoded[i], _reference(p, size, crop))


def test_cached_dataset_gives_the_same_tensors_as_image_dataset(images, tmp_path):
    """Same seed, same augmentations: the cache changes where pixels come from, not the result."""
    aug = AugmentConfig(image_size=24, pre_resize_crop=[30, 28],
                        train=[{"Affine": {"rotate": [-10, 10], "p": 0.7}}, {"HorizontalFlip": {"p": 0.5}},
                               {"RandomBrightnessContrast": {"p": 0.5}}])
    decoded = build_cache(images, aug.image_size, aug.pre_resize_crop, tmp_path / "cache")
    for train in (True, False):
        plain = ImageDataset(images, None, build_transform(aug, train=train))
        cached = CachedImageDataset(decoded, None, None, cached_transform(aug, train))
        plain.transform.set_random_seed(7)
        cached.transform.set_random_seed(7)
        for i in range(len(images)):
            a, b = plain[i][0], cached[i][0]
            assert a.dtype == b.dtype == torch.float32
            assert torch.equal(a, b), (train, i)


def test_uint8_items_plus_batch_normalize_equal_albumentations_normalize(images, tmp_path):
    aug = AugmentConfig(image_size=32)
    ref = A.Normalize(mean=aug.mean, std=aug.std)
    every_value = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)   # (256, 1, 3)
    expected = torch.from_numpy(ref(image=every_value)["image"]).permute(2, 0, 1)[None]
    norm = BatchNormalize(aug.mean, aug.std)
    chw = norm(torch.from_numpy(every_value).permute(2, 0, 1)[None].contiguous())     # torch ops
    hwc = norm(torch.from_numpy(every_value)[None])                                   # cv2 LUT (CPU)
    assert chw.dtype == hwc.dtype == torch.float32
    assert torch.equal(chw, expected) and torch.equal(hwc, expected)

    decoded = build_cache(images, 32, None, tmp_path / "cache")
    u8 = CachedImageDataset(decoded, None, None, cached_transform(aug, False, normalize=False))
    plain = ImageDataset(images, None, build_transform(aug, train=False))
    batch, _ = next(iter(torch.utils.data.DataLoader(u8, batch_size=len(images))))
    assert batch.dtype == torch.uint8 and batch.shape == (len(images), 32, 32, 3) and batch.is_contiguous()
    expected = torch.stack([plain[i][0] for i in range(len(images))])
    norm = BatchNormalize(aug.mean, aug.std)
    assert torch.equal(norm(batch), expected) and norm(batch).is_contiguous()
    assert torch.equal(norm(batch.permute(0, 3, 1, 2).contiguous()), expected)        # CHW uint8 too
    last = BatchNormalize(aug.mean, aug.std, channels_last=True)(batch)
    assert torch.equal(last, expected) and last.is_contiguous(memory_format=torch.channels_last)
    floats = torch.randn(2, 3, 4, 4)
    assert BatchNormalize(aug.mean, aug.std)(floats) is floats   # already normalised: untouched


def test_reused_when_nothing_changed(images, tmp_path):
    first = build_cache(images, 24, None, tmp_path / "cache")
    stamp = first.path.stat().st_mtime_ns
    second = build_cache(images, 24, None, tmp_path / "cache")
    assert first.built and not second.built
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp
    assert _npy_files(tmp_path / "cache") == [first.path]


def test_rebuilt_when_an_image_changes_and_the_stale_file_is_removed(images, tmp_path):
    before = build_cache(images, 24, None, tmp_path / "cache")
    old_row = np.array(before[3])
    new_pixels = np.asarray(Image.open(images[3]).convert("RGB"))[::-1].copy()   # different pixels
    st = os.stat(images[3])
    Image.fromarray(new_pixels).save(images[3])
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    after = build_cache(images, 24, None, tmp_path / "cache")
    assert after.built and after.path != before.path and after.key != before.key
    np.testing.assert_array_equal(after[3], _reference(images[3], 24))
    assert not np.array_equal(after[3], old_row)
    assert _npy_files(tmp_path / "cache") == [after.path]   # same images + geometry, old key: deleted


def test_touching_an_image_alone_rebuilds(images, tmp_path):
    before = build_cache(images, 24, None, tmp_path / "cache")
    st = os.stat(images[0])
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = build_cache(images, 24, None, tmp_path / "cache")
    assert after.built and after.key != before.key


def test_rebuilt_when_the_resolution_or_crop_changes_other_resolutions_are_kept(images, tmp_path):
    a = build_cache(images, 24, None, tmp_path / "cache")
    b = build_cache(images, 16, None, tmp_path / "cache")
    c = build_cache(images, 16, [28, 28], tmp_path / "cache")
    assert a.built and b.built and c.built
    assert len({a.path, b.path, c.path}) == 3 and b.array.shape[1:] == (16, 16, 3)
    assert _npy_files(tmp_path / "cache") == sorted([a.path, b.path, c.path])
    assert not build_cache(images, 24, None, tmp_path / "cache").built   # switching back is free


def test_order_of_paths_is_part_of_the_key(images, tmp_path):
    a = build_cache(images, 16, None, tmp_path / "cache")
    b = build_cache(images[::-1], 16, None, tmp_path / "cache")
    assert b.built and b.path != a.path
    np.testing.assert_array_equal(b[0], a[len(images) - 1])
    assert cache_key(images, 16)[1] != cache_key(images, 17)[1]


def test_files_are_plain_npy_loadable_without_pickle(images, tmp_path):
    decoded = build_cache(images, 24, None, tmp_path / "cache")
    assert decoded.path.suffix == ".npy"
    arr = np.load(decoded.path, allow_pickle=False)
    assert arr.dtype == np.uint8 and arr.shape == (len(images), 24, 24, 3)
    np.testing.assert_array_equal(arr, decoded.array)
    assert isinstance(decoded.array, np.memmap) and not decoded.array.flags.writeable


def test_pickling_sends_the_path_not_the_pixels(images, tmp_path):
    decoded = build_cache(images, 48, None, tmp_path / "cache")
    blob = pickle.dumps(decoded)
    assert len(blob) < decoded.nbytes / 4
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.array, decoded.array)


def test_a_failing_build_leaves_no_cache_file(images, tmp_path, monkeypatch):
    real = cache_mod._decode_chunk
    calls = []

    def explode(out, start, paths, geom, *rest):
        calls.append(start)
        real(out, start, paths[:1], geom, *rest)   # part of the work is written...
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(cache_mod, "_decode_chunk", explode)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_cache(images, 24, None, tmp_path / "cache", n_jobs=1)
    assert calls
    assert list((tmp_path / "cache").glob("*.npy*")) == []   # no final file, no temporary left
    monkeypatch.setattr(cache_mod, "_decode_chunk", real)
    assert build_cache(images, 24, None, tmp_path / "cache").built


def test_an_undecodable_or_missing_image_is_named_and_leaves_no_file(images, tmp_path):
    Path(images[5]).write_bytes(b"not an image")
    with pytest.raises(ValueError, match="05.png"):
        build_cache(images, 24, None, tmp_path / "cache")
    assert _npy_files(tmp_path / "cache") == []
    Path(images[5]).unlink()
    with pytest.raises(FileNotFoundError, match="05.png"):
        build_cache(images, 24, None, tmp_path / "cache")


KILLED_BUILD = """
import sys, time
from pathlib import Path
import pipeline.data.cache as c
real = c._decode_chunk
def slow(out, start, paths, geom, *rest):
    real(out, start, paths, geom, *rest)
    Path(sys.argv[2]).touch()
    time.sleep(60)
c._decode_chunk = slow
c.build_cache(sys.argv[3:], 24, None, sys.argv[1], n_jobs=1)
"""


def test_a_killed_build_leaves_no_cache_file_and_its_leftover_is_cleaned(images, tmp_path):
    cache_dir, marker = tmp_path / "cache", tmp_path / "inside"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(cache_dir), str(marker), *images],
                            cwd=REPO)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the build process exited early"
            assert time.time() < deadline, "the build never started"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _npy_files(cache_dir) == []                 # no final file
    assert list(cache_dir.glob(".*.tmp"))              # only the temporary, half-written file
    built = build_cache(images, 24, None, cache_dir)
    assert built.built and list(cache_dir.glob(".*.tmp")) == []


def test_concurrent_builds_decode_once(images, tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(build_cache(images, 24, None, tmp_path / "cache"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.built for r in results) == 1 and len({r.path for r in results}) == 1


def test_decoded_for_uses_the_config_and_can_be_switched_off(tiny_cfg, images, tmp_path):
    tiny_cfg.augment.image_size = 16
    decoded = decoded_for(tiny_cfg, images, log=None)
    assert decoded.path.parent == Path(tiny_cfg.output_dir) / "cache"
    assert decoded.array.shape == (len(images), 16, 16, 3)
    object.__setattr__(tiny_cfg.data, "cache", False)   # the key config.py is to gain
    assert decoded_for(tiny_cfg, images, log=None) is None


def test_make_dataset_with_and_without_cache_gives_the_same_batches(images, tmp_path):
    aug = AugmentConfig(image_size=24, train=[{"Affine": {"rotate": [-10, 10], "p": 0.7}}])
    rows, targets = [5, 1, 7, 7], [0, 1, 2, 3]
    decoded = build_cache(images, 24, None, tmp_path / "cache")
    norm = BatchNormalize(aug.mean, aug.std)
    batches = []
    for cache in (decoded, None):
        ds = make_dataset(aug, images, rows, targets, train=True, decoded=cache)
        ds.transform.set_random_seed(3)
        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
        batches.append((norm(x), y))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    with pytest.raises(ValueError, match="cache holds"):
        make_dataset(aug, images[:3], decoded=decoded)


def test_a_batch_read_at_once_equals_its_items_read_one_by_one(images, tmp_path):
    """The DataLoader's batch read (__getitems__: one read of the map) gives each item as item-by-item reads
    do, in the batch's order, repeats included, with the same augmentation draws."""
    aug = AugmentConfig(image_size=24, train=[{"Affine": {"rotate": [-10, 10], "p": 0.7}},
                                              {"RandomBrightnessContrast": {"p": 0.5}}])
    decoded = build_cache(images, 24, None, tmp_path / "cache")
    rows, targets = [5, 1, 7, 7, 0], [4, 3, 2, 1, 0]
    for train in (True, False):
        ds = CachedImageDataset(decoded, rows, targets, cached_transform(aug, train, normalize=False))
        items = [4, 2, 3, 2, 0]
        ds.transform.set_random_seed(5)
        one_by_one = [ds[i] for i in items]
        ds.transform.set_random_seed(5)
        together = ds.__getitems__(items)
        assert [t for _, t in together] == [t for _, t in one_by_one] == [targets[i] for i in items]
        for (a, _), (b, _) in zip(together, one_by_one):
            np.testing.assert_array_equal(a, b)
        if not train:   # nothing to do to a prediction item: the cached pixels themselves
            np.testing.assert_array_equal(together[0][0], decoded[rows[items[0]]])


def test_prediction_items_skip_the_empty_transform_and_training_items_go_through_theirs(images, tmp_path,
                                                                                       monkeypatch):
    aug = AugmentConfig(image_size=24, train=[{"HorizontalFlip": {"p": 0.5}}])
    decoded = build_cache(images, 24, None, tmp_path / "cache")
    calls = []
    real = A.Compose.__call__
    monkeypatch.setattr(A.Compose, "__call__", lambda self, *a, **k: calls.append(len(self.transforms))
                        or real(self, *a, **k))
    for train in (False, True):
        ds = CachedImageDataset(decoded, [0, 1, 2], None, cached_transform(aug, train, normalize=False))
        ds[0], ds.__getitems__([1, 2])
    assert calls == [1, 1, 1]      # prediction's empty Compose never called; training's for each of 3 items


def test_device_flip():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    assert torch.equal(DeviceFlip(1.0)(x), x.flip(3))
    assert torch.equal(DeviceFlip(0.0, 1.0)(x), x.flip(2))
    assert torch.equal(DeviceFlip(0.0)(x), x)
    big = torch.randn(64, 1, 1, 2)
    a = DeviceFlip(0.5)(big, torch.Generator().manual_seed(3))
    assert torch.equal(a, DeviceFlip(0.5)(big, torch.Generator().manual_seed(3)))
    flipped = (a != big).any(dim=(1, 2, 3)).sum().item()
    assert 10 < flipped < 54


@pytest.mark.slow
def test_bench_smoke(tmp_path, demo_dir):
    """Not a timing test: a tiny run writes the JSON with every section."""
    from pipeline.tools.bench import run_bench

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    result = run_bench(out, model="test_resnet", image_size=16, batch_size=8, steps=1, repeats=1,
                       large_images=2, large_size=32, data_dir=demo_dir, threads=1, log=lambda *_: None)
    assert torch.get_num_threads() == threads
    saved = json.loads(out.read_text())
    assert set(saved) == {"meta", "train", "predict", "loader", "large", "training_efficiency",
                          "prediction_efficiency", "training_headline", "prediction_headline", "headline_variants",
                          "bound", "augment"}
    assert {"bare", "disk", "cache", "cache_u8", "cache_u8_noaug"} <= set(saved["train"])
    assert saved["train"]["cache_u8"]["images_per_s"] > 0 and "peak_rss_mb" in saved["loader"]["cold_train"]
    assert result["training_efficiency"] == saved["training_efficiency"]


@pytest.mark.slow
@pytest.mark.parametrize("predict_batch_size", [None, 12])
def test_bench_predicts_as_the_predict_stage_runs(tmp_path, demo_dir, monkeypatch, predict_batch_size):
    """TTA runs in batches of tta.batch_size (default) or --predict-batch-size, as many batches as training's,
    in float32 and contiguous memory (the predict stage's way) while training keeps bf16 and channels_last,
    against bare forward passes of views x that many images."""
    from pipeline.config import TTAConfig
    from pipeline.tools import bench
    from pipeline.tools.bench_report import tta_settings

    seen = {"bare": set(), "batches": [], "train": set()}
    real_bare, real_predict, real_train = bench.bare_predict, bench.pipeline_predict, bench.bare_train

    def layout(x, tools, net=None):
        weights = None if net is None else all(w.is_contiguous() for w in net.parameters())
        return (x.shape[0], x.dtype, x.is_contiguous(), tools.amp_dtype, weights)

    def bare(net, x, n, device, tools):
        seen["bare"].add(layout(x, tools, net))
        return real_bare(net, x, n, device, tools)

    def predict(net, loader, views, device, tools):
        batches = list(loader)
        seen["batches"].append([layout(tools.normalize(images), tools, net) for images, _ in batches])
        return real_predict(net, batches, views, device, tools)

    def train(net, optimizer, loss_fn, x, y, steps, device, tools=None):
        seen["train"].add(layout(x, tools)[:1] + (x.is_contiguous(memory_format=torch.channels_last), tools.amp_dtype))
        return real_train(net, optimizer, loss_fn, x, y, steps, device, tools)

    monkeypatch.setattr(bench, "bare_predict", bare)
    monkeypatch.setattr(bench, "pipeline_predict", predict)
    monkeypatch.setattr(bench, "bare_train", train)
    lines = []
    result = bench.run_bench(tmp_path / "b.json", model="test_resnet", image_size=16, batch_size=8, steps=2, repeats=1,
                             large_images=0, data_dir=demo_dir, threads=1, log=lines.append, amp="bf16",
                             channels_last=True, predict_batch_size=predict_batch_size)
    n = predict_batch_size or TTAConfig().batch_size
    assert seen["train"] == {(8, True, torch.bfloat16)}
    assert seen["bare"] == {(len(bench.DEMO_VIEWS) * n, torch.float32, True, None, True)}
    assert seen["batches"] and all(b == [(n, torch.float32, True, None, True)] * 2 for b in seen["batches"])
    assert f"amp bf16, channels_last True; TTA batch {n}, amp off, channels_last off (as the predict stage" in lines[-2]
    assert result["meta"]["images"] == 16
    assert tta_settings({"batch_size": 8}) == ""     # a run from before prediction's own settings were recorded


@pytest.mark.slow
def test_bench_measures_the_loop_without_augmentation_beside_the_default(tmp_path, demo_dir, monkeypatch):
    """The no-augmentation variant trains on the same cache without augment.train; every other training
    variant keeps the demo's augmentations: their difference is what the augmentations cost."""
    from pipeline.data.transforms import transform_name
    from pipeline.tools import bench
    from pipeline.tools.workloads import demo_augment

    built = []

    def spy(kind, paths, rows, targets, aug, train, decoded):
        ds = real(kind, paths, rows, targets, aug, train, decoded)
        if train and targets is not None:
            built.append((kind, [transform_name(t) for t in ds.transform.transforms]))
        return ds

    real = bench.bench_dataset
    monkeypatch.setattr(bench, "bench_dataset", spy)
    lines = []
    bench.run_bench(tmp_path / "b.json", model="test_resnet", image_size=16, batch_size=8, steps=1, repeats=1,
                    large_images=0, data_dir=demo_dir, threads=1, log=lines.append)
    demo = {next(iter(step)) for step in demo_augment(16).train}          # Affine, RandomBrightnessContrast
    train_phase = built[:6]                       # the training phase's six variants (one repeat)
    augmented = [demo <= set(names) for _, names in train_phase]
    assert augmented.count(False) == 1
    assert not demo & set(train_phase[augmented.index(False)][1])
    assert any(line.startswith("the augmentations take ") for text in lines for line in text.splitlines())


def test_bench_headline_is_a_number_only_when_the_runs_agree():
    from pipeline.tools.bench import judge_efficiency

    quiet = judge_efficiency([0.94, 0.95, 0.955, 0.96, 0.95], 0.2, 0.3, 2)
    assert quiet["reliable"] and quiet["headline"] == "0.950"
    busy = judge_efficiency([0.31, 0.8, 1.43, 1.49, 1.2], 3.8, 4.1, 2)     # the busy-machine case of the issue
    assert not busy["reliable"] and busy["headline"] is None
    assert "0.31-1.49" in busy["why"] and "load average 3.8 before, 4.1 after, on 2 CPUs" in busy["why"]
    assert "other processes were running" in busy["why"]
    above = judge_efficiency([1.42, 1.43, 1.45], 0.1, 0.1, 2)              # agreeing runs, impossible value
    assert not above["reliable"] and "above 1" in above["why"]
    near = judge_efficiency([0.99, 1.01, 1.02], 0.1, 0.1, 2)               # within noise of the bare model
    assert near["reliable"] and near["headline"].startswith("1.00 (indistinguishable")


def test_the_augmentation_line_is_the_gap_between_the_default_and_its_no_augmentation_twin():
    from pipeline.tools.bench_report import _augmentation_line, noaug_variant

    train = {"cache_u8": {"efficiency": 0.897}, "cache_u8_noaug": {"efficiency": 0.985}}
    assert _augmentation_line(train, "cache_u8") == [
        "the augmentations take 0.088 of the training efficiency: without them the loop runs at 0.985 of the bare model"]
    assert noaug_variant("cache_u8_w8") == "cache_u8_noaug_w8"
    assert _augmentation_line({"cache_u8": {"efficiency": 0.9}}, "cache_u8") == []   # a bench from before the row


def test_the_bench_times_each_augmentation_alone_at_its_configured_p():
    from types import SimpleNamespace

    from pipeline.tools.bench import _augment_phase

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    aug = AugmentConfig(image_size=16, train=[{"Affine": {"rotate": [-10, 10], "p": 1.0}},
                                              {"Affine": {"rotate": [-10, 10], "p": 0.0}}, "HorizontalFlip"])
    out = _augment_phase({"decoded": SimpleNamespace(array=images), "aug": aug, "image_size": 16}, repeats=2)
    assert (out["images"], out["size"]) == (40, 16)
    assert [(s["name"], s["p"]) for s in out["steps"]] == [("Affine", 1.0), ("Affine", 0.0), ("HorizontalFlip", 0.5)]
    always, never = out["steps"][0]["us_per_image"], out["steps"][1]["us_per_image"]
    assert always > 3 * never      # the same transform, drawn every time against never: timed alone, each at its p


def test_the_augmentation_cost_line_sets_each_step_against_the_bare_models_time_per_image():
    from pipeline.tools.bench_report import augment_cost_lines

    augment = {"images": 256, "size": 32, "all_us_per_image": 66.4,
               "steps": [{"name": "Affine", "p": 0.7, "us_per_image": 58.2},
                         {"name": "RandomBrightnessContrast", "p": 0.3, "us_per_image": 5.8}]}
    assert augment_cost_lines(augment, 1250.0) == [
        "augment.train per image, each alone at its p (256 images at 32 px): Affine 58 us (p 0.7), "
        "RandomBrightnessContrast 6 us (p 0.3); all 66 us, against 800 us of the bare model's step"]
    assert augment_cost_lines(None, 1250.0) == [] and augment_cost_lines({**augment, "steps": []}, 1250.0) == []
