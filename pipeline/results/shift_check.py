"""The prior shift in the results: the folds' training priors, ensemble.json's ``prior_shift`` entry (every
estimator's estimate and correction, the shift test, what the chain decided), the CV table's notes and
simulated-mix rows, and the `make score` rows.

The decision is the chain's (:mod:`pipeline.ensemble.steps.prior_shift`, :func:`pipeline.ensemble.plan.shift_choice`);
the maths is in :mod:`pipeline.ensemble.label_shift`. Nothing here reads a test label.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import Config
from pipeline.ensemble.decide import Decision
from pipeline.ensemble.label_shift import reversed_mix, reweight, shift_test, simulated_mix
from pipeline.ensemble.steps.factors import apply_log_factor
from pipeline.ensemble.steps.prior_shift import METHODS, Estimator, fit_estimator
from pipeline.ensemble.voting import class_priors
from pipeline.results.cv_table import metrics_row
from pipeline.train.prior import TRAIN_PRIOR_FILE, read_train_prior

__all__ = ["PRIOR_SHIFT_MODES", "fold_train_priors", "model_prior", "shift_record", "shift_notes",
           "simulated_shift_rows", "shift_score_rows"]

PRIOR_SHIFT_MODES = ("off", "auto", *METHODS)
_SIMULATION_SEED = 0
_NAMES = {"em": "EM", "bbse": "BBSE", "calibrated_em": "calibrated EM (BCTS, then EM)"}


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
            log(f"{path} is missing (trained before the effective prior was recorded): fold {k}'s prior is its "
                "training rows' raw label counts; retrain to divide out sampling and class weights")
            priors[k] = class_priors(oof_y[oof_folds != k] if (oof_folds != k).any() else oof_y, len(classes))
    return priors


def model_prior(priors: dict) -> np.ndarray:
    """The prior of the folds' vote: the mean of the folds' priors (equal weights, as in the vote)."""
    mean = np.mean(np.stack(list(priors.values())), axis=0)
    return mean / mean.sum()


def shift_record(decision: Decision, alpha: float, oof_probs, oof_y, test_probs, prior) -> dict:
    """ensemble.json's ``prior_shift`` entry: the chain's decision (``applied``, ``method``, ``why``, its
    simulation), the shift test, and every estimator's estimate and per-class ``log_factor`` from the OOF
    rows (N, C) and every fold's test rows (F, T, C) as the chosen views and checkpoints give them.
    Full precision: `make score` re-applies them (a floored share of 1e-6 must not round to 0)."""
    prior = np.asarray(prior, dtype=np.float64)
    estimators = {m: fit_estimator(m, oof_probs, oof_y, prior) for m in METHODS}
    estimates = {m: e.estimate(test_probs) for m, e in estimators.items()}
    sim = decision.extra.get("simulation", {})
    return {"mode": decision.value, "alpha": alpha, "applied": decision.applied,
            "method": decision.fitted["method"] if decision.applied else None, "why": decision.why,
            "g_statistic": sim.get("g_statistic"), "p_value": sim.get("shift_p_value"),
            "training_labels": class_priors(oof_y, len(prior)).tolist(), "model_prior": prior.tolist(),
            "estimates": {m: q.tolist() for m, q in estimates.items()},
            "log_factors": {m: estimators[m].log_factor(q).tolist() for m, q in estimates.items()},
            "calibration": estimators["calibrated_em"].params()["calibration"], "simulation": sim}


def _fmt(prior) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in prior) + "]"


def shift_notes(record: dict, classes: list) -> list[str]:
    """The CV table's notes: the priors, the estimates, the shift test and what the chain decided."""
    est, sim = record["estimates"], record.get("simulation") or {}
    cal = record["calibration"]
    method = _NAMES[record.get("method") or "calibrated_em"]
    error = (f" On {sim['draws']} simulated test sets at the estimated mix the {method} estimate is off by L1 "
             f"{sim['estimate_l1_error']:.3f} (sd {sim['estimate_l1_error_sd']:.3f}) against a shift of "
             f"{sim['shift_l1']:.3f}." if sim else "")
    return [f"Class priors ({', '.join(map(str, classes))}): training labels {_fmt(record['training_labels'])}; "
            f"model (effective, what sampling, class weights and smoothing made it learn) "
            f"{_fmt(record['model_prior'])}; test set estimated by EM {_fmt(est['em'])}, by BBSE {_fmt(est['bbse'])}, "
            f"by calibrated EM {_fmt(est['calibrated_em'])} (temperature {cal['temperature']:.2f}).",
            f"Prior shift: G-test of the OOF against the test predicted classes G={record['g_statistic']:.1f}, "
            f"p={record['p_value']:.2g} (alpha {record['alpha']:g}); {record['why']}.{error}"]


def _l1(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def simulated_shift_rows(probs, y, estimator: Estimator, alpha: float) -> list[dict]:
    """CV rows: the OOF rows (N, C, as the models gave them) resampled to a balanced mix, to the reversed mix
    and to their own mix (no shift); each scored as it is, after `estimator`'s correction (estimated from the
    resample's predictions alone, the labels only draw the resample and score it), and after the shift
    test's choice alone (corrected when it finds a shift)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    counts = np.bincount(y, minlength=probs.shape[1])
    mixes = {"balanced": np.where(counts > 0, 1.0, 0.0), "reversed": reversed_mix(counts), "training": counts}
    reference, name = estimator.reference, _NAMES[estimator.method]
    rows = []
    for mix_name, mix in mixes.items():
        mix = mix / mix.sum()
        idx = simulated_mix(y, mix, len(y), _SIMULATION_SEED)
        p, t = probs[idx], y[idx]
        q = estimator.estimate(p)
        corrected = apply_log_factor(p, estimator.log_factor(q))
        _, p_value = shift_test(probs, p)
        auto = corrected if p_value < alpha else p
        what = f"simulated {mix_name} mix"
        rows += [metrics_row(f"{what}: no correction (the posteriors' prior off by L1 {_l1(reference, mix):.3f})",
                             t, p, prior_l1=_l1(reference, mix)),
                 metrics_row(f"{what}: EM correction ({name}; estimated prior off by L1 {_l1(q, mix):.3f})", t,
                             corrected, prior_l1=_l1(q, mix)),
                 metrics_row(f"{what}: auto's shift test ({'corrected' if p_value < alpha else 'unchanged'}, "
                             f"p={p_value:.2g})", t, auto, shift_p_value=p_value)]
    return rows


def shift_score_rows(y, probs, record: dict, voting: str, vote_metrics) -> list[dict]:
    """`make score` rows of the plain vote after each estimator's correction (a record of an older version:
    its EM and BBSE estimates re-weighted from the model prior)."""
    rows = []
    factors = (record or {}).get("log_factors")
    for method, estimate in (record or {}).get("estimates", {}).items():
        shifted = (apply_log_factor(probs, factors[method]) if factors else
                   reweight(probs, record["model_prior"], estimate))
        rows.append({"model": f"{voting} vote + prior-shift correction ({method})", **vote_metrics(y, shifted, voting)})
    return rows
