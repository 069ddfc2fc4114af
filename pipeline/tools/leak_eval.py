"""Measure the leak detector against known groups: precision and recall of its pairs, groups given or withheld.

    python -m pipeline.tools.leak_eval --config configs/demo.yaml
    python -m pipeline.tools.leak_eval --sources digits,fashion --styles shift,zoom,crop --work /tmp/leak
    ... --out docs/figures/leak_sources.json       (also write the JSON, with the run's seconds)

The second form builds each source x copy style as a dataset (:mod:`pipeline.tools.leak_sources`: real
images, each subject photographed three times) and evaluates it with the demo config's folds.

The config's ``data.group_column`` is the truth (the demo writes each digit as a group of shifted, tinted
copies). Three cases: folds split by the true groups (a leak-free split: every flag is a false alarm), folds
split without them (the copies straddle folds), and ``folds.auto_groups`` (all same-class pairs before any
split; its components are the groups the folds are then split on). The folds play no part in the detector's
decision, only in which of its pairs are reported, so the images are scanned once and each case reports the
pairs that cross its folds: what the pipeline's scan with those folds reports.

What a missed copy costs is shown by a probe: a 1-nearest-neighbour classifier on 16x16 thumbnails, scored
out of fold (macro-F1) on folds split by the true groups, without them, and by auto_groups. It is the model
most exposed to a leak (a copy in another fold is its own answer), so its gap bounds what a CNN gains. One
split's score moves by up to ±0.03 with the split alone (the demo's grouped splits of seeds 40-45: 0.700 to
0.734), as much as the gap the probe is meant to show, so each case's score is the mean over PROBE_SPLITS
splits (seeds cfg.seed, cfg.seed + 1, ...); precision and recall are those of the cfg.seed split.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from pipeline.config import load_config
from pipeline.data.folds import assign_folds
from pipeline.data.leak_features import load_gray
from pipeline.data.leak_scan import scan_leaks
from pipeline.data.leaks import duplicate_groups
from pipeline.data.tables import read_train_table
from pipeline.fileio import write_text_atomic
from pipeline.tools.leak_sources import COPIES, make_leak_dataset

__all__ = ["PROBE_SPLITS", "evaluate", "evaluate_sources"]

PROBE_SPLITS = 5


def _true_pairs(groups: np.ndarray, folds: np.ndarray | None) -> int:
    """Pairs of rows in one true group (and in different folds, when folds are given)."""
    frame = pd.DataFrame({"g": groups, "f": 0 if folds is None else folds})
    same = frame.groupby("g").size()
    pairs = int((same * (same - 1) // 2).sum())
    same_fold = frame.groupby(["g", "f"]).size()
    return pairs - int((same_fold * (same_fold - 1) // 2).sum()) if folds is not None else pairs


def _crossing(scan, folds: np.ndarray) -> pd.DataFrame:
    """The scan's pairs whose two images sit in different folds."""
    i, j = scan.pairs["i"].to_numpy(dtype=np.int64), scan.pairs["j"].to_numpy(dtype=np.int64)
    return scan.pairs[folds[i] != folds[j]]


def _score(pairs: pd.DataFrame, groups: np.ndarray, folds) -> dict:
    i, j = pairs["i"].to_numpy(dtype=np.int64), pairs["j"].to_numpy(dtype=np.int64)
    hits = int((groups[i] == groups[j]).sum())
    truth = _true_pairs(groups, folds)
    return {"true_pairs": truth, "flagged": len(i), "correct": hits,
            "precision": round(hits / len(i), 4) if len(i) else None,
            "recall": round(hits / truth, 4) if truth else None}


