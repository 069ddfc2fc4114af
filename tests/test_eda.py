"""The EDA page: figures, tables that match the folds file and the trainer, and leakage detection.

The tiny demo gets one planted exact duplicate (a copy of row 0's image under its own group);
the folds file then puts the copy in another fold than the original (leakage: flagged) or in
the same fold (no leakage: not flagged).
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.report.eda import sampling_table, write_eda
from pipeline.report.near_duplicates import EXACT_LIMIT, near_duplicate_pairs
from tests.conftest import tiny_config_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["class_distribution.png", "fold_classes.png", "sampling.png", "group_sizes.png", "samples.png"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_dir):
    """The tiny demo plus a planted duplicate of row 0, with folds made by the pipeline."""
    from pipeline.data.fold_file import make_folds

    root = tmp_path_factory.mktemp("eda")
    data = root / "data"
    shutil.copytree(demo_dir, data)
    train = pd.read_csv(data / "train.csv")
    shutil.copy(data / train.loc[0, "image"], data / "train" / "planted.png")
    planted_row = pd.DataFrame({"image": ["train/planted.png"], "label": [train.loc[0, "label"]],
                                "group": ["planted"]})
    pd.concat([train, planted_row], ignore_index=True).to_csv(data / "train.csv", index=False)
    raw = tiny_config_dict(root, data)
    # target_ratio 1.0: oversampling really adds rows on the tiny (nearly balanced) demo
    raw["sampling"] = {"method": "oversample", "target_ratio": 1.0}
    raw["report"] = {"samples_per_class": 3, "near_duplicate_distance": 4}
    cfg = load_config(None, raw)
    make_folds(cfg, log=lambda *a: None)
    return cfg, len(train)  # the planted row's index


def _eda_with_planted_fold(cfg, planted_row: int, same_fold: bool, root):
    """Run the EDA with the planted copy moved into (or out of) row 0's fold; outputs under `root`."""
    from pipeline.config import config_to_dict

    source = cfg.folds_file
    raw = config_to_dict(cfg)
    raw["output_dir"] = str(root / "outputs")
    raw["folds"] = {**raw["folds"], "dir": str(root / "folds")}
    cfg = load_config(None, raw)
    folds = pd.read_csv(source)
    original = int(folds.loc[0, "fold"])
    folds.loc[planted_row, "fold"] = original if same_fold else (original + 1) % cfg.folds.n_splits
    cfg.folds_file.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(cfg.folds_file, index=False)
    index = write_eda(cfg, log=lambda *a: None)
    return cfg, index, folds


@pytest.fixture(scope="module")
def leaked(planted, tmp_path_factory):
    cfg, row = planted
    cfg, index, folds = _eda_with_planted_fold(cfg, row, False, tmp_path_factory.mktemp("leaked"))
    return cfg, row, index, folds, index.read_text()


def _pair_rows(pairs: pd.DataFrame, a: int, b: int) -> pd.DataFrame:
    return pairs[((pairs["row_a"] == a) & (pairs["row_b"] == b)) | ((pairs["row_a"] == b) & (pairs["row_b"] == a))]


