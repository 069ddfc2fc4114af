"""The experiment's chain as a plan of choices: which steps, in which order, with which settings.

The order: the TTA view subset, then the checkpoints (which predictions), then the logit adjustment and
the class bias (per-class factors fitted on the OOF rows). Choosing what to predict with comes first,
because every factor is fitted on those predictions; the logit adjustment before the class bias, because
the bias is the finer fit (one number per class against one tau) and refines what the adjustment leaves.
The prior-shift correction (:mod:`pipeline.ensemble.steps.prior_shift`) comes last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ensemble.decide import Choice
from pipeline.ensemble.steps.factors import ClassBiasStep, LogitAdjustStep
from pipeline.ensemble.steps.prior_shift import PriorShiftStep, simulate, simulated_gain
from pipeline.ensemble.steps.selection import CheckpointsStep, ViewsStep, view_candidates

__all__ = ["Settings", "switch", "selection_choices", "factor_choices", "shift_choice"]


def switch(value) -> str:
    """A step's setting as ``auto``, ``on`` or ``off``; true and false (older configs) mean on and off.

    >>> switch(True), switch(False), switch("auto"), switch("off")
    ('on', 'off', 'auto', 'off')
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in ("auto", "on", "off"):
        raise ValueError(f"a step's setting must be auto, on or off (or true/false), got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The settings the plan follows (from the config, or a blend's arguments)."""
    views: object = "all"            # tta.select: all | auto | [view, ...]
    checkpoints: object = "listed"   # listed (average every predicted one) | auto
    logit_adjust: object = "off"
    class_bias: object = "off"
    tau_grid: tuple = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    merge: str = "mean"


def _views_choice(settings: Settings, views: tuple, metric: str) -> Choice:
    every = ViewsStep(views, [tuple(range(len(views)))], metric, settings.merge)
    select = settings.views
    if views == ("all",):      # the files hold the merged probabilities only: nothing to choose from
        fixed = "" if select == "all" else ("the test predictions hold no per-view columns (predicted before they "
                                            "were written): rerun the predict stage to let tta.select choose")
        return Choice("views", "off", every, every, "tta.select", select, fixed)
    if select in ("all", "auto"):   # `all` still scores what `auto` would have chosen, for the record
        chosen = ViewsStep(views, view_candidates(list(views)), metric, settings.merge)
        return Choice("views", "off" if select == "all" else "auto", chosen, every, "tta.select", select)
    unknown = [v for v in select if v not in views]
    if unknown:
        raise ValueError(f"tta.select: {unknown} are not among the predicted views {list(views)} (tta.views)")
    chosen = tuple(views.index(v) for v in select)
    return Choice("views", "on", ViewsStep(views, [chosen], metric, settings.merge), every, "tta.select", list(select))


def _checkpoints_choice(settings: Settings, checkpoints: tuple, metric: str) -> Choice:
    every = tuple(range(len(checkpoints)))
    if settings.checkpoints != "auto" or len(checkpoints) == 1:
        fixed = ("only one checkpoint was predicted" if settings.checkpoints == "auto" else "")
        listed = CheckpointsStep(checkpoints, [every], metric)
        return Choice("checkpoints", "on" if len(checkpoints) > 1 else "off", listed, listed,
                      "ensemble.checkpoints", list(checkpoints) if settings.checkpoints != "auto" else "auto", fixed)
    first = (checkpoints.index("best"),) if "best" in checkpoints else (0,)
    singles = [(i,) for i in every]
    candidates = [first] + [c for c in singles if c != first] + [every]
    return Choice("checkpoints", "auto", CheckpointsStep(checkpoints, candidates, metric),
                  CheckpointsStep(checkpoints, [first], metric), "ensemble.checkpoints", "auto")


def selection_choices(settings: Settings, views: tuple, checkpoints: tuple, metric: str) -> list[Choice]:
    """The view subset and the checkpoints: which of the predictions the submission is made of."""
    return [_views_choice(settings, views, metric), _checkpoints_choice(settings, checkpoints, metric)]


def factor_choices(settings: Settings, metric: str, prior=None) -> list[Choice]:
    """The logit adjustment (`prior`: the models' effective training prior) and the class bias."""
    grid = tuple(float(t) for t in settings.tau_grid)
    prior = None if prior is None else tuple(float(v) for v in prior)
    return [Choice("logit_adjust", switch(settings.logit_adjust), LogitAdjustStep(grid, metric, prior), None,
                   "ensemble.logit_adjust", settings.logit_adjust),
            Choice("class_bias", switch(settings.class_bias), ClassBiasStep(metric), None,
                   "ensemble.class_bias", settings.class_bias)]


def shift_choice(setting: str, value, method: str, prior, test_rows: int, fixed: str = "") -> Choice:
    """The prior-shift correction by `method`, scored by simulation: the nested OOF rows drawn to the mix it
    estimated on the test set, `test_rows` at a time (:func:`pipeline.ensemble.steps.prior_shift.simulate`)."""
    prior = tuple(float(v) for v in prior)

    def evaluate(base, candidate, metric):
        mix = candidate.fitted[-1].params()["estimate"]
        found = simulate(method, base.oof(), base.oof(factors=False), base.rows.y, prior, mix, test_rows, metric)
        errors = np.asarray(found["errors"])
        shift = float(np.abs(np.asarray(mix) - np.bincount(base.rows.y, minlength=len(prior)) / len(base.rows.y)).sum())
        return simulated_gain(found), {"simulation": {
            "draws": len(errors), "rows_per_draw": test_rows, "mix": list(mix), "estimate_l1_error": float(errors.mean()),
            "estimate_l1_error_sd": float(errors.std(ddof=1)) if len(errors) > 1 else 0.0,
            "shift_l1_from_training_labels": shift}, "_pooled": found["pooled"]}

    return Choice("prior_shift", setting, PriorShiftStep(method, prior), None, "ensemble.prior_shift", value, fixed,
                  evaluate)
