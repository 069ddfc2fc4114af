"""The probability files: `prob_<class>` columns, class indices from label text, each fold's files read back.

``fold_<k>/oof_tta.csv`` holds the fold's validation rows, one per line::

    row, label, fold,                      the train-table row, its true label, its fold
    prob_<class> ...                       TTA-merged probabilities (tta.merge), averaged over checkpoints
    <view>:prob_<class> ...                each view alone (e.g. ``identity:prob_cat``, ``hflip:prob_cat``)
    @<checkpoint>:prob_<class> ...         each checkpoint's TTA-merged probabilities (only with 2+)
    @<checkpoint>:<view>:prob_<class> ...  each (checkpoint, view) pair alone (only with 2+ checkpoints)

so its ``prob_*`` columns read exactly like ``oof.csv``'s; ``test_probs.csv`` holds ``id``, ``prob_*`` and the
same per-view (and per-pair) columns, so that the ensemble can choose views and checkpoints for the test
set as it does for the OOF rows (:class:`Candidates`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import read_table
from pipeline.train.models import read_sidecar

__all__ = ["PROB_PREFIX", "CKPT_PREFIX", "Candidates", "candidates_of", "candidate_probs", "candidate_frame",
           "prob_columns", "frame_prob_columns", "fold_probs_frame", "class_ids",
           "view_columns", "read_fold_probs", "read_test_probs", "stack_folds"]

PROB_PREFIX = "prob_"
CKPT_PREFIX = "@"


def frame_prob_columns(frame: pd.DataFrame) -> list[str]:
    """The `prob_*` columns of a probability file, in file order."""
    return [c for c in frame.columns if c.startswith(PROB_PREFIX)]


def prob_columns(classes: list) -> list[str]:
    """The probability columns of `classes`, in class order (``prob_<class>``)."""
    return [f"{PROB_PREFIX}{c}" for c in classes]


def fold_probs_frame(ids, probs: np.ndarray, classes: list) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids})
    for c, name in enumerate(classes):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, c]
    return frame


def class_ids(labels, classes: list, where: str) -> np.ndarray:
    """Labels (any dtype) → indices into `classes`, compared as text; unknown labels are an error."""
    index = {str(c): i for i, c in enumerate(classes)}
    text = pd.Series(labels).astype(str)
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:10]} are not among the model's classes {classes}; "
                         "the train CSV changed since training: rerun `make folds train`")
    return text.map(index).to_numpy(dtype=np.int64)


def view_columns(frame: pd.DataFrame, classes: list, prefix: str = "") -> dict[str, list[str]]:
    """``{view: [its prob columns in class order]}`` of an oof_tta frame, in file order.

    With ``prefix=CKPT_PREFIX``, the per-checkpoint columns instead (names without the ``@``).
    """
    names: dict[str, None] = {}
    for col in frame.columns:
        head, sep, rest = col.partition(":")
        if not sep or not rest.startswith(PROB_PREFIX) or head.startswith(PROB_PREFIX):
            continue  # not a view column (a merged column of a class named with ':' starts with prob_)
        if head.startswith(CKPT_PREFIX) if prefix else not head.startswith(CKPT_PREFIX):
            names.setdefault(head[len(prefix):], None)
    return {n: [f"{prefix}{n}:{PROB_PREFIX}{c}" for c in classes] for n in names}


@dataclass(frozen=True)
class Candidates:
    """Where a probability file keeps each (checkpoint, view) pair's probabilities: the column of class c is
    ``template.format(checkpoint=..., view=..., **{"class": c})``. A file predicted before the pairs were
    written has only its merged columns: one candidate, ``all`` x ``all``, template ``prob_{class}``."""
    checkpoints: tuple
    views: tuple
    template: str

    def column(self, checkpoint: str, view: str, cls) -> str:
        return self.template.format(checkpoint=checkpoint, view=view, **{"class": cls})

    def columns(self, classes: list) -> list[str]:
        """Every candidate column, checkpoint-major, then view, then class."""
        return [self.column(k, v, c) for k in self.checkpoints for v in self.views for c in classes]


MERGED = Candidates(("all",), ("all",), PROB_PREFIX + "{class}")
_PAIR, _VIEW = CKPT_PREFIX + "{checkpoint}:{view}:" + PROB_PREFIX + "{class}", "{view}:" + PROB_PREFIX + "{class}"


def candidates_of(frame: pd.DataFrame, classes: list, checkpoint: str = "best") -> Candidates:
    """The candidates `frame` holds: every (checkpoint, view) pair when it has their columns (`checkpoint` names
    the only checkpoint of a file without ``@`` columns), else only its merged probabilities.

    >>> f = pd.DataFrame(columns=["id", "prob_a", "identity:prob_a", "hflip:prob_a"])
    >>> candidates_of(f, ["a"])
    Candidates(checkpoints=('best',), views=('identity', 'hflip'), template='{view}:prob_{class}')
    >>> candidates_of(f[["id", "prob_a"]], ["a"]).template
    'prob_{class}'
    """
    views = tuple(view_columns(frame, classes))
    checkpoints = tuple(view_columns(frame, classes, CKPT_PREFIX))
    for found in (Candidates(checkpoints, views, _PAIR), Candidates((checkpoint,), views, _VIEW)):
        if found.checkpoints and found.views and set(found.columns(classes)) <= set(frame.columns):
            return found
    return MERGED


def candidate_probs(frame: pd.DataFrame, classes: list, candidates: Candidates) -> np.ndarray:
    """(K checkpoints, V views, rows, C classes) probabilities of `frame`'s candidates."""
    values = frame[candidates.columns(classes)].to_numpy(dtype=np.float64)
    k, v, c = len(candidates.checkpoints), len(candidates.views), len(classes)
    return values.reshape(len(frame), k, v, c).transpose(1, 2, 0, 3)


