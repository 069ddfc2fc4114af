"""Measure the leak detector against known groups: precision and recall of its pairs, groups given or withheld.

    python -m pipeline.tools.leak_eval --config configs/demo.yaml
    python -m pipeline.tools.leak_eval --sources digits,fashion --styles shift,zoom,crop --work /tmp/leak

The second form builds each source x copy style as a dataset (:mod:`pipeline.tools.leak_sources`: real
images, each subject photographed three times) and evaluates it with the demo config's folds.

The config's ``data.group_column`` is the truth (the demo writes each digit as a group of shifted, tinted
copies). Three cases, each the scan the pipeline runs: folds split by the true groups (a leak-free split: every
flag is a false alarm), folds split without them (the copies straddle folds), and ``folds.auto_groups``
(all same-class pairs before any split; its components are the groups the folds are then split on).

What a missed copy costs is shown by a probe: a 1-nearest-neighbour classifier on 16x16 thumbnails, scored
out of fold (macro-F1) on folds split by the true groups, without them, and by auto_groups. It is the model
most exposed to a leak (a copy in another fold is its own answer), so its gap bounds what a CNN gains.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from pipeline.config import load_config
from pipeline.data.folds import assign_folds
from pipeline.data.leak_features import load_gray
from pipeline.data.leak_scan import scan_leaks
from pipeline.data.leaks import duplicate_groups
from pipeline.data.tables import read_train_table

__all__ = ["evaluate", "evaluate_sources"]


def _true_pairs(groups: np.ndarray, folds: np.ndarray | None) -> int:
    """Pairs of rows in one true group (and in different folds, when folds are given)."""
    frame = pd.DataFrame({"g": groups, "f": 0 if folds is None else folds})
    same = frame.groupby("g").size()
    pairs = int((same * (same - 1) // 2).sum())
    same_fold = frame.groupby(["g", "f"]).size()
    return pairs - int((same_fold * (same_fold - 1) // 2).sum()) if folds is not None else pairs


def _score(scan, groups: np.ndarray, folds) -> dict:
    i, j = scan.pairs["i"].to_numpy(dtype=np.int64), scan.pairs["j"].to_numpy(dtype=np.int64)
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
    return round(float(f1_score(labels.astype(str), predicted.astype(str), average="macro")), 4)


def evaluate(cfg) -> dict:
    """The three cases' precision and recall, and how auto_groups' components match the true groups."""
    if not cfg.data.group_column:
        raise ValueError("leak_eval needs the true groups: set data.group_column in the config")
    table = read_train_table(cfg)
    groups = table["group"].to_numpy()
    labels, k, seed = table["stratify"].to_numpy(), cfg.folds.n_splits, cfg.seed
    thumbs = load_gray(table["image"], 16).reshape(len(table), -1)
    out = {}
    for case, given in [("groups given", groups), ("groups withheld", None)]:
        folds = assign_folds(labels, k, seed, groups=given)
        out[case] = _score(scan_leaks(cfg, table, folds), groups, folds)
        out[case]["probe_oof_f1"] = _probe_oof(thumbs, table["label"].to_numpy(), folds)
    scan = scan_leaks(cfg, table)
    out["auto_groups (before the split)"] = _score(scan, groups, None)
    ids = duplicate_groups(len(table), scan.pairs)
    folds = assign_folds(labels, k, seed, groups=ids)
    out["auto_groups (before the split)"]["probe_oof_f1"] = _probe_oof(thumbs, table["label"].to_numpy(), folds)
    per_group = pd.Series(folds).groupby(groups).nunique()
    out["auto_groups (before the split)"].update({
        "components": int(len(np.unique(ids))), "true_groups": int(len(per_group)),
        "true_groups_split_across_folds": int((per_group > 1).sum()),
        "components_mixing_true_groups": int((pd.Series(groups).groupby(ids).nunique() > 1).sum())})
    return out


def evaluate_sources(config: str, sources, styles, work, overrides=()) -> dict:
    """`evaluate` on every source x style dataset (built under `work`), keyed ``source/style``."""
    from pipeline.tools.leak_sources import make_leak_dataset
    out = {}
    for source in sources:
        for style in styles:
            csv = make_leak_dataset(source, style, f"{work}/{source}-{style}")
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
    args = parser.parse_args(argv)
    if args.sources:
        found = evaluate_sources(args.config, args.sources.split(","), args.styles.split(","), args.work, args.set)
    else:
        found = evaluate(load_config(args.config, args.set))
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
