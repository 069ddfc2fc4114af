"""The chain in the CV table and in ensemble.json: one row per step (its nested score, gain ± noise, applied or
not and why), the submission's chain, and the older readers' ``logit_adjust`` / ``class_bias`` entries."""

from __future__ import annotations

import numpy as np

from pipeline.ensemble.decide import Decision
from pipeline.results.cv_table import metrics_row

__all__ = ["SUBMISSION_PART", "chose_nothing", "step_part", "chain_rows", "legacy_records"]

SUBMISSION_PART = "out-of-fold, the submission's chain, nested"


def _per_fold(decision: Decision, key: str) -> str:
    """The nested fits' choices: one text when every fold chose alike, else each fold's (a; b; ...)."""
    texts = ["+".join(map(str, p[key])) for p in decision.per_fold.values()]
    return texts[0] if len(set(texts)) == 1 else "; ".join(texts)


def step_part(decision: Decision, what: str, adjusted: bool) -> str:
    """The CV table's name of a step's row; `what` is the OOF source (TTA or no TTA), `adjusted` whether the
    logit adjustment was applied before the step."""
    if decision.name == "views":
        return f"out-of-fold, TTA views chosen on the other folds ({_per_fold(decision, 'views')})"
    if decision.name == "checkpoints":
        return f"out-of-fold, {what} + checkpoints chosen on the other folds ({_per_fold(decision, 'checkpoints')})"
    if decision.name == "logit_adjust":
        taus = "/".join(f"{p['tau']:g}" for p in decision.per_fold.values())
        return f"out-of-fold, {what} + logit adjustment, tau from the other folds ({taus})"
    if decision.name == "class_bias":
        return f"out-of-fold, {what}{' + logit adjustment' if adjusted else ''} + class bias, fitted on the other folds"
    return f"out-of-fold, {what} + {decision.name.replace('_', ' ')}, fitted on the other folds"


def chose_nothing(decision: Decision) -> bool:
    """A selection step with one candidate that is also what stands without it (one view, one checkpoint, or
    the files' merged probabilities): its row would repeat the row above it."""
    return (decision.name in ("views", "checkpoints") and "candidates" not in decision.fitted
            and decision.baseline in (None, decision.fitted))


def chain_rows(decisions: list[Decision], y: np.ndarray, final_oof: np.ndarray, what: str) -> list[dict]:
    """One row per step (the step added to the steps kept before it, nested) and the submission's chain."""
    rows, adjusted = [], False
    for d in decisions:
        if chose_nothing(d):
            continue
        marks = dict(step=d.name, gain=d.gain.gain, noise=d.gain.noise, applied=d.applied, decision=d.why)
        if "_pooled" in d.extra:   # scored on simulated test sets, not on the OOF rows: a few draws pooled
            truth, without, corrected = d.extra["_pooled"]
            draws = d.extra["simulation"]["draws"]
            what = f"simulated estimated mix ({len(truth)} rows: {draws} draws' first ones pooled)"
            rows += [metrics_row(f"{what}: no correction", truth, without),
                     metrics_row(f"{what}: + prior-shift correction ({d.fitted['method']})", truth, corrected, **marks)]
        elif d.oof is not None:
            rows.append(metrics_row(step_part(d, what, adjusted), y, d.oof, **marks))
        adjusted = adjusted or (d.name == "logit_adjust" and d.applied)
    applied = ", ".join(d.name for d in decisions if d.applied) or "nothing"
    rows.append(metrics_row(SUBMISSION_PART, y, final_oof, step="submission", decision=f"applied: {applied}"))
    return rows


def legacy_records(decisions: list[Decision]) -> dict:
    """ensemble.json's ``logit_adjust``, ``class_bias`` and ``checkpoints`` entries as earlier versions wrote
    them (the ``chain`` and ``submission`` entries are the complete record)."""
    by = {d.name: d for d in decisions}
    out = {}
    if "logit_adjust" in by:
        d = by["logit_adjust"]
        out["logit_adjust"] = {"applied": d.applied, "tau": d.fitted["tau"] if d.applied else 0.0,
                               "chosen_tau": d.fitted["tau"], "grid": d.fitted["grid"], "prior": d.fitted["prior"],
                               "oof_gain_by_tau": d.fitted["oof_gain_by_tau"]}
    if "class_bias" in by:
        d = by["class_bias"]
        out["class_bias"] = {"applied": d.applied, "bias": d.fitted["bias"],
                             "after_logit_adjustment": bool(by.get("logit_adjust") and by["logit_adjust"].applied)}
    if "checkpoints" in by:
        d = by["checkpoints"]
        out["checkpoints"] = d.fitted["checkpoints"] if d.applied else (d.baseline or d.fitted)["checkpoints"]
    return out
