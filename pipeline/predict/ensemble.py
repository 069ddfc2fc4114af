"""The ensemble stage: every fold's out-of-fold and test probabilities → the CV table and the submission."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.fileio import folder_lock, read_table, write_csv_atomic, write_json_atomic
from pipeline.predict.class_bias import apply_bias, fit_class_bias
from pipeline.predict.cv_table import cv_table, write_cv
from pipeline.predict.fold import checkpoint_names
from pipeline.predict.pseudo import pseudo_note, source_cv_rows
from pipeline.predict.seeds import seed_cv_rows, seeds_note
from pipeline.predict.leak_rows import leak_cv_rows
from pipeline.predict.probs import (CKPT_PREFIX, class_ids, prob_columns, read_fold_probs, read_test_probs,
                                    stack_folds, view_columns)
from pipeline.fileio import read_text_csv
from pipeline.predict.formats import format_for_config
from pipeline.predict.shift_check import (apply_shift, fold_train_priors, model_prior, shift_notes, shift_record,
                                          simulated_shift_rows)
from pipeline.predict.submission import write_submission
from pipeline.predict.voting import choose_tau, class_priors, logit_adjust, vote, vote_scores

__all__ = ["ensemble", "logit_adjust_settings", "logit_adjust_record", "bias_fit"]


def _oof_table(cfg: Config) -> tuple[pd.DataFrame, list]:
    frames, classes = read_fold_probs(cfg, "oof.csv")
    return stack_folds(frames), classes


def _oof_tta_table(cfg: Config, oof: pd.DataFrame, log=print) -> pd.DataFrame | None:
    """Every fold's oof_tta.csv, row-sorted; None (with a note) when a fold predates OOF TTA."""
    frames = []
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / "oof_tta.csv"
        if not path.is_file():
            log(f"[ensemble] {path} is missing (predicted before out-of-fold TTA existed): the CV table "
                f"has no TTA rows; rerun `python -m pipeline predict --config {cfg.exp_dir / 'config.yaml'}`")
            return None
        frame = read_table(path)
        if sorted(frame["row"]) != sorted(oof.loc[oof["fold"] == k, "row"]):
            raise ValueError(f"{path} covers other rows than fold {k}'s oof.csv: it predates the fold's "
                             "training; rerun the predict stage for this fold")
        weights = cfg.fold_dir(k) / "weights.safetensors"
        if weights.is_file() and path.stat().st_mtime < weights.stat().st_mtime:
            log(f"[ensemble] warning: {path} is older than {weights}; rerun predict for fold {k}")
        frames.append(frame)
    return stack_folds(frames)


def logit_adjust_settings(cfg: Config, logit_adjust_on=None, tau_grid=None) -> tuple[bool, list[float]]:
    """(apply it?, tau grid): the arguments where given, else ``ensemble.logit_adjust`` / ``ensemble.tau_grid``."""
    on = cfg.ensemble.logit_adjust if logit_adjust_on is None else logit_adjust_on
    grid = cfg.ensemble.tau_grid if tau_grid is None else tau_grid
    return bool(on), [float(t) for t in grid]


def logit_adjust_record(applied: bool, tau: float, chosen_tau: float, grid, prior: np.ndarray, curve,
                        metric: str = "f1_macro") -> dict:
    """The ``logit_adjust`` entry of ensemble.json / blend.json (`score` reads its tau and prior back).
    The curve holds the metric signed so that higher is better (the log-loss negated)."""
    # The prior at full precision: `score`, the pseudo-labels and the bundle apply it again, and must
    # divide by the very numbers the submission was made with.
    return {"applied": bool(applied), "tau": tau, "chosen_tau": chosen_tau, "grid": grid, "metric": metric,
            "prior": prior.tolist(), "oof_gain_by_tau": [[t, round(f, 6)] for t, f in curve]}


def bias_fit(metric: str, n_classes: int, tau_grid=None, model_prior=None):
    """The class-bias fit for `nested.nested_probs` and for the submission: on the rows it is given, first the
    logit adjustment (when `tau_grid`: tau chosen on those rows; the prior is `model_prior`, what the models
    were trained on, else those rows' class frequencies), then the bias, both by `metric`."""
    def fit(p: np.ndarray, y: np.ndarray):
        prior = class_priors(y, n_classes) if model_prior is None else np.asarray(model_prior)
        tau = 0.0
        if tau_grid is not None:
            tau, _ = choose_tau(p, y, prior, tau_grid, metric=metric)
        bias = fit_class_bias(logit_adjust(p, prior, tau), y, metric)
        return (lambda q: apply_bias(logit_adjust(q, prior, tau), bias)), bias
    return fit


def ensemble(cfg: Config, log=print, logit_adjust_on: bool | None = None, tau_grid=None) -> Path:
    """Vote the folds' test probabilities into the submission; report the cross-validation table.

    With ``ensemble.logit_adjust`` (or `logit_adjust_on`), every fold's test probabilities are divided
    by the class priors to the power tau before voting, tau chosen on OOF macro-F1 over
    ``ensemble.tau_grid``. The CV table always shows what the chosen tau does to the OOF score.
    ``ensemble.prior_shift`` re-weights them to the class mix estimated on the test predictions
    (:mod:`pipeline.predict.shift_check`) before logit adjustment; both divide out the models' effective
    training prior (``fold_<k>/train_prior.json``).
    """
    with folder_lock(cfg.exp_dir, f"the experiment folder {cfg.exp_dir}", log):
        return _ensemble(cfg, log, logit_adjust_on, tau_grid)


