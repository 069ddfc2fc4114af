"""The bundle's ``decisions.json`` and ``oof.safetensors``: what happens to the folds' probabilities between the
models and the vote, read from ensemble.json (its ``submission`` entry and its ``chain``).

The one writer is :func:`decisions_from_ensemble`, the one reader the template's ``submission_log_factor``
and ``fold_probabilities``. The format (``pipeline-bundle-decisions/2``)::

    {
      "format": "pipeline-bundle-decisions/2",
      "tta": {"views": ["identity", "hflip"], "merge": "mean"},   # the submission's views (a budget: a subset)
      "checkpoints": ["best"],                                    # averaged within each fold (and seed)
      "factors": [[...], [...]],     # each applied OOF-fitted per-class log factor, in the chain's order
                                     # (logit adjustment, class bias): fixed, whatever the test set
      "prior_shift": null | {        # fitted on the TEST predictions: the bundle fits it again on its own
        "setting": "on" | "auto", "method": "em" | "bbse" | "calibrated_em",
        "reference_prior": [...],    # the prior the (calibrated) posteriors assume
        "full_calibration": {...},   # calibrated_em: temperature and bias fitted on every OOF row
        "nested_calibration": {...}, # auto: the same fitted on the nested OOF rows the simulation draws from
        "alpha": 0.01, "margin": 2.0, "metric": "f1_macro", "draws": 30, "seed": 0
      },
      "voting": "soft"
    }

With no budget, ``factors`` plus the ensemble's own prior-shift factor (when it applied one) add up to the
submission's ``log_factor``: :func:`decisions_from_ensemble` refuses a record where they do not. The prior
shift's arrays go to ``oof.safetensors``: the labels, ``full`` (the chosen OOF predictions, for BBSE) and,
for ``auto``, ``nested`` / ``decided`` (the chain's nested OOF rows without / with its factors), from which
the ensemble's simulation drew its test sets.
"""

from __future__ import annotations

import numpy as np

from pipeline.bundle.predict_template import DECISIONS_FORMAT
from pipeline.bundle.sources import BundleRefused
from pipeline.ensemble.steps.factors import apply_log_factor
from pipeline.ensemble.steps.prior_shift import DRAWS, SEED, fit_estimator

__all__ = ["decisions_from_ensemble", "DECISIONS_FORMAT", "shift_arrays", "needs_oof"]


def _shift_entry(record: dict) -> dict | None:
    entries = [d for d in record["chain"] if d["step"] == "prior_shift"]
    return entries[0] if entries else None


def _prior_shift(record: dict, margin: float, nested_calibration: dict | None) -> dict | None:
    entry = _shift_entry(record)
    if entry is None or entry["setting"] == "off":
        return None
    fitted = entry["fitted"]
    return {"setting": entry["setting"], "method": fitted["method"], "reference_prior": fitted["reference_prior"],
            "full_calibration": fitted.get("calibration"), "nested_calibration": nested_calibration,
            "alpha": record["prior_shift"]["alpha"], "margin": margin, "metric": record["metric"],
            "draws": DRAWS, "seed": SEED}


def decisions_from_ensemble(record: dict, margin: float, nested_calibration: dict | None = None) -> dict:
    """decisions.json from ensemble.json's `record`; `margin` is ``ensemble.auto_margin`` and
    `nested_calibration` the calibration the ``auto`` simulation refits (:func:`shift_arrays`).

    >>> chain = [{"step": "views", "applied": False, "fitted": {"views": ["identity"]}},
    ...          {"step": "logit_adjust", "applied": True, "fitted": {"log_factor": [0.5, -0.5]}},
    ...          {"step": "class_bias", "applied": False, "fitted": {"log_factor": [0.0, 9.0]}},
    ...          {"step": "prior_shift", "setting": "off", "applied": False, "fitted": {}}]
    >>> entry = {"views": ["identity"], "merge": "mean", "checkpoints": ["best"], "voting": "soft",
    ...          "log_factor": [0.5, -0.5]}
    >>> d = decisions_from_ensemble({"chain": chain, "submission": entry}, 2.0)
    >>> d["factors"], d["prior_shift"]
    ([[0.5, -0.5]], None)
    """
    entry = record["submission"]
    factors = [d["fitted"]["log_factor"] for d in record["chain"]
               if d["applied"] and d["step"] != "prior_shift" and "log_factor" in d["fitted"]]
    shift = _shift_entry(record)
    total = sum((np.asarray(f, dtype=np.float64) for f in factors), np.zeros(len(entry["log_factor"])))
    if shift is not None and shift["applied"]:
        total = total + np.asarray(shift["fitted"]["log_factor"], dtype=np.float64)
    if not np.allclose(total, entry["log_factor"], rtol=0.0, atol=1e-12):
        raise BundleRefused("ensemble.json: the applied steps' factors do not add up to the submission's "
                            "log_factor (a record edited or from another version): run `make ensemble`")
    return {"format": DECISIONS_FORMAT, "tta": {"views": list(entry["views"]), "merge": entry["merge"]},
            "checkpoints": list(entry["checkpoints"]), "factors": factors,
            "prior_shift": _prior_shift(record, margin, nested_calibration), "voting": entry["voting"]}


def needs_oof(decisions: dict) -> bool:
    """Whether the bundle must carry oof.safetensors (``auto`` simulates on it, BBSE inverts its confusion)."""
    shift = decisions["prior_shift"]
    return shift is not None and (shift["setting"] == "auto" or shift["method"] == "bbse")


def shift_arrays(before_shift, y, method: str, prior) -> tuple[dict, dict | None]:
    """oof.safetensors' arrays from the chain the prior shift was decided after (a
    :class:`pipeline.ensemble.chain.Nested`): the labels, the chosen OOF predictions as the models gave them
    (``full``), the nested rows without and with the chain's factors; and the calibration the ``auto``
    simulation fits on the nested rows (None unless `method` is calibrated_em)."""
    full = before_shift.full
    raw_full = full.probs if full.log_factor is None else apply_log_factor(full.probs, -np.asarray(full.log_factor))
    nested = before_shift.oof(factors=False)
    arrays = {"labels": np.asarray(y, dtype=np.int64), "full": raw_full, "nested": nested,
              "decided": before_shift.oof()}
    estimator = fit_estimator(method, nested, y, prior)
    calibration = estimator.params().get("calibration")
    return arrays, calibration
