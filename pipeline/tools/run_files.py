"""What a finished training run's files say: its out-of-fold score, its seconds per epoch, whether each
fold's files are its own, and how two weight files differ. Read by `gpu-check` and `amp_eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.metrics import metric_value

__all__ = ["fold_dirs", "oof_score", "epoch_seconds", "foreign_fold_files", "weights_difference", "metrics_agree"]


def fold_dirs(exp_dir: str | Path) -> list[Path]:
    """The experiment's `fold_<k>` folders that hold finished weights, in fold order."""
    found = [p for p in Path(exp_dir).glob("fold_*") if (p / "weights.safetensors").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _classes(fold_dir: Path) -> list[str]:
    return [str(c) for c in json.loads((fold_dir / "weights.json").read_text())["classes"]]


def oof_score(exp_dir: str | Path, metric: str, folds: list[int] | None = None) -> float:
    """`metric` of the finished folds' out-of-fold probabilities (`fold_<k>/oof.csv`: best weights, no
    TTA), all their rows scored together, as the CV table's "out-of-fold, no TTA" row.

    FileNotFoundError when no fold (or one of `folds`) has finished.
    """
    dirs = fold_dirs(exp_dir)
    if folds is not None:
        dirs = [d for d in dirs if int(d.name.split("_")[1]) in folds]
        if len(dirs) != len(folds):
            raise FileNotFoundError(f"{exp_dir}: not every fold of {folds} has finished (weights.safetensors)")
    if not dirs:
        raise FileNotFoundError(f"{exp_dir}: no finished fold (fold_<k>/weights.safetensors)")
    classes = _classes(dirs[0])
    oof = pd.concat([pd.read_csv(d / "oof.csv", dtype={"label": str}) for d in dirs], ignore_index=True)
    index = {c: i for i, c in enumerate(classes)}
    y = oof["label"].map(index).to_numpy()
    probs = oof[[f"prob_{c}" for c in classes]].to_numpy()
    return metric_value(metric, y, probs)


def epoch_seconds(exp_dir: str | Path) -> list[float]:
    """Every finished fold's seconds per epoch (training + validation), from their metrics.csv."""
    return [float(s) for d in fold_dirs(exp_dir) for s in pd.read_csv(d / "metrics.csv")["seconds"]]


def foreign_fold_files(exp_dir: str | Path, fold: int, folds_file: str | Path) -> list[str]:
    """What in `fold_<fold>/` does not belong to that fold (empty: its files are its own): the weights'
    sidecar naming another fold, or out-of-fold rows that are not exactly the fold's validation rows
    in `folds_file`."""
    d = Path(exp_dir) / f"fold_{fold}"
    problems = []
    side = json.loads((d / "weights.json").read_text())
    if side.get("fold") != fold:
        problems.append(f"{d / 'weights.json'} names fold {side.get('fold')}")
    oof = pd.read_csv(d / "oof.csv")
    if set(oof["fold"].unique()) != {fold}:
        problems.append(f"{d / 'oof.csv'} holds rows of folds {sorted(oof['fold'].unique())}")
    assigned = pd.read_csv(folds_file)["fold"].to_numpy()
    expected = np.flatnonzero(assigned == fold)
    if not np.array_equal(np.sort(oof["row"].to_numpy()), expected):
        problems.append(f"{d / 'oof.csv'} rows are not fold {fold}'s {len(expected)} validation rows of {folds_file}")
    return problems


def weights_difference(a: str | Path, b: str | Path) -> dict:
    """How the tensors of two weight files differ: identical?, the largest absolute difference, and how
    many tensors differ (tensors in one file only count as differing, with an infinite difference)."""
    from pipeline.train.models import load_weights

    wa, wb = load_weights(a), load_weights(b)
    differing, largest = 0, 0.0
    for key in set(wa) | set(wb):
        if key not in wa or key not in wb or wa[key].shape != wb[key].shape:
            differing, largest = differing + 1, float("inf")
            continue
        if not np.array_equal(wa[key].numpy(), wb[key].numpy()):
            differing += 1
            largest = max(largest, float((wa[key].double() - wb[key].double()).abs().max()))
    return {"identical": differing == 0, "tensors": len(set(wa) | set(wb)), "tensors_differing": differing,
            "max_abs_difference": largest}


def metrics_agree(a: str | Path, b: str | Path, epochs: int) -> bool:
    """Whether two metrics.csv files hold the same numbers (all but `seconds`) for their first `epochs` rows."""
    ma, mb = (pd.read_csv(p).drop(columns="seconds").head(epochs) for p in (a, b))
    return len(ma) == len(mb) == epochs and ma.equals(mb)