def candidate_frame(probs: dict, views: list[str], classes: list) -> pd.DataFrame:
    """The per-view columns of ``{checkpoint: (V, N, C)}``: ``<view>:prob_<c>`` for one checkpoint,
    ``@<checkpoint>:<view>:prob_<c>`` for several (the layout :func:`candidates_of` reads back)."""
    template = _VIEW if len(probs) == 1 else _PAIR
    cols = {}
    for ckpt, per_view in probs.items():
        for i, view in enumerate(views):
            for j, cls in enumerate(classes):
                cols[template.format(checkpoint=ckpt, view=view, **{"class": cls})] = per_view[i][:, j]
    return pd.DataFrame(cols)


def stack_folds(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-fold tables (each with a `row` column) as one table in train-table row order."""
    return pd.concat(frames).sort_values("row").reset_index(drop=True)


def read_fold_probs(cfg: Config, name: str) -> tuple[list[pd.DataFrame], list]:
    """Every fold's `name` file (e.g. oof.csv, test_probs.csv) and the classes the folds were trained on."""
    frames, classes = [], None
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make train ensemble` (fold {k} is not done)")
        frame = read_table(path)
        fold_classes = read_sidecar(cfg.fold_dir(k) / "weights.safetensors")["classes"]
        if classes is not None and fold_classes != classes:
            raise ValueError(f"fold {k} was trained on classes {fold_classes}, fold 0 on {classes}; retrain")
        classes = fold_classes
        frames.append(frame)
    return frames, classes


def read_test_probs(cfg: Config) -> tuple[pd.Series, np.ndarray, list]:
    """Every fold's test_probs.csv: (the test ids, probabilities (folds, ids, classes), classes)."""
    frames, classes = read_fold_probs(cfg, "test_probs.csv")
    ids = frames[0]["id"]
    for k, f in enumerate(frames):
        if not f["id"].equals(ids):
            raise ValueError(f"fold {k}'s test predictions cover other ids than fold 0's; rerun `make ensemble`")
    return ids, np.stack([f[prob_columns(classes)].to_numpy() for f in frames]), classes
