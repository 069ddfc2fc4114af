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
from pipeline.ensemble.label_shift import shift_test
from pipeline.ensemble.steps.factors import ClassBiasStep, LogitAdjustStep, apply_log_factor
from pipeline.ensemble.steps.prior_shift import PriorShiftStep, fit_estimator, simulate, simulated_gain
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
    checkpoints: object = "listed"   # listed (average every predicted one) | auto | [names] (exactly these)
    logit_adjust: object = "off"
    class_bias: object = "off"
    tau_grid: tuple = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    merge: str = "mean"
    prior_shift: str = "auto"        # ensemble.prior_shift: auto | off | em | bbse | calibrated_em
    prior_shift_alpha: float = 0.01
    margin: float = 2.0              # ensemble.auto_margin


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
    if isinstance(settings.checkpoints, (list, tuple)):    # exactly these of the predicted ones
        unknown = [c for c in settings.checkpoints if c not in checkpoints]
        if unknown:
            raise ValueError(f"ensemble.checkpoints: {unknown} were not predicted (predicted: {list(checkpoints)})")
        chosen = tuple(checkpoints.index(c) for c in settings.checkpoints)
        return Choice("checkpoints", "on", CheckpointsStep(checkpoints, [chosen], metric),
                      CheckpointsStep(checkpoints, [every], metric), "ensemble.checkpoints", list(settings.checkpoints))
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


def _shift_evaluate(method: str, prior: tuple, test_rows: int):
    """The simulation that scores the correction, and the shift test, on the chain before it."""
    def evaluate(base, candidate, metric):
        mix = np.asarray(candidate.fitted[-1].params()["estimate"])
        raw = base.oof(factors=False)
        estimator = fit_estimator(method, raw, base.rows.y, prior)
        found = simulate(estimator, base.oof(), raw, base.rows.y, mix, test_rows, metric)
        test = base.test()
        test_raw = test if base.full.log_factor is None else apply_log_factor(test, -base.full.log_factor)
        g, p_value = shift_test(raw, test_raw.mean(axis=0))
        errors = np.asarray(found["errors"])
        return simulated_gain(found, test_rows, len(raw)), {"simulation": {
            "draws": len(errors), "rows_per_draw": test_rows, "oof_rows": len(raw), "mix": mix.tolist(),
            "gain_sd_per_draw": float(np.std(found["gains"], ddof=1)),
            "estimate_l1_error": float(errors.mean()), "estimate_l1_error_sd": float(errors.std(ddof=1)),
            "shift_l1": float(np.abs(mix - estimator.reference).sum()), "g_statistic": g, "shift_p_value": p_value},
            "_pooled": found["pooled"]}
    return evaluate


def _shift_veto(alpha: float):
    """`auto`'s further conditions: a shift was found, and the estimate's error is less than half the shift."""
    def veto(gain, extra):
        sim = extra["simulation"]
        if sim["shift_p_value"] >= alpha:
            return (f"no shift found (G-test of OOF against test predicted classes p={sim['shift_p_value']:.2g}, "
                    f"not below ensemble.prior_shift_alpha {alpha:g})")
        if sim["estimate_l1_error"] > sim["shift_l1"] / 2:
            return (f"the estimate is unreliable: on simulated test sets its error (L1 {sim['estimate_l1_error']:.3f}) "
                    f"is more than half the shift it estimates (L1 {sim['shift_l1']:.3f}); the vote is left alone")
        return None
    return veto


def shift_choice(mode: str, prior, test_rows: int, alpha: float, value=None) -> Choice:
    """The prior-shift correction for ``ensemble.prior_shift`` = `mode` (auto: calibrated EM, applied when a
    shift is found, the estimate is reliable and the simulated gain exceeds its noise; em, bbse,
    calibrated_em: forced on; off), scored by simulation at the mix it estimates, `test_rows` rows a draw."""
    method = "calibrated_em" if mode in ("auto", "off") else mode
    setting = mode if mode in ("auto", "off") else "on"
    prior = tuple(float(v) for v in prior)
    return Choice("prior_shift", setting, PriorShiftStep(method, prior), None, "ensemble.prior_shift",
                  mode if value is None else value, evaluate=_shift_evaluate(method, prior, test_rows),
                  veto=_shift_veto(alpha), gain_kind="simulated")