def _probe_oof(thumbs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    """Out-of-fold macro-F1 of a 1-nearest-neighbour classifier (each fold predicted from the others)."""
    from sklearn.metrics import f1_score
    from sklearn.neighbors import KNeighborsClassifier
    predicted = np.empty(len(labels), dtype=object)
    for fold in np.unique(folds):
        held = folds == fold
        model = KNeighborsClassifier(1).fit(thumbs[~held], labels[~held])
        predicted[held] = model.predict(thumbs[held])
    return float(f1_score(labels.astype(str), predicted.astype(str), average="macro"))


def _probe_mean(thumbs: np.ndarray, table: pd.DataFrame, k: int, seed: int, groups) -> float:
    """The probe's OOF macro-F1, averaged over PROBE_SPLITS splits by `groups` (None: by row)."""
    stratify, labels = table["stratify"].to_numpy(), table["label"].to_numpy()
    scores = [_probe_oof(thumbs, labels, assign_folds(stratify, k, seed + s, groups=groups))
              for s in range(PROBE_SPLITS)]
    return round(float(np.mean(scores)), 4)


def evaluate(cfg) -> dict:
    """The three cases' precision and recall, and how auto_groups' components match the true groups."""
    if not cfg.data.group_column:
        raise ValueError("leak_eval needs the true groups: set data.group_column in the config")
    table = read_train_table(cfg)
    groups = table["group"].to_numpy()
    labels, k, seed = table["stratify"].to_numpy(), cfg.folds.n_splits, cfg.seed
    thumbs = load_gray(table["image"], 16).reshape(len(table), -1)
    scan = scan_leaks(cfg, table)
    out = {}
    for case, given in [("groups given", groups), ("groups withheld", None)]:
        folds = assign_folds(labels, k, seed, groups=given)
        out[case] = _score(_crossing(scan, folds), groups, folds)
        out[case]["probe_oof_f1"] = _probe_mean(thumbs, table, k, seed, given)
    out["auto_groups (before the split)"] = _score(scan.pairs, groups, None)
    ids = duplicate_groups(len(table), scan.pairs)
    folds = assign_folds(labels, k, seed, groups=ids)
    out["auto_groups (before the split)"]["probe_oof_f1"] = _probe_mean(thumbs, table, k, seed, ids)
    per_group = pd.Series(folds).groupby(groups).nunique()
    out["auto_groups (before the split)"].update({
        "components": int(len(np.unique(ids))), "true_groups": int(len(per_group)),
        "true_groups_split_across_folds": int((per_group > 1).sum()),
        "components_mixing_true_groups": int((pd.Series(groups).groupby(ids).nunique() > 1).sum())})
    return out


def evaluate_sources(config: str, sources, styles, work, overrides=(), seed: int = 0,
                     copies: int = COPIES) -> dict:
    """`evaluate` on every source x style dataset (built under `work`, drawn with `seed`, each subject with
    `copies` copies), keyed ``source/style``."""
    out = {}
    for source in sources:
        for style in styles:
            variant = "" if (seed, copies) == (0, COPIES) else f"-seed{seed}-copies{copies}"
            csv = make_leak_dataset(source, style, f"{work}/{source}-{style}{variant}", seed, copies)
            cfg = load_config(config, [*overrides, f"data.train_csv={csv}", f"data.image_root={csv.parent}"])
            out[f"{source}/{style}"] = evaluate(cfg)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides")
    parser.add_argument("--sources", help="comma-separated real-image sources (digits, fashion) instead of "
                                          "the config's data")
    parser.add_argument("--styles", default="shift,zoom,crop", help="comma-separated copy styles")
    parser.add_argument("--work", default="data/leak_eval", help="where the source datasets are written")
    parser.add_argument("--seed", type=int, default=0, help="draws the sources' subjects and their copies")
    parser.add_argument("--copies", type=int, default=COPIES, help="copies of each subject in the sources")
    parser.add_argument("--out", help="also write the JSON here, with the run's seconds (as make docs-run "
                                      "records it: docs/figures/leak_eval.json for the demo, leak_sources.json "
                                      "for the sources)")
    args = parser.parse_args(argv)
    tick = time.perf_counter()
    if args.sources:
        found = evaluate_sources(args.config, args.sources.split(","), args.styles.split(","), args.work, args.set,
                                 args.seed, args.copies)
    else:
        found = evaluate(load_config(args.config, args.set))
    print(json.dumps(found, indent=2))
    if args.out:
        found["seconds"] = round(time.perf_counter() - tick, 1)
        write_text_atomic(args.out, json.dumps(found, indent=2) + "\n")      # in the order made: the table's rows


if __name__ == "__main__":
    main()
