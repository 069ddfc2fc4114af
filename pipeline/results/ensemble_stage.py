"""The ensemble stage: read every fold's probabilities, run the chain, write the CV table, ensemble.json and the
submission.

The chain (:mod:`pipeline.ensemble.plan`, decided by :mod:`pipeline.ensemble.decide`) is fitted on the
out-of-fold rows and scored nested; what it applies to the test set is recorded in ensemble.json's
``submission`` entry, from which the submission is computed (:func:`pipeline.ensemble.record.apply_submission`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.ensemble.chain import Nested, Rows
from pipeline.ensemble.decide import Decision, decide
from pipeline.ensemble.plan import Settings, factor_choices, selection_choices, shift_choice
from pipeline.ensemble.record import apply_submission, submission_entry
from pipeline.metrics import metric_value
from pipeline.fileio import folder_lock, read_table, read_text_csv, write_csv_atomic, write_json_atomic
from pipeline.predict.fold import checkpoint_names
from pipeline.predict.tta import canonical_views
from pipeline.predict.probs import (MERGED, Candidates, candidate_probs, candidates_of, class_ids, read_fold_probs,
                                    stack_folds)
from pipeline.results.chain_rows import chain_rows, legacy_records
from pipeline.results.comparisons import seed_cv_rows, seeds_note
from pipeline.results.cv_table import cv_table, write_cv
from pipeline.results.formats import format_for_config
from pipeline.results.leak_rows import leak_cv_rows
from pipeline.results.pseudo import pseudo_note, source_cv_rows
from pipeline.ensemble.steps.prior_shift import fit_estimator
from pipeline.results.shift_check import (fold_train_priors, model_prior, shift_notes, shift_record,
                                         simulated_shift_rows)
from pipeline.results.submission import write_submission
from pipeline.results.summary import folded_rows, steps_frame, submission_text, summary_items

__all__ = ["Inputs", "read_inputs", "chain_settings", "ChainResult", "run_chain", "ensemble"]


@dataclass
class Inputs:
    """Everything the chain is fitted on and applied to, read from the fold folders."""
    classes: list
    oof: pd.DataFrame                 # the trainer's oof.csv rows (best weights, no TTA), every fold
    oof_tta: pd.DataFrame | None      # the predict stage's oof_tta.csv rows, every fold (None: predicted before)
    y: np.ndarray
    folds: np.ndarray
    candidates: Candidates            # the (checkpoint, view) pairs both the OOF and the test files hold
    oof_probs: np.ndarray             # (K, V, N, C)
    ids: pd.Series
    test_frames: list                 # every fold's test_probs.csv
    test_probs: np.ndarray            # (F, K, V, T, C)
    priors: dict                      # {fold: the prior its model learned}
    warnings: list                    # what weakens the chain (a missing file, an old format), for the summary

    @property
    def base(self) -> pd.DataFrame:
        """The OOF rows the chain starts from: TTA (oof_tta.csv) where predicted, else oof.csv."""
        return self.oof_tta if self.oof_tta is not None else self.oof


def _oof_tta_table(cfg: Config, oof: pd.DataFrame, warn) -> pd.DataFrame | None:
    """Every fold's oof_tta.csv, row-sorted; None (with a warning) when a fold predates OOF TTA."""
    frames = []
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / "oof_tta.csv"
        if not path.is_file():
            warn(f"{path} is missing (predicted before out-of-fold TTA existed): the CV table has no TTA rows and "
                 f"no view can be chosen; rerun `python -m pipeline predict --config {cfg.exp_dir / 'config.yaml'}`")
            return None
        frame = read_table(path)
        if sorted(frame["row"]) != sorted(oof.loc[oof["fold"] == k, "row"]):
            raise ValueError(f"{path} covers other rows than fold {k}'s oof.csv: it predates the fold's "
                             "training; rerun the predict stage for this fold")
        weights = cfg.fold_dir(k) / "weights.safetensors"
        if weights.is_file() and path.stat().st_mtime < weights.stat().st_mtime:
            warn(f"{path} is older than {weights}; rerun predict for fold {k}")
        frames.append(frame)
    return stack_folds(frames)


def _test_frames(cfg: Config, classes: list) -> tuple[pd.Series, list]:
    frames, test_classes = read_fold_probs(cfg, "test_probs.csv")
    if test_classes != classes:
        raise ValueError(f"the test predictions are of classes {test_classes}, the OOF rows of {classes}; "
                         "rerun predict")
    ids = frames[0]["id"]
    for k, f in enumerate(frames):
        if not f["id"].equals(ids):
            raise ValueError(f"fold {k}'s test predictions cover other ids than fold 0's; rerun `make ensemble`")
    return ids, frames