def _ensemble(cfg: Config, log, logit_adjust_on: bool | None, tau_grid) -> Path:
    oof, classes = _oof_table(cfg)
    write_csv_atomic(cfg.exp_dir / "oof.csv", oof)
    oof_tta = _oof_tta_table(cfg, oof, log)
    if oof_tta is not None:
        write_csv_atomic(cfg.exp_dir / "oof_tta.csv", oof_tta, float_format="%.7g")
    adjust, grid = logit_adjust_settings(cfg, logit_adjust_on, tau_grid)
    base = oof_tta if oof_tta is not None else oof
    y = class_ids(base["label"], classes, "oof.csv")
    metric, base_probs = cfg.competition.metric, base[prob_columns(classes)].to_numpy()
    priors = fold_train_priors(cfg, classes, y, base["fold"].to_numpy(), log)
    prior = model_prior(priors)   # what the models learned (sampling, class weights), not the raw counts
    tau, curve = choose_tau(base_probs, y, prior, grid, metric=metric)
    applied_tau = tau if adjust else 0.0
    fit_bias = bias_fit(metric, len(classes), grid if adjust else None, prior)
    bias_name = "logit adjustment + class bias" if adjust else "class bias"
    cv = cv_table(oof, classes, oof_tta, cfg.tta.merge, grid, metric, {bias_name: fit_bias}, priors)
    cv = pd.concat([cv, pd.DataFrame(simulated_shift_rows(base_probs, y, prior, cfg.ensemble.prior_shift_alpha))],
                   ignore_index=True)
    bias = fit_bias(base_probs, y)[1]
    state = "applied to the test probabilities" if adjust else "not applied (ensemble.logit_adjust: false)"
    bias_state = "applied" if cfg.ensemble.class_bias else "not applied (ensemble.class_bias: false)"
    notes = [f"Logit adjustment p / prior^tau (prior: the models' effective training prior): tau={tau:g} chosen "
             f"on all OOF rows' {metric} over "
             f"[{', '.join(f'{t:g}' for t in grid)}]; {state}. Its CV row is nested: each fold adjusted "
             "with the tau and prior chosen on the other folds.",
             f"Class bias p * exp(b) fitted on all OOF rows' {metric}"
             f"{' after the logit adjustment' if adjust else ''}: b = [{', '.join(f'{b:g}' for b in bias)}] "
             f"({', '.join(map(str, classes))}); {bias_state}. Its CV row is nested: each fold with the bias "
             "fitted on the other folds."]
    ckpts = list(view_columns(oof_tta, classes, CKPT_PREFIX)) if oof_tta is not None else []
    if ckpts:
        notes.append(f"The TTA, view and logit-adjustment rows average the checkpoints ({', '.join(ckpts)}); "
                     "the fold and 'no TTA' rows are the trainer's oof.csv (best weights).")
    leak_rows, leak_notes = leak_cv_rows(cfg, base, classes, log)
    comparisons = leak_rows + seed_cv_rows(cfg) + source_cv_rows(cfg)   # leaks; one seed alone; the source round
    if comparisons:
        cv = pd.concat([cv, pd.DataFrame(comparisons)], ignore_index=True)
    notes += leak_notes + seeds_note(cfg) + pseudo_note(cfg)
    ids, probs, _ = read_test_probs(cfg)
    shift = shift_record(cfg.ensemble.prior_shift, cfg.ensemble.prior_shift_alpha, base_probs, y, probs, priors)
    notes += shift_notes(shift, classes, applied_tau)
    write_cv(cv, cfg.exp_dir, f"Cross-validation: {cfg.experiment}", notes, log, metric)
    # The order: the prior-shift correction first (logit adjustment's factor commutes with it), then the
    # logit adjustment and the class bias, as they were fitted on the OOF rows.
    probs = apply_shift(probs, shift)
    if applied_tau:
        probs = logit_adjust(probs, prior, applied_tau)
    if cfg.ensemble.class_bias:
        probs = apply_bias(probs, bias)
    picked = vote(probs, cfg.ensemble.voting)
    labels = [classes[i] for i in picked]
    fmt = format_for_config(cfg, read_text_csv(cfg.data.sample_submission), classes)
    write_json_atomic(cfg.exp_dir / "ensemble.json", {
        "voting": cfg.ensemble.voting, "folds": len(probs), "classes": classes,
        "submission_format": fmt.kind, "positive_class": fmt.positive,
        "checkpoints": checkpoint_names(cfg), "oof_source": "oof_tta.csv" if oof_tta is not None else "oof.csv",
        "metric": metric, "logit_adjust": logit_adjust_record(adjust, applied_tau, tau, grid, prior, curve, metric),
        "class_bias": {"applied": bool(cfg.ensemble.class_bias), "bias": bias.tolist(),   # full precision: re-applied
                       "after_logit_adjustment": bool(adjust)},
        "prior_shift": shift})
    out = cfg.exp_dir / "submission.csv"
    write_submission(cfg.data.sample_submission, cfg.data.id_column, cfg.data.target_column, ids, labels, out,
                     fmt, vote_scores(probs, cfg.ensemble.voting))
    adj = f", logit adjustment tau={applied_tau:g}" if applied_tau else ""
    adj += f", prior-shift correction ({shift['method']})" if shift["applied"] else ""
    adj += ", class bias" if cfg.ensemble.class_bias else ""
    positive = f" of class '{fmt.positive}'" if fmt.positive else ""
    log(f"[ensemble] {cfg.ensemble.voting} voting over {len(probs)} folds{adj} → {out} "
        f"({fmt.kind}{positive}: {fmt.why})")
    return out
