"""The ensemble stage's prior-shift step: the folds' training priors, the test-mix estimates and the decision
(``ensemble.prior_shift``), the CV table's notes and simulated-shift rows, and the `make score` rows.

The maths is in :mod:`pipeline.ensemble.label_shift`; nothing here reads a test label.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import Config
from pipeline.results.cv_table import metrics_row
from pipeline.ensemble.label_shift import (bbse_prior, em_prior, reversed_mix, reweight, shift_test,
                                          simulated_mix)
from pipeline.ensemble.voting import class_priors
from pipeline.train.prior import TRAIN_PRIOR_FILE, read_train_prior

__all__ = ["PRIOR_SHIFT_MODES", "fold_train_priors", "model_prior", "shift_record", "apply_shift", "shift_notes",
           "simulated_shift_rows", "shift_score_rows"]

PRIOR_SHIFT_MODES = ("off", "auto", "em", "bbse")
_SIMULATION_SEED = 0


def fold_train_priors(cfg: Config, classes: list, oof_y: np.ndarray, oof_folds: np.ndarray, log=print) -> dict:
    """``{fold: the prior its model learned}`` from each fold's train_prior.json. A fold trained before
    the file existed falls back to its training rows' raw label frequencies (the other folds' OOF
    labels), with a note: oversampling or class weights are then not divided out."""
    priors = {}
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / TRAIN_PRIOR_FILE
        if path.is_file():
            priors[k] = np.asarray(read_train_prior(path, classes)["prior"], dtype=np.float64)
        else:
            log(f"[ensemble] {path} is missing (trained before the effective prior was recorded): fold {k}'s "
                "prior is its training rows' raw label counts; retrain to divide out sampling and class weights")
            priors[k] = class_priors(oof_y[oof_folds != k] if (oof_folds != k).any() else oof_y, len(classes))
    return priors


def model_prior(priors: dict) -> np.ndarray:
    """The prior of the folds' vote: the mean of the folds' priors (equal weights, as in the vote)."""
    mean = np.mean(np.stack(list(priors.values())), axis=0)
    return mean / mean.sum()


def shift_record(mode: str, alpha: float, oof_probs, oof_y, test_probs, priors: dict) -> dict:
    """Estimate the test mix from the folds' test probabilities (F, N, C) alone, test the shift, decide.

    ``auto`` applies the EM estimate only when the G-test of OOF against test predicted classes has
    p < `alpha`; ``em`` / ``bbse`` always apply that estimate; ``off`` nothing (the estimates are
    still reported). The record goes into ensemble.json; :func:`apply_shift` replays it.
    """
    if mode not in PRIOR_SHIFT_MODES:
        raise ValueError(f"ensemble.prior_shift: {mode!r} is not one of: {', '.join(PRIOR_SHIFT_MODES)}")
    voted = np.asarray(test_probs, dtype=np.float64).mean(axis=0)   # EM needs probabilities: the soft vote
    prior = model_prior(priors)
    em, _ = em_prior(voted, prior)
    estimates = {"em": em, "bbse": bbse_prior(oof_probs, oof_y, voted)}
    g, p_value = shift_test(oof_probs, voted)
    method = {"off": None, "em": "em", "bbse": "bbse", "auto": "em" if p_value < alpha else None}[mode]
    return {"mode": mode, "alpha": alpha, "applied": method is not None, "method": method,
            "g_statistic": round(g, 4), "p_value": p_value,
            "training_labels": class_priors(oof_y, len(prior)).round(6).tolist(),
            # full precision: `score` re-applies them, and a floored share (1e-6) must not round to 0
            "model_prior": prior.tolist(),
            "estimates": {k: v.tolist() for k, v in estimates.items()}}


def apply_shift(probs, record: dict) -> np.ndarray:
    """`probs` moved from the model prior to the applied estimate (unchanged when none was applied)."""
    if not record or not record.get("applied"):
        return np.asarray(probs, dtype=np.float64)
    return reweight(probs, record["model_prior"], record["estimates"][record["method"]])


def _fmt(prior) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in prior) + "]"


def shift_notes(record: dict, classes: list, tau: float) -> list[str]:
    """The CV table's notes: the priors, the shift test and what was applied, in which order."""
    est = record["estimates"]
    decision = (f"applied the {record['method'].upper()} correction p * q / prior" if record["applied"]
                else "left the predictions unchanged")
    order = (f" Logit adjustment (tau={tau:g}) divides by the model prior after it; both are per-class "
             "factors, so the order does not change the result, and the test mix is estimated on the "
             "unadjusted probabilities." if tau else "")
    return [f"Class priors ({', '.join(map(str, classes))}): training labels {_fmt(record['training_labels'])}; "
            f"model (effective, what sampling, class weights and smoothing made it learn) "
            f"{_fmt(record['model_prior'])}; test set estimated by EM {_fmt(est['em'])}, by BBSE "
            f"{_fmt(est['bbse'])}.",
            f"Prior shift: G-test of the OOF against the test predicted classes G={record['g_statistic']:.1f}, "
            f"p={record['p_value']:.2g} (alpha {record['alpha']:g}); ensemble.prior_shift={record['mode']} "
            f"{decision}.{order}"]


def _l1(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def simulated_shift_rows(probs, y, prior, alpha: float) -> list[dict]:
    """CV rows: the OOF rows resampled to a balanced mix, to the reversed mix and to their own mix (no
    shift); each scored as it is, after the EM correction (estimated from the resample's predictions
    alone, the labels only draw the resample and score it), and after ``auto``'s choice."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    counts = np.bincount(y, minlength=probs.shape[1])
    mixes = {"balanced": np.where(counts > 0, 1.0, 0.0), "reversed": reversed_mix(counts), "training": counts}
    rows = []
    for name, mix in mixes.items():
        mix = mix / mix.sum()
        idx = simulated_mix(y, mix, len(y), _SIMULATION_SEED)
        p, t = probs[idx], y[idx]
        em, _ = em_prior(p, prior)
        corrected = reweight(p, prior, em)
        _, p_value = shift_test(probs, p)
        auto = corrected if p_value < alpha else p
        what = f"simulated {name} mix"
        rows += [metrics_row(f"{what}: no correction (model prior off by L1 {_l1(prior, mix):.3f})", t, p,
                             prior_l1=_l1(prior, mix)),
                 metrics_row(f"{what}: EM correction (estimated prior off by L1 {_l1(em, mix):.3f})", t, corrected,
                             prior_l1=_l1(em, mix)),
                 metrics_row(f"{what}: auto ({'applied' if p_value < alpha else 'unchanged'}, p={p_value:.2g})",
                             t, auto, shift_p_value=p_value)]
    return rows


def shift_score_rows(y, probs, record: dict, voting: str, vote_metrics, submission: bool) -> list[dict]:
    """`make score` rows of the vote after each estimate's correction (the plain vote has its own rows);
    the applied one is marked ``(submission)`` when `submission`."""
    rows = []
    for method, estimate in (record or {}).get("estimates", {}).items():
        applied = record.get("applied") and record.get("method") == method
        mark = " (submission)" if applied and submission else (" (applied)" if applied else "")
        shifted = reweight(probs, record["model_prior"], estimate)
        rows.append({"model": f"{voting} vote + prior-shift correction ({method}){mark}",
                     **vote_metrics(y, shifted, voting)})
    return rows