def _shared_candidates(base: pd.DataFrame, tests: list, classes: list, checkpoint: str, warn) -> Candidates:
    """The (checkpoint, view) pairs the OOF rows and every fold's test file hold alike; else only the merged ones."""
    found = [candidates_of(f, classes, checkpoint) for f in [base, *tests]]
    if all(c == found[0] for c in found):
        return found[0]
    warn("the OOF and test files hold different views or checkpoints (some predicted before the per-view test "
         "columns existed): the chain uses the merged probabilities and chooses no view; rerun the predict stage")
    return MERGED


def read_inputs(cfg: Config, log=print) -> Inputs:
    """Every fold's OOF rows (oof.csv, oof_tta.csv) and test probabilities, checked against each other; what
    weakens the chain is logged and kept as a warning for the summary."""
    warnings = []

    def warn(message: str) -> None:
        warnings.append(message)
        log(f"[ensemble] warning: {message}")

    frames, classes = read_fold_probs(cfg, "oof.csv")
    oof = stack_folds(frames)
    oof_tta = _oof_tta_table(cfg, oof, warn)
    base = oof_tta if oof_tta is not None else oof
    ids, tests = _test_frames(cfg, classes)
    candidates = _shared_candidates(base, tests, classes, checkpoint_names(cfg)[0], warn)
    y = class_ids(base["label"], classes, "oof.csv")
    folds = base["fold"].to_numpy()
    return Inputs(classes, oof, oof_tta, y, folds, candidates, candidate_probs(base, classes, candidates), ids, tests,
                  np.stack([candidate_probs(f, classes, candidates) for f in tests]),
                  fold_train_priors(cfg, classes, y, folds, warn), warnings)


def chain_settings(cfg: Config, logit_adjust_on: bool | None = None, tau_grid=None) -> Settings:
    """The chain's settings from the config; `logit_adjust_on` and `tau_grid` override theirs when given."""
    e, select = cfg.ensemble, cfg.tta.select
    return Settings(views=canonical_views(select) if isinstance(select, list) else select,
                    checkpoints="auto" if e.checkpoints == "auto" else "listed",
                    logit_adjust=e.logit_adjust if logit_adjust_on is None else logit_adjust_on,
                    class_bias=e.class_bias, tau_grid=tuple(e.tau_grid if tau_grid is None else tau_grid),
                    merge=cfg.tta.merge, prior_shift=e.prior_shift, prior_shift_alpha=e.prior_shift_alpha,
                    margin=e.auto_margin)


def ensemble(cfg: Config, log=print, logit_adjust_on: bool | None = None, tau_grid=None) -> Path:
    """Read every fold's predictions, run the chain, write the CV table, ensemble.json and the submission.

    The chain chooses the TTA views and checkpoints, fits the logit adjustment and the class bias on the OOF
    rows, then the prior-shift correction on the test predictions, each scored (nested, or simulated) and
    kept by its setting (:mod:`pipeline.ensemble.decide`).
    """
    with folder_lock(cfg.exp_dir, f"the experiment folder {cfg.exp_dir}", log):
        inputs = read_inputs(cfg, log)
        write_csv_atomic(cfg.exp_dir / "oof.csv", inputs.oof)
        if inputs.oof_tta is not None:
            write_csv_atomic(cfg.exp_dir / "oof_tta.csv", inputs.oof_tta, float_format="%.7g")
        result = run_chain(inputs, chain_settings(cfg, logit_adjust_on, tau_grid), cfg.competition.metric,
                           cfg.ensemble.voting)
        result.record["warnings"] += _write_cv(cfg, inputs, result, log)
        return _write_submission(cfg, inputs, result.record, log)


@dataclass
class ChainResult:
    """The chain run on an experiment's predictions: the record (ensemble.json without the submission format),
    each step's decision, and the nested OOF rows before the prior shift and after the chosen predictions."""
    record: dict
    decisions: list
    oof: np.ndarray            # the submission's chain, nested, before the prior-shift correction
    selected_oof: np.ndarray   # the chosen views and checkpoints alone, nested
    prior: np.ndarray
    before_shift: Nested       # the chain the prior-shift correction was decided after (the bundle refits it)


def run_chain(inputs: Inputs, settings: Settings, metric: str, voting: str) -> ChainResult:
    """Decide every step of the chain on `inputs` (nothing is written); the record that reproduces the submission."""
    prior = model_prior(inputs.priors)
    plan = (selection_choices(settings, inputs.candidates.views, inputs.candidates.checkpoints, metric)
            + factor_choices(settings, metric, prior))
    rows = Rows(inputs.oof_probs, inputs.y, inputs.folds, inputs.test_probs)
    states, decisions = decide(plan, rows, metric, margin=settings.margin)
    selected = states[1]                         # the chosen predictions (views, checkpoints), no factor yet
    correction = shift_choice(settings.prior_shift, prior, len(inputs.ids), settings.prior_shift_alpha)
    more, shifted = decide([correction], rows, metric, margin=settings.margin, start=states[-1])
    shift = shift_record(shifted[0], settings.prior_shift_alpha, selected.full.probs, inputs.y, selected.test(),
                         prior)
    # The OOF estimate is the chain's before the prior-shift correction: on OOF rows (their own mix) it has
    # nothing to correct; what it does on the test set is its simulated gain.
    record = _record(inputs, decisions + shifted, more[-1], states[-1].oof(), shift, metric, voting, settings.merge)
    return ChainResult(record, decisions + shifted, states[-1].oof(), selected.oof(), prior, states[-1])


