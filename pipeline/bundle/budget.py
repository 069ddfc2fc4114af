"""Which folds and views a bundle keeps under a time limit, from timings measured at build time.

The time of a run on `n` images is ``n / 1000 * (decode + sum over kept folds and views of fold_view)``
plus each kept fold's load time. When the whole ensemble fits, everything is kept: the bundle is the
ensemble. Otherwise:

* folds first: as many as fit (the cheapest). Out-of-fold rows cannot price a dropped fold (each has one
  fold's prediction), yet the vote of several folds is usually what an ensemble gains most from, far more
  than its TTA views (the demo's numbers are in the docs), so a fold goes only when even its cheapest view
  alone does not fit with it;
* then, among the submission's views (those the ensemble's chain chose: the candidates), the non-empty
  subset whose merge (``tta.merge``, each of the submission's checkpoints merged, then averaged, as the
  ensemble does) has the best out-of-fold estimate among the subsets that fit with those folds.

The estimate is nested: each fold's rows are scored with the subset chosen on the *other* folds' rows,
so the number printed is what the choosing earns on rows it did not see; the loss printed is the
out-of-fold score of every view minus it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from pipeline.ensemble.nested import apply_per_fold, fit_per_fold
from pipeline.ensemble.steps.selection import merge_views
from pipeline.metrics import metric_gain, metric_value

__all__ = ["Timing", "Selection", "BudgetError", "estimated_seconds", "select_within_budget", "merged_views"]


class BudgetError(ValueError):
    """Not even one fold with one view fits the time budget."""


@dataclass(frozen=True)
class Timing:
    """Seconds measured at build time: per 1,000 images to decode and normalise (`decode`), per 1,000
    images for each fold's models on each view (`fold_view[fold][view]`), and to load each fold (`load`)."""

    decode: float
    fold_view: dict
    load: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict) -> "Timing":
        """From bundle.json's ``timing`` (JSON keys are text: folds become integers again)."""
        return cls(record["decode_per_1000"], {int(k): v for k, v in record["fold_view_per_1000"].items()},
                   {int(k): v for k, v in record["load"].items()})


def estimated_seconds(timing: Timing, folds, views, n_images: int) -> float:
    """The time of `folds` x `views` on `n_images` images.

    >>> t = Timing(decode=1.0, fold_view={0: {"identity": 2.0, "hflip": 2.0}}, load={0: 0.5})
    >>> estimated_seconds(t, [0], ["identity", "hflip"], 2000)
    10.5
    """
    per_1000 = timing.decode + sum(timing.fold_view[k][v] for k in folds for v in views)
    return n_images / 1000 * per_1000 + sum(timing.load.get(k, 0.0) for k in folds)


@dataclass(frozen=True)
class Selection:
    folds: list
    views: list
    seconds: float             # estimated for the images asked about
    all_folds: list
    all_views: list
    full_seconds: float        # the whole ensemble
    metric: str
    estimate: float | None     # nested out-of-fold `metric` of the kept views (None: nothing dropped)
    full_estimate: float | None

    @property
    def dropped_folds(self) -> list:
        return [k for k in self.all_folds if k not in self.folds]

    @property
    def dropped_views(self) -> list:
        return [v for v in self.all_views if v not in self.views]

    def describe(self, budget: float, n_images: int) -> list[str]:
        """What was kept and dropped, and what the out-of-fold estimate loses, as printed lines."""
        head = (f"budget {budget:g} s for {n_images} images: the whole ensemble ({len(self.all_folds)} folds x "
                f"{len(self.all_views)} views) needs about {self.full_seconds:.0f} s")
        if not self.dropped_folds and not self.dropped_views:
            return [head + "; everything kept"]
        dropped = ([f"folds {', '.join(map(str, self.dropped_folds))}"] if self.dropped_folds else []) + \
                  ([f"views {', '.join(self.dropped_views)}"] if self.dropped_views else [])
        lines = [head, f"kept folds {', '.join(map(str, self.folds))} and views {', '.join(self.views)} "
                       f"(about {self.seconds:.0f} s); dropped {' and '.join(dropped)}"]
        if self.dropped_views:
            lines.append(f"nested out-of-fold {self.metric}: {self.estimate:.4f} with the kept views, "
                         f"{self.full_estimate:.4f} with every view ({self.estimate - self.full_estimate:+.4f})")
        if self.dropped_folds:
            lines.append(f"out-of-fold rows cannot price the {len(self.dropped_folds)} dropped fold(s) (each row has "
                         "one fold's prediction): the vote loses their averaging, unmeasured here")
        return lines


