"""Which predictions the submission is made of: a subset of the TTA views, a subset of the checkpoints.

The predict stage writes every candidate: each (checkpoint, view) pair's probabilities for the OOF and
the test rows (:func:`pipeline.predict.probs.candidate_probs`), so they enter the chain as
(..., K checkpoints, V views, rows, classes). :class:`ViewsStep` merges a subset of the views
(``tta.merge``), :class:`CheckpointsStep` then averages a subset of the checkpoints. Each is fitted by
choosing, among its candidate subsets, the one with the best competition metric on the rows it is given
(ties: the earlier candidate, so the listed order says what wins a tie).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.metrics import metric_gain

__all__ = ["MERGES", "merge_views", "view_candidates", "Pick", "ViewsStep", "CheckpointsStep"]

MERGES = ("mean", "geometric_mean", "max", "logit_mean")   # = pipeline.predict.tta.MERGE_MODES
_FLOOR = 1e-15


def merge_views(probs, mode: str = "mean", axis: int = -3) -> np.ndarray:
    """The views' probabilities merged along `axis` as ``tta.merge`` merges them at prediction time, from
    probabilities: ``mean``; ``geometric_mean`` and ``logit_mean`` (equal: a view's logits and its
    log-probabilities differ by a per-row constant) the softmax of the mean log-probability; ``max`` the
    per-class maximum, renormalised.

    >>> p = np.array([[[0.8, 0.2]], [[0.2, 0.8]]])          # 2 views, 1 row
    >>> merge_views(p, "mean")
    array([[0.5, 0.5]])
    >>> merge_views(np.array([[[0.9, 0.1]], [[0.5, 0.5]]]), "geometric_mean").round(3)   # sqrt(.45):sqrt(.05)
    array([[0.75, 0.25]])
    """
    p = np.asarray(probs, dtype=np.float64)
    if mode == "mean":
        return p.mean(axis=axis)
    if mode in ("geometric_mean", "logit_mean"):
        logs = np.log(np.maximum(p, _FLOOR)).mean(axis=axis)
        e = np.exp(logs - logs.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if mode == "max":
        top = p.max(axis=axis)
        return top / top.sum(axis=-1, keepdims=True)
    raise ValueError(f"tta.merge: unknown merge mode {mode!r}; valid modes: {', '.join(MERGES)}")


def view_candidates(views: list[str]) -> list[tuple[int, ...]]:
    """`tta.select: auto`'s candidate subsets of `views`: all of them, the identity alone, and every subset
    that leaves one view out (each once, in that order).

    >>> view_candidates(["identity", "hflip", "scale_0.9"])
    [(0, 1, 2), (0,), (1, 2), (0, 2), (0, 1)]
    >>> view_candidates(["identity", "hflip"])
    [(0, 1), (0,), (1,)]
    """
    every = tuple(range(len(views)))
    found = [every]
    if "identity" in views:
        found.append((views.index("identity"),))
    if len(views) > 1:
        found += [tuple(i for i in every if i != left) for left in every]
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Pick:
    """A fitted selection: the chosen `names` (positions `index` on the axis -3) merged by `merge` (the views)
    or averaged (the checkpoints); `scores` holds each candidate's metric on the rows it was fitted on."""
    what: str
    names: tuple
    index: tuple
    merge: str = "mean"
    scores: tuple = ()

    def transform(self, probs: np.ndarray) -> np.ndarray:
        chosen = np.take(np.asarray(probs, dtype=np.float64), list(self.index), axis=-3)
        return merge_views(chosen, self.merge if self.what == "views" else "mean", axis=-3)

    def params(self) -> dict:
        out = {self.what: list(self.names)}
        if self.what == "views":
            out["merge"] = self.merge
        if self.scores:
            out["candidates"] = [{"subset": list(n), "oof_score": s} for n, s in self.scores]
        return out


@dataclass(frozen=True)
class _Select:
    """Choose among `candidates` (position tuples into `names`) by `metric` on the rows it is fitted on."""
    what: str
    names: tuple
    candidates: tuple
    metric: str
    merge: str = "mean"

    @property
    def name(self) -> str:
        return self.what

    def _pick(self, index: tuple, scores: tuple = ()) -> Pick:
        return Pick(self.what, tuple(self.names[i] for i in index), tuple(index), self.merge, scores)

    def fit(self, rows) -> Pick:
        if len(self.candidates) == 1:
            return self._pick(self.candidates[0])
        scored = [(c, metric_gain(self.metric, rows.y, self._collapse(self._pick(c).transform(rows.probs))))
                  for c in self.candidates]
        best = max(score for _, score in scored)
        chosen = next(c for c, score in scored if score >= best - 1e-12)
        return self._pick(chosen, tuple((tuple(self.names[i] for i in c), s) for c, s in scored))

    def _collapse(self, probs: np.ndarray) -> np.ndarray:
        """What a candidate is scored on: (N, C), the checkpoints averaged when the views are chosen first."""
        return probs.mean(axis=-3) if probs.ndim > 2 else probs


def ViewsStep(views, candidates, metric: str, merge: str = "mean") -> _Select:
    """The TTA view subset: on (..., K, V, N, C) probabilities, the chosen views merged → (..., K, N, C)."""
    if merge not in MERGES:
        raise ValueError(f"tta.merge: unknown merge mode {merge!r}; valid modes: {', '.join(MERGES)}")
    return _Select("views", tuple(views), tuple(tuple(c) for c in candidates), metric, merge)


def CheckpointsStep(checkpoints, candidates, metric: str) -> _Select:
    """The checkpoints: on (..., K, N, C) probabilities, the chosen checkpoints averaged → (..., N, C)."""
    return _Select("checkpoints", tuple(checkpoints), tuple(tuple(c) for c in candidates), metric)