def test_figures_exist_and_are_valid_pngs(leaked):
    _, _, index, _, html = leaked
    out = index.parent
    for name in FIGURES + ["leaks.png"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        with Image.open(out / name) as img:
            img.verify()
    # every <img> of the page points at one of them
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert sorted(sources) == sorted(FIGURES + ["leaks.png"])
    assert not list(out.glob(".*.tmp"))


def test_planted_duplicate_in_another_fold_is_flagged(leaked):
    cfg, row, index, folds, html = leaked
    pairs = pd.read_csv(index.parent / "leaks.csv")
    hit = _pair_rows(pairs, 0, row)
    assert len(hit) == 1 and float(hit["similarity"].iloc[0]) > 0.999
    assert (pairs["fold_a"] != pairs["fold_b"]).all()
    assert "Possible validation leakage" in html and "planted.png" in html
    rows = len(np.unique(pairs[["row_a", "row_b"]].to_numpy()))
    # the warning says how many rows the pairs touch and, from the memorising probe, how much the CV may gain
    assert f"({rows} of {len(folds)} images)" in html and "a 1-nearest-neighbour probe" in html
    assert re.search(r"(inflated by up to about \+0\.\d{3} accuracy|no sign that the copies inflate the CV)", html)
    hashed = pd.read_csv(index.parent / "near_duplicates.csv")   # the hash listing still finds the exact copy
    assert int(_pair_rows(hashed, 0, row)["distance"].iloc[0]) == 0


def test_planted_duplicate_in_the_same_fold_is_not_flagged(planted, tmp_path):
    cfg, row = planted
    _, index, _ = _eda_with_planted_fold(cfg, row, True, tmp_path)
    pairs = pd.read_csv(index.parent / "leaks.csv")
    assert _pair_rows(pairs, 0, row).empty
    assert not (pairs["fold_a"] == pairs["fold_b"]).any()
    # the copy has exactly the original's cross-fold partners (none of its own making)
    assert _partners(pairs, row) == _partners(pairs, 0)


def _partners(pairs: pd.DataFrame, r: int) -> set:
    return set(pairs.loc[pairs["row_a"] == r, "row_b"]) | set(pairs.loc[pairs["row_b"] == r, "row_a"])


def test_per_fold_class_table_equals_the_folds_file(leaked):
    cfg, _, index, folds, _ = leaked
    table = pd.read_csv(index.parent / "fold_class_counts.csv", index_col="class")
    expected = pd.crosstab(folds["label"], folds["fold"])
    for k in range(cfg.folds.n_splits):
        assert table[f"fold_{k}"].to_dict() == expected[k].to_dict()
    assert table["total"].to_dict() == folds["label"].value_counts().to_dict()


def test_oversampled_counts_equal_what_the_trainer_draws(leaked):
    """The EDA's "after oversampling" counts are those of the loader the trainer builds for epoch 0."""
    import torch

    from pipeline.train.loop import training_loader
    from pipeline.train.selection import fold_data

    cfg, _, index, folds, _ = leaked
    sampling = pd.read_csv(index.parent / "sampling.csv", dtype={"class": str})
    grew = False
    for k in range(cfg.folds.n_splits):
        data = fold_data(cfg, k)
        loader = training_loader(cfg, data, torch.device("cpu"), epoch=0)
        drawn = pd.Series([data.classes[t] for t in loader.dataset.targets]).value_counts()
        part = sampling[sampling["fold"] == k].set_index("class")
        assert part["after"].astype(int).to_dict() == drawn.to_dict()
        before = pd.Series([data.classes[t] for t in data.targets[data.train_idx]]).value_counts()
        assert part["before"].to_dict() == before.to_dict()
        grew |= bool((part["after"] > part["before"]).any())
    assert grew, "target_ratio 1.0 should add rows somewhere; the test would prove nothing"


def test_balanced_and_none_sampling_tables():
    labels = np.array(["a"] * 6 + ["b"] * 2 + ["c"] * 4)
    folds = np.array([0, 1] * 6)
    balanced = sampling_table(labels, folds, "balanced", 0.5, seed=0)
    for k in (0, 1):
        part = balanced[balanced["fold"] == k]
        np.testing.assert_allclose(part["after"], [part["before"].sum() / 3] * 3)
    none = sampling_table(labels, folds, "none", 0.5, seed=0)
    assert (none["after"] == none["before"]).all()


def _brute(hashes, d):
    out = set()
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= d:
                out.add((i, j))
    return out


@pytest.mark.parametrize("distance", [0, 3, 6])
def test_near_duplicate_methods_agree_with_brute_force(distance):
    rng = np.random.default_rng(distance)
    base = rng.integers(0, 2**63, size=150, dtype=np.uint64)
    # plant neighbours at distances 0..8 from random bases
    near = []
    for k in range(60):
        h = int(base[rng.integers(len(base))])
        for bit in rng.choice(64, size=k % 9, replace=False):
            h ^= 1 << int(bit)
        near.append(h)
    hashes = np.concatenate([base, np.array(near, dtype=np.uint64)])
    expected = _brute(hashes, distance)
    assert expected
    for method in ("all", "buckets"):
        found = near_duplicate_pairs(hashes, distance, method=method)
        got = {(int(i), int(j)) for i, j, _ in found.pairs}
        assert got == expected, method
        assert found.total == len(expected)
        assert (found.pairs[:, 2] <= distance).all()


def test_near_duplicates_keep_only_cross_fold_pairs_and_skip_unreadable():
    hashes = np.array([5, 5, 5, 5, 2**40], dtype=np.uint64)
    folds = np.array([0, 0, 1, 1, 0])
    valid = np.array([True, True, True, False, True])
    for method in ("all", "buckets"):
        found = near_duplicate_pairs(hashes, 2, folds=folds, valid=valid, method=method)
        assert {(int(i), int(j)) for i, j, _ in found.pairs} == {(0, 2), (1, 2)}
        assert found.same_fold == 1 and found.total == 2
    assert EXACT_LIMIT >= 2236  # the whole demo is compared pair by pair


def test_eda_needs_the_folds_file(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="make folds"):
        write_eda(tiny_cfg)


def test_near_duplicate_buckets_are_not_quadratic_when_most_hashes_share_bits(monkeypatch):
    """Hashes agreeing on most bits (dark borders) fall in one chunk bucket; it is split again on the bits
    that differ, so the comparisons grow with n, not n^2 (counted, not timed)."""
    import pipeline.report.near_duplicates as nd

    n, compared, split = 20_000, [], []
    real_popcount, real_masks = nd._popcount, nd._chunk_masks

    def counted(x):          # fails at once instead of running for minutes when the search goes quadratic
        compared.append(x.size)
        assert sum(compared) < 100 * n, "the search compares far more pairs than the images"
        return real_popcount(x)

    def counted_split(hashes, n_chunks):
        split.append(len(hashes))
        assert sum(split) < 20 * n, "the buckets are split again and again without shrinking"
        return real_masks(hashes, n_chunks)

    monkeypatch.setattr(nd, "_popcount", counted)
    monkeypatch.setattr(nd, "_chunk_masks", counted_split)
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**24, size=n, dtype=np.uint64) << np.uint64(20)   # 40 bits the same everywhere
    found = near_duplicate_pairs(hashes, 2, method="buckets")     # all pairs would be 2 * 10^8
    small = hashes[:1500]
    assert {(int(i), int(j)) for i, j, _ in near_duplicate_pairs(small, 2, method="buckets").pairs} == _brute(small, 2)
    assert found.complete


def test_identical_hashes_are_counted_not_listed_one_by_one():
    hashes = np.array([7] * 3000 + [2**50], dtype=np.uint64)      # 3000 blank images and one other
    folds = np.arange(3001) % 3
    found = near_duplicate_pairs(hashes, 1, folds=folds, method="buckets", limit=500)
    per_fold = 1000
    assert found.same_fold == 3 * per_fold * (per_fold - 1) // 2
    assert found.total == 3000 * 2999 // 2 - found.same_fold and found.complete
    assert len(found.pairs) == 500 and (folds[found.pairs[:, 0]] != folds[found.pairs[:, 1]]).all()


def test_the_search_stops_at_the_limit_and_says_so():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**12, size=3000, dtype=np.uint64)     # 12 bits: nearly every pair within 4
    found = near_duplicate_pairs(hashes, 4, method="buckets", limit=1000)
    assert not found.complete and found.total >= 1000 and "stopped" in found.method
    assert near_duplicate_pairs(hashes[:200], 4, method="buckets").complete