def merged_views(views: dict, names, merge: str) -> np.ndarray:
    """The (N, C) probabilities of the views `names` of ``{view: (K, N, C)}``: per checkpoint the views merged,
    then the checkpoints averaged, as the ensemble's submission merges them."""
    return merge_views(np.stack([views[n] for n in names], axis=1), merge, axis=1).mean(axis=0)


def _view_subsets(views: list) -> list[list]:
    """Every non-empty subset of `views`, in their order, smallest first (ties: the earlier views)."""
    return [[v for v in views if v in chosen] for size in range(1, len(views) + 1)
            for chosen in combinations(views, size)]


def _cheapest_folds(timing: Timing, views: list, m: int) -> list:
    order = sorted(timing.fold_view, key=lambda k: (sum(timing.fold_view[k][v] for v in views), k))
    return sorted(order[:m])


def _best(subsets: list, merged: dict, y, rows, metric: str) -> tuple:
    """The subset whose merged rows `rows` score best (ties: the fewer views, then the earlier)."""
    return max(subsets, key=lambda s: (metric_gain(metric, y[rows], merged[tuple(s)][rows]), -len(s)))


def select_within_budget(timing: Timing, oof, budget: float, n_images: int, merge: str, metric: str) -> Selection:
    """The folds and views to keep so that `n_images` take at most `budget` seconds (see the module's rules).

    `oof` is the out-of-fold table (:class:`pipeline.bundle.sources.OofViews`) of the submission's views: their
    probabilities give the views' nested estimate. Raises BudgetError when one fold with one view does not fit.
    """
    all_folds, all_views = sorted(timing.fold_view), list(oof.views)
    full = estimated_seconds(timing, all_folds, all_views, n_images)
    if full <= budget:
        return Selection(all_folds, all_views, full, all_folds, all_views, full, metric, None, None)
    subsets = _view_subsets(all_views)
    for m in range(len(all_folds), 0, -1):
        folds = _cheapest_folds(timing, all_views, m)
        fitting = [s for s in subsets if estimated_seconds(timing, folds, s, n_images) <= budget]
        if fitting:
            break
    else:
        least = min(estimated_seconds(timing, _cheapest_folds(timing, [v], 1), [v], n_images) for v in all_views)
        raise BudgetError(f"the budget of {budget:g} s for {n_images} images is too small: even one fold with one "
                          f"view needs about {least:.0f} s here (decoding {timing.decode:.2f} s per 1,000 "
                          "images included); raise --budget, or time a faster --device / --batch-size")
    merged = {tuple(s): merged_views(oof.views, s, merge) for s in fitting + [all_views]}
    everything = np.ones(len(oof.y), dtype=bool)
    chosen = _best(fitting, merged, oof.y, everything, metric)
    per_fold = fit_per_fold(oof.folds, lambda rest: _best(fitting, merged, oof.y, rest, metric))
    nested = apply_per_fold(oof.folds, per_fold, lambda s, held: merged[tuple(s)][held])
    return Selection(folds, chosen, estimated_seconds(timing, folds, chosen, n_images), all_folds, all_views, full,
                     metric, metric_value(metric, oof.y, nested), metric_value(metric, oof.y, merged[tuple(all_views)]))
