"""``ensemble.json``'s ``submission`` entry: everything needed to turn the folds' test files into the submission.

The entry is complete on its own, so that a standalone script (numpy and a CSV reader) reproduces the
submission's probabilities exactly from it and ``fold_<k>/test_probs.csv``; :func:`apply_submission` is
that script, and the ensemble stage, ``make score`` and the pseudo-label stage all call it::

    for each fold k in 0 .. folds-1:                   (files[k]: fold_<k>/test_probs.csv, ids in column "id")
        for each checkpoint c in checkpoints, view v in views, class x in classes:
            p[c][v][:, x] = column(template.format(checkpoint=c, view=v, class=x))
        p_k = mean over c of merge over v of p[c][v]   (merge: mean | geometric_mean = logit_mean | max,
                                                        see pipeline.ensemble.steps.selection.merge_views)
        p_k = softmax(log(max(p_k, 1e-15)) + log_factor)   (one number per class: the applied steps' factors)
    scores = vote(p_0 .. p_{F-1}, voting)          (pipeline.ensemble.voting.vote_scores; hard: vote shares)
    labels = classes[vote(...)]                    (hard: ties go to the soft favourite)

``log_factor`` is the sum of the applied per-class steps' own ``log_factor`` (logit adjustment
``-tau * log(prior)``, class bias ``b``, the prior-shift correction), each recorded in the chain entries
with what it was fitted from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.ensemble.steps.factors import apply_log_factor
from pipeline.ensemble.steps.selection import merge_views
from pipeline.ensemble.voting import vote, vote_scores

__all__ = ["RECORD_FORMAT", "submission_entry", "apply_submission"]

RECORD_FORMAT = "kfold-tta-pipeline/ensemble-2"


def submission_entry(classes: list, folds: int, voting: str, candidates, views: list, merge: str,
                     checkpoints: list, log_factor) -> dict:
    """The ``submission`` entry of ensemble.json (full precision: the submission is recomputed from it)."""
    return {"format": RECORD_FORMAT, "files": [f"fold_{k}/test_probs.csv" for k in range(folds)],
            "id_column": "id", "classes": [str(c) for c in classes], "template": candidates.template,
            "views": list(views), "merge": merge, "checkpoints": list(checkpoints),
            "log_factor": np.asarray(log_factor, dtype=np.float64).tolist(), "voting": voting,
            "probability_floor": 1e-15}


def _fold_probs(frame: pd.DataFrame, entry: dict) -> np.ndarray:
    """One fold's (T, C) probabilities: the chosen views merged, the chosen checkpoints averaged."""
    columns = lambda c, v: [entry["template"].format(checkpoint=c, view=v, **{"class": x})  # noqa: E731
                            for x in entry["classes"]]
    missing = [col for c in entry["checkpoints"] for v in entry["views"] for col in columns(c, v)
               if col not in frame.columns]
    if missing:
        raise ValueError(f"the test probabilities lack columns {missing[:5]} that ensemble.json's submission "
                         "reads: they were predicted again with other views or checkpoints; rerun `make ensemble`")
    per_checkpoint = [merge_views(np.stack([frame[columns(c, v)].to_numpy(dtype=np.float64) for v in entry["views"]]),
                                  entry["merge"], axis=0) for c in entry["checkpoints"]]
    return np.mean(per_checkpoint, axis=0)


def apply_submission(entry: dict, frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(every fold's final (F, T, C) probabilities, the vote's (T, C) scores, its (T,) class indices) from the
    ``submission`` entry and the folds' test_probs.csv frames (in fold order)."""
    if len(frames) != len(entry["files"]):
        raise ValueError(f"ensemble.json's submission votes {len(entry['files'])} folds, got {len(frames)} test files")
    probs = np.stack([apply_log_factor(_fold_probs(f, entry), entry["log_factor"]) for f in frames])
    return probs, vote_scores(probs, entry["voting"]), vote(probs, entry["voting"])