def _record(inputs: Inputs, decisions: list[Decision], chain, oof: np.ndarray, shift: dict, metric: str, voting: str,
            merge: str) -> dict:
    """ensemble.json: the chain's decisions, the submission entry that reproduces the submission, the OOF estimate
    (the nested `oof` rows of the submission's chain) per fold, the warnings, and the entries older readers know."""
    log_factor = sum((np.asarray(f.params()["log_factor"]) for f in chain.fitted[2:]), np.zeros(len(inputs.classes)))
    entry = submission_entry(inputs.classes, len(inputs.test_frames), voting, inputs.candidates,
                             chain.fitted[0].params()["views"], merge, chain.fitted[1].params()["checkpoints"],
                             log_factor)
    folds = {int(k): metric_value(metric, inputs.y[inputs.folds == k], oof[inputs.folds == k])
             for k in np.unique(inputs.folds)}
    forced = [f"{d.name} is forced on ({d.key}: {d.value}) although its gain is {d.gain.gain:+.4f} "
              f"± {d.gain.noise:.4f}" for d in decisions if d.setting == "on" and d.gain.gain < 0]
    return {"voting": voting, "folds": len(inputs.test_frames), "classes": inputs.classes,
            "metric": metric, "oof_source": "oof_tta.csv" if inputs.oof_tta is not None else "oof.csv",
            "chain": [d.as_dict() for d in decisions], "submission": entry,
            "estimate": {"metric": metric, "oof": metric_value(metric, inputs.y, oof), "rows": len(inputs.y),
                         "folds": list(folds.values())},
            "warnings": [*inputs.warnings, *forced], **legacy_records(decisions), "prior_shift": shift}


def _write_cv(cfg: Config, inputs: Inputs, result: ChainResult, log) -> list[str]:
    """cv.csv and cv.md (the summary first); returns the leak check's warning when the copies it found inflate
    the CV."""
    metric, decisions, record = cfg.competition.metric, result.decisions, result.record
    cv = cv_table(inputs.oof, inputs.classes, inputs.oof_tta, cfg.tta.merge)
    steps = chain_rows(decisions, inputs.y, result.oof, "TTA" if inputs.oof_tta is not None else "no TTA")
    estimator = fit_estimator(decisions[-1].fitted["method"], result.selected_oof, inputs.y, result.prior)
    simulated = simulated_shift_rows(result.selected_oof, inputs.y, estimator, cfg.ensemble.prior_shift_alpha)
    leak_rows, leak_notes = leak_cv_rows(cfg, inputs.base, inputs.classes, log)
    comparisons = leak_rows + seed_cv_rows(cfg) + source_cv_rows(cfg)   # leaks; one seed alone; the source round
    cv = pd.concat([cv, pd.DataFrame(steps), pd.DataFrame(simulated), pd.DataFrame(comparisons)], ignore_index=True)
    notes = [*leak_notes, *seeds_note(cfg), *pseudo_note(cfg), *shift_notes(record["prior_shift"], inputs.classes)]
    if len(inputs.candidates.checkpoints) > 1:
        notes.append(f"The TTA and view rows average the checkpoints ({', '.join(inputs.candidates.checkpoints)}); "
                     "the fold and 'no TTA' rows are the trainer's oof.csv (best weights).")
    leaked = [n for n in leak_notes if "likely inflated" in n or "cannot estimate its own optimism" in n]
    summary = summary_items({**record, "warnings": record["warnings"] + leaked})
    write_cv(cv, cfg.exp_dir, f"Cross-validation: {cfg.experiment}", notes, log, metric, summary,
             steps_frame(record), folded_rows(cv, record))
    return leaked


def _write_submission(cfg: Config, inputs: Inputs, record: dict, log) -> Path:
    probs, scores, picked = apply_submission(record["submission"], inputs.test_frames)
    fmt = format_for_config(cfg, read_text_csv(cfg.data.sample_submission), inputs.classes)
    write_json_atomic(cfg.exp_dir / "ensemble.json", {**record, "submission_format": fmt.kind,
                                                      "positive_class": fmt.positive})
    out = cfg.exp_dir / "submission.csv"
    write_submission(cfg.data.sample_submission, cfg.data.id_column, cfg.data.target_column, inputs.ids,
                     [inputs.classes[i] for i in picked], out, fmt, scores)
    positive = f" of class '{fmt.positive}'" if fmt.positive else ""
    log(f"[ensemble] {submission_text(record)} → {out} ({fmt.kind}{positive}: {fmt.why})")
    return out
