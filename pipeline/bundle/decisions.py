"""The bundle's ``decisions.json``: what happens to the folds' probabilities between the models and the vote.

The one reader of ensemble.json's post-processing record is :func:`decisions_from_ensemble`; the one reader
of ``steps`` in the bundle is the template's ``apply_decisions``. When the ensemble's record changes, these
two functions change and nothing else. The format (``pipeline-bundle-decisions/1``)::

    {
      "format": "pipeline-bundle-decisions/1",
      "tta": {"views": ["identity", "hflip"], "merge": "mean"},   # canonical view names, in the predict order
      "checkpoints": ["best"],                                    # averaged within each fold (and seed)
      "steps": [                                                  # applied in this order to every fold's
        {"step": "prior_shift", "mode": "auto", "alpha": 0.01,    #   (F, N, C) probabilities
         "model_prior": [...]},                                   # re-estimated on the test predictions
        {"step": "logit_adjust", "tau": 0.5, "prior": [...]},     # p / prior**tau, renormalised
        {"step": "class_bias", "bias": [...]}                     # p * exp(bias), renormalised
      ],
      "voting": "soft"                                            # then the vote over the folds
    }

A step is listed only when the ensemble applies it; ``prior_shift`` is listed whenever its mode is not
``off``, because ``auto`` decides on the test predictions (the bundle decides again on the hidden test set)
and ``em`` / ``bbse`` estimate the test mix from them. The prior-shift step reads the out-of-fold
probabilities the bundle ships in ``oof.safetensors`` (BBSE's confusion matrix, the shift test).
"""

from __future__ import annotations

from pipeline.bundle.predict_template import DECISIONS_FORMAT, STEPS

__all__ = ["decisions_from_ensemble", "DECISIONS_FORMAT", "STEPS", "needs_oof"]


def decisions_from_ensemble(record: dict, tta: dict) -> dict:
    """decisions.json from ensemble.json's `record` and the `tta` the folds were predicted with
    (``{"views": canonical names, "merge": mode}``; the config's ``tta`` until the ensemble records its own).

    >>> record = {"checkpoints": ["best"], "voting": "soft", "prior_shift": {"mode": "off"},
    ...           "logit_adjust": {"applied": True, "tau": 0.5, "prior": [0.75, 0.25]},
    ...           "class_bias": {"applied": False, "bias": [0.0, 0.3]}}
    >>> decisions_from_ensemble(record, {"views": ["identity"], "merge": "mean"})["steps"]
    [{'step': 'logit_adjust', 'tau': 0.5, 'prior': [0.75, 0.25]}]
    """
    steps = []
    shift = record.get("prior_shift") or {"mode": "off"}
    if shift["mode"] != "off":
        steps.append({"step": "prior_shift", "mode": shift["mode"], "alpha": shift["alpha"],
                      "model_prior": shift["model_prior"]})
    adjust = record["logit_adjust"]
    if adjust["applied"] and adjust["tau"]:
        steps.append({"step": "logit_adjust", "tau": adjust["tau"], "prior": adjust["prior"]})
    if record["class_bias"]["applied"]:
        steps.append({"step": "class_bias", "bias": record["class_bias"]["bias"]})
    return {"format": DECISIONS_FORMAT, "tta": {"views": list(tta["views"]), "merge": tta["merge"]},
            "checkpoints": list(record["checkpoints"]), "steps": steps, "voting": record["voting"]}


def needs_oof(decisions: dict) -> bool:
    """Whether the bundle must carry the out-of-fold probabilities (the prior-shift step reads them)."""
    return any(step["step"] == "prior_shift" for step in decisions["steps"])
