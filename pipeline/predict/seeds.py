"""Several seeds on the same folds: each seed's fold files averaged into the fold's own.

With ``seeds: [0, 1, 2]`` fold k trains once per seed in ``<exp>/seed_<s>/fold_<k>/`` (its weights,
oof.csv, oof_tta.csv, test_probs.csv, exactly as a plain run's fold). `merge_seeds` then writes the
fold's usual files in ``<exp>/fold_<k>/``, each probability the mean over the seeds, so the ensemble,
score, blend and report read a seeds run like any other: seeds are averaged within a fold first,
then the folds are voted. ``fold_<k>/weights.json`` records the classes, the folds file and the seeds; ``fold_<k>/train_prior.json``
the mean of the seeds' learned priors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Config, seed_config
from pipeline.fileio import file_sha256, folder_lock, read_table, write_csv_atomic, write_json_atomic
from pipeline.predict.probs import PROB_PREFIX
from pipeline.train.models import read_sidecar
from pipeline.train.prior import TRAIN_PRIOR_FILE, read_train_prior

__all__ = ["average_seed_frames", "merge_seeds"]

# The fold files merged, and their key columns (identical across seeds); test_probs.csv, the Make target, last.
_MERGED = {"oof.csv": ["row", "label", "fold"], "oof_tta.csv": ["row", "label", "fold"], "test_probs.csv": ["id"]}


def average_seed_frames(frames: list[pd.DataFrame], keys: list[str], where: str) -> pd.DataFrame:
    """The seeds' copies of one fold file as one: the `keys` columns checked equal, probabilities averaged.

    >>> a = pd.DataFrame({"id": ["x"], "prob_0": [0.2], "prob_1": [0.8]})
    >>> b = pd.DataFrame({"id": ["x"], "prob_0": [0.6], "prob_1": [0.4]})
    >>> average_seed_frames([a, b], ["id"], "test_probs.csv").round(3).values.tolist()
    [['x', 0.4, 0.6]]
    """
    first = frames[0]
    for i, frame in enumerate(frames[1:], start=1):
        if list(frame.columns) != list(first.columns) or not frame[keys].equals(first[keys]):
            raise ValueError(f"{where}: seed #{i} covers other rows or columns than seed #0; "
                             "retrain the seeds of this fold (`make retrain FOLD=k`)")
    probs = [c for c in first.columns if c not in keys and PROB_PREFIX in c]
    out = first[keys].copy()
    for col in probs:
        out[col] = np.mean([f[col].to_numpy(dtype=np.float64) for f in frames], axis=0)
    return out


def _merge_train_priors(paths: list, out, classes: list, log) -> None:
    """The averaged model's prior: the mean of its seeds' train_prior.json priors (equal weights, as the
    probabilities), so logit adjustment and the prior-shift correction divide out what the seeds learned.
    Seeds trained before the file existed leave none, and the ensemble falls back to raw counts with a note."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        out.unlink(missing_ok=True)      # a stale average must not outlive its seeds
        log(f"[seeds] {', '.join(missing)} missing: {out} not written")
        return
    records = [read_train_prior(p, classes) for p in paths]
    prior = np.mean([r["prior"] for r in records], axis=0)
    write_json_atomic(out, {**records[0], "prior": (prior / prior.sum()).round(8).tolist(),
                            "seeds_averaged": len(records)})


def merge_seeds(cfg: Config, fold: int, log=print) -> None:
    """Average fold `fold`'s files over `seeds` into ``<exp>/fold_<fold>/`` (test_probs.csv written last)."""
    if not cfg.seeds:
        raise ValueError("merge-seeds: this config has no `seeds` list; a single-seed fold has nothing to merge")
    seeds = [seed_config(cfg, s) for s in cfg.seeds]
    out = cfg.fold_dir(fold)
    with folder_lock(out, f"fold {fold} of {cfg.exp_dir}", log):
        sidecars = [read_sidecar(one.fold_dir(fold) / "weights.safetensors") for one in seeds]
        classes = sidecars[0]["classes"]
        for one, side in zip(seeds, sidecars):
            if side["classes"] != classes:
                raise ValueError(f"{one.fold_dir(fold)}: trained on classes {side['classes']}, seed "
                                 f"{cfg.seeds[0]} on {classes}; retrain the fold")
        write_json_atomic(out / "weights.json", {
            "classes": classes, "fold": fold, "seeds": list(cfg.seeds), "checkpoint": "seed average",
            "folds_file": str(cfg.folds_file), "folds_sha256": file_sha256(cfg.folds_file)})
        _merge_train_priors([one.fold_dir(fold) / TRAIN_PRIOR_FILE for one in seeds], out / TRAIN_PRIOR_FILE,
                            classes, log)
        for name, keys in _MERGED.items():
            paths = [one.fold_dir(fold) / name for one in seeds]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{', '.join(missing)} missing: run `make predict` (seeds {cfg.seeds})")
            merged = average_seed_frames([read_table(p) for p in paths], keys, f"fold {fold} {name}")
            write_csv_atomic(out / name, merged, float_format="%.7g")
    log(f"[seeds] fold {fold}: {len(seeds)} seeds ({', '.join(map(str, cfg.seeds))}) averaged → {out}")
