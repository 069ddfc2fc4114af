"""Blend several experiments (e.g. two backbones) with weights fitted on their out-of-fold predictions.

    make ensemble EXPS="effnet convnext"      →  outputs/blend-effnet-convnext/submission.csv
    python -m pipeline blend effnet convnext [--out DIR] [--oof tta|plain|auto] [--voting soft] ...

Why per experiment and not per fold: every fold model of one experiment predicts every test row,
but each out-of-fold (OOF) row has exactly one fold's prediction, so OOF data can rank *experiments*
(or checkpoints), never the folds of one experiment. Each experiment is first reduced to one member:
its OOF probabilities (TTA-merged from ``oof_tta.csv`` by default, like its test predictions) and the
mean of its folds' test probabilities. The members' OOF rows must be the very same cross-validation
split, else a fitted weight would reward whichever experiment happened to get easier validation rows;
so blending is refused unless every experiment's folds file has the same content (sha256) and every
OOF row sits in the same fold.

Writes, in ``outputs/blend-<a>-<b>...`` (or `out`): ``cv.csv``/``cv.md`` (each experiment's OOF score
and the blends': uniform vs fitted weights, every voting mode, the logit adjustment; every fitted choice
scored nested: each fold's rows blended with the weights and tau fitted on the other folds),
``blend.json`` (members, weights, folds hash, tau, the nested per-fold choices), ``oof.csv`` (the
nested OOF scores of the submission's recipe, so a blend of blends stays honest), ``test_probs.csv`` and, last,
``submission.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports (numpy, pandas, torch via stages) happen when a blend runs, so that
    import numpy as np  # the CLI reads this module's choices while `python -m pipeline` (run by Make at parse time) starts
    import pandas as pd

    from pipeline.config import Config

__all__ = ["FoldsMismatchError", "Member", "load_experiment", "load_member", "load_members", "check_same_folds",
           "write_blend_probs", "blend",
           "OOF_SOURCES", "VOTING_CHOICES", "OBJECTIVES"]

OOF_SOURCES = ("auto", "tta", "plain")
VOTING_CHOICES = ("soft", "hard", "geometric", "rank")   # = pipeline.ensemble.voting.VOTING_MODES (a test checks)
OBJECTIVES = ("logloss", "f1", "metric")                         # = pipeline.ensemble.voting.WEIGHT_OBJECTIVES


class FoldsMismatchError(ValueError):
    """Experiments cross-validated on different folds: their OOF predictions cannot be blended."""


@dataclass
class Member:
    """One experiment reduced to a blend member."""
    name: str
    cfg: Config
    classes: list
    rows: np.ndarray          # train-table rows, sorted
    folds: np.ndarray         # each row's fold
    labels: pd.Series         # each row's true label
    oof: np.ndarray           # (N, C) out-of-fold probabilities
    oof_source: str           # "oof_tta.csv" or "oof.csv"
    test_ids: pd.Series
    test: np.ndarray          # (T, C) mean of the folds' test probabilities
    folds_file: Path
    folds_hash: str


def load_experiment(name: str, output_dir: str | Path = "outputs") -> Config:
    """The resolved config an experiment ran with (``<output_dir>/<name>/config.yaml``)."""
    from pipeline.config import load_config

    path = Path(output_dir) / name / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"experiment '{name}': {path} not found; run `make ensemble CONFIG=...` "
                                f"for it first (or pass --output-dir)")
    return load_config(path)


def _concat_folds(cfg: Config, file: str) -> pd.DataFrame | None:
    from pipeline.fileio import read_table
    from pipeline.predict.probs import stack_folds

    frames = []
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / file
        if not path.is_file():
            return None
        frames.append(read_table(path))
    return stack_folds(frames)


def load_member(cfg: Config, oof_source: str = "auto") -> Member:
    """Read one experiment's OOF and fold test probabilities; check them against its folds file."""
    import numpy as np

    from pipeline.fileio import file_sha256
    from pipeline.train.models import read_sidecar
    from pipeline.predict.probs import prob_columns, read_test_probs

    if oof_source not in OOF_SOURCES:
        raise ValueError(f"--oof: unknown source {oof_source!r}; valid: {', '.join(OOF_SOURCES)}")
    name = cfg.experiment
    classes = read_sidecar(cfg.fold_dir(0) / "weights.safetensors")["classes"]
    oof, source = None, None
    if oof_source in ("auto", "tta"):
        oof, source = _concat_folds(cfg, "oof_tta.csv"), "oof_tta.csv"
        if oof is None and oof_source == "tta":
            raise FileNotFoundError(f"experiment '{name}': some fold has no oof_tta.csv; rerun its predict "
                                    f"stage (python -m pipeline predict --config {cfg.exp_dir / 'config.yaml'})")
    if oof is None:
        oof, source = _concat_folds(cfg, "oof.csv"), "oof.csv"
    if oof is None:
        raise FileNotFoundError(f"experiment '{name}': some fold of {cfg.exp_dir} has no oof.csv; train every fold")
    try:
        ids, tests, _ = read_test_probs(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"experiment '{name}': {exc}") from None
    cols = prob_columns(classes)
    if not cfg.folds_file.is_file():
        raise FileNotFoundError(f"experiment '{name}': its folds file {cfg.folds_file} is gone; it is needed to "
                                "check that the experiments share one cross-validation split")
    member = Member(name=name, cfg=cfg, classes=classes, rows=oof["row"].to_numpy(), folds=oof["fold"].to_numpy(),
                    labels=oof["label"], oof=oof[cols].to_numpy(np.float64), oof_source=source, test_ids=ids,
                    test=tests.astype(np.float64).mean(axis=0),
                    folds_file=cfg.folds_file, folds_hash=file_sha256(cfg.folds_file))
    _check_own_folds(member)
    return member


def _check_own_folds(m: Member) -> None:
    """The OOF rows must sit in the folds the folds file gives them now (it may have been regenerated)."""
    import numpy as np

    from pipeline.fileio import read_table
    from pipeline.train.models import read_sidecar

    recorded = {read_sidecar(m.cfg.fold_dir(k) / "weights.safetensors").get("folds_sha256")
                for k in range(m.cfg.folds.n_splits)} - {None}
    if recorded and recorded != {m.folds_hash}:
        raise FoldsMismatchError(f"experiment '{m.name}' was trained on a folds file with sha256 "
                                 f"{sorted(h[:12] for h in recorded)}, but {m.folds_file} now has {m.folds_hash[:12]}: "
                                 "the folds were regenerated after training; retrain it or restore the folds file")
    table = read_table(m.folds_file)
    if len(np.unique(m.rows)) != len(m.rows) or m.rows.min(initial=0) < 0 or m.rows.max(initial=-1) >= len(table):
        raise FoldsMismatchError(f"experiment '{m.name}': its OOF rows do not fit {m.folds_file} ({len(table)} rows)")
    if not np.array_equal(table["fold"].to_numpy()[m.rows], m.folds):
        raise FoldsMismatchError(f"experiment '{m.name}': its OOF rows sit in other folds than {m.folds_file} "
                                 "says; the folds were regenerated after training; retrain it")


def check_same_folds(members: list[Member]) -> None:
    """Refuse to blend experiments that were not cross-validated on the same split (or classes, test ids)."""
    import numpy as np

    first = members[0]
    for m in members[1:]:
        pair = f"cannot blend '{first.name}' and '{m.name}'"
        if m.folds_hash != first.folds_hash:
            raise FoldsMismatchError(
                f"{pair}: they were cross-validated on different folds files — '{first.name}': {first.folds_file} "
                f"(sha256 {first.folds_hash[:12]}), '{m.name}': {m.folds_file} (sha256 {m.folds_hash[:12]}). "
                "Weights fitted on out-of-fold predictions from different splits are not comparable. Give both "
                "experiments the same folds (e.g. folds.name: shared) and retrain the odd one out.")
        if not (np.array_equal(m.rows, first.rows) and np.array_equal(m.folds, first.folds)):
            raise FoldsMismatchError(f"{pair}: their out-of-fold rows or folds differ although both use "
                                     f"{first.folds_file}; rerun the training of the stale one")
        if not m.labels.equals(first.labels):
            raise ValueError(f"{pair}: their out-of-fold rows carry different true labels (data.true_label_column "
                             f"'{first.cfg.data.true_label_column}' vs '{m.cfg.data.true_label_column}'?)")
        if m.classes != first.classes:
            raise ValueError(f"{pair}: classes differ ({first.classes} vs {m.classes})")
        if not m.test_ids.equals(first.test_ids):
            raise ValueError(f"{pair}: their test predictions cover different ids (sample submissions "
                             f"{first.cfg.data.sample_submission} vs {m.cfg.data.sample_submission})")


_KIND_LABELS = {"uniform": "uniform weights", "fitted": "fitted weights, nested"}


def _blend_rows(rows, metric: str, objective: str, chosen: tuple[str, str] | None) -> list[dict]:
    """Every voting mode with every kind of weights, nested (each fold's rows voted with the weights fitted on
    the other folds; uniform weights fit nothing); `chosen` (mode, kind) is marked as the submission."""
    from pipeline.ensemble.chain import nested_chain
    from pipeline.ensemble.steps.combine import BlendStep
    from pipeline.ensemble.voting import VOTING_MODES
    from pipeline.results.cv_table import metrics_row

    out = []
    for mode in VOTING_MODES:
        for kind, label in _KIND_LABELS.items():
            mark = " (submission)" if (mode, kind) == chosen else ""
            not_probs = {"log_loss": float("nan")} if mode in ("hard", "rank") else {}
            scores = nested_chain([BlendStep(mode, kind, objective, metric)], rows)
            out.append(metrics_row(f"blend {mode}, {label}{mark}", rows.y, scores, **not_probs))
    return out


def blend(experiments: list[str | Config], output_dir: str | Path = "outputs", out: str | Path | None = None,
          oof_source: str = "auto", voting: str = "soft", weights: str = "fitted", objective: str = "logloss",
          logit_adjust_on: bool | None = None, tau_grid=None, log=print) -> Path:
    """Blend experiments (names under `output_dir`, or configs) into one submission; returns its path.

    The chain: the members' `voting` vote (any of :data:`pipeline.ensemble.voting.VOTING_MODES`) with weights
    ``fitted`` on the OOF probabilities by `objective` (:func:`pipeline.ensemble.voting.fit_weights`) or
    ``uniform``, then the logit adjustment of the vote's scores (default: the first experiment's
    ``ensemble.logit_adjust`` / ``ensemble.tau_grid``; ``auto`` applies it when its nested gain exceeds its
    noise), both scored nested (:mod:`pipeline.ensemble.decide`).
    """
    import numpy as np
    import pandas as pd

    from pipeline.ensemble.chain import Rows
    from pipeline.ensemble.decide import Choice, decide
    from pipeline.ensemble.plan import switch
    from pipeline.ensemble.steps.combine import BlendStep
    from pipeline.ensemble.steps.factors import LogitAdjustStep
    from pipeline.fileio import write_json_atomic
    from pipeline.metrics import metric_value
    from pipeline.predict.probs import class_ids
    from pipeline.results.chain_rows import legacy_records
    from pipeline.results.cv_table import metrics_row, write_cv
    from pipeline.results.submission import submission_format, write_submission

    _check_choices(voting, weights, objective)
    members = load_members(experiments, output_dir, oof_source, log)
    first, names = members[0], [m.name for m in members]
    classes, metric, e = first.classes, first.cfg.competition.metric, first.cfg.ensemble
    y = class_ids(first.labels, classes, f"{first.name} OOF labels")
    rows = Rows(np.stack([m.oof for m in members]), y, first.folds, np.stack([m.test for m in members]))
    adjust = switch(e.logit_adjust if logit_adjust_on is None else logit_adjust_on)
    grid = tuple(float(t) for t in (e.tau_grid if tau_grid is None else tau_grid))
    plan = [Choice("blend", "on", BlendStep(voting, weights, objective, metric), None, "--weights", weights),
            Choice("logit_adjust", adjust, LogitAdjustStep(grid, metric), None, "ensemble.logit_adjust",
                   e.logit_adjust if logit_adjust_on is None else logit_adjust_on)]
    states, decisions = decide(plan, rows, metric, margin=e.auto_margin)
    chain, weighing, adjusting = states[-1], decisions[0], decisions[1]
    fitted = BlendStep(voting, "fitted", objective, metric).fit(rows).weights   # on every OOF row, for the record
    w = np.asarray(weighing.fitted["weights"])

    out_dir = Path(out) if out is not None else Path(output_dir) / ("blend-" + "-".join(names))
    weight_text = ", ".join(f"{m.name} {x:.3f}" for m, x in zip(members, fitted))
    taus = "/".join(f"{p['tau']:g}" for p in adjusting.per_fold.values())
    notes = [f"Fitted weights ({objective} on {first.oof_source}, all {len(y)} OOF rows, used for the test set): "
             f"{weight_text}. The CV rows of fitted choices are nested: each fold's rows are blended with the "
             "weights (and tau) fitted on the other folds only.",
             f"Folds: {' = '.join(dict.fromkeys(str(m.folds_file) for m in members))} "
             f"(sha256 {first.folds_hash[:12]}, the same split for every experiment).",
             f"Logit adjustment p / prior^tau of the vote's scores: tau={adjusting.fitted['tau']:g} chosen on all OOF "
             f"rows' {metric}; nested gain {adjusting.gain.gain:+.4f} ± {adjusting.gain.noise:.4f}; {adjusting.why}."]
    table = [metrics_row(f"{m.name} ({m.oof_source})", y, m.oof) for m in members]
    table += _blend_rows(rows, metric, objective, None if adjusting.applied else (voting, weights))
    mark = " (submission)" if adjusting.applied else ""
    table.append(metrics_row(f"blend {voting}, {_KIND_LABELS[weights]} + logit adjustment, tau from the other "
                             f"folds ({taus}){mark}", y, adjusting.oof))
    applied = f" + logit adjustment (tau={adjusting.fitted['tau']:g})" if adjusting.applied else ""
    summary = [("Submission", f"{voting} vote of {len(members)} experiments, {weights} weights ({weight_text})"
                              + applied),
               ("Out-of-fold estimate", f"{metric_value(metric, y, chain.oof()):.4f} {metric} on {len(y)} OOF rows, "
                                        "weights and tau fitted on the other folds")]
    if not adjusting.applied:
        summary.append(("Not applied", f"logit adjustment (gain {adjusting.gain.gain:+.4f} ± "
                                       f"{adjusting.gain.noise:.4f}): {adjusting.why}"))
    write_cv(pd.DataFrame(table), out_dir, f"Blend: {' + '.join(names)}", notes, log, metric, summary)

    test_scores = chain.test()
    write_blend_probs(out_dir, first, chain.oof(), test_scores)
    write_json_atomic(out_dir / "blend.json", {
        "experiments": names, "weights": dict(zip(names, w.tolist())),
        "fitted_weights": dict(zip(names, fitted.tolist())), "weights_kind": weights,
        "objective": objective, "voting": voting, "oof_source": first.oof_source,
        "folds_file": str(first.folds_file), "folds_sha256": first.folds_hash, "classes": classes,
        "metric": metric, **legacy_records(decisions), "chain": [d.as_dict() for d in decisions],
        "nested": {f"{weights}_weights": {k: dict(zip(names, p["weights"])) for k, p in weighing.per_fold.items()},
                   "tau": {k: p["tau"] for k, p in adjusting.per_fold.items()}}})
    d = first.cfg.data
    sub = out_dir / "submission.csv"
    fmt = submission_format(first.cfg, classes)   # the competition's format, as its members write it
    write_submission(d.sample_submission, d.id_column, d.target_column, first.test_ids,
                     [classes[i] for i in test_scores.argmax(axis=1)], sub, fmt, test_scores)
    applied_tau = adjusting.fitted["tau"] if adjusting.applied else 0.0
    log(f"[blend] {voting} vote of {len(members)} experiments, {weights} weights ({weight_text})"
        f"{f', logit adjustment tau={applied_tau:g}' if applied_tau else ''} → {sub}")
    return sub


def _check_choices(voting: str, weights: str, objective: str) -> None:
    from pipeline.ensemble.voting import VOTING_MODES, WEIGHT_OBJECTIVES

    if voting not in VOTING_MODES:
        raise ValueError(f"--voting: unknown mode {voting!r}; valid: {', '.join(VOTING_MODES)}")
    if weights not in ("fitted", "uniform"):
        raise ValueError(f"--weights: {weights!r} is not 'fitted' or 'uniform'")
    if objective not in WEIGHT_OBJECTIVES:
        raise ValueError(f"--objective: {objective!r} is not one of {', '.join(WEIGHT_OBJECTIVES)}")


def load_members(experiments: list, output_dir, oof_source: str = "auto", log=print) -> list[Member]:
    """Each experiment's OOF and test probabilities, from the same OOF source, on the same folds."""
    from pipeline.config import Config

    cfgs = [e if isinstance(e, Config) else load_experiment(e, output_dir) for e in experiments]
    names = [c.experiment for c in cfgs]
    if len(cfgs) < 2 or len(set(names)) != len(names):
        raise ValueError(f"a blend needs two or more different experiments, got {names}")
    members = [load_member(c, oof_source) for c in cfgs]
    if len({m.oof_source for m in members}) > 1:  # auto fell back for some: compare like with like
        log("[blend] not every experiment has oof_tta.csv; using oof.csv (no TTA) for all")
        members = [load_member(c, "plain") for c in cfgs]
    check_same_folds(members)
    return members


def write_blend_probs(out_dir: Path, first, blended_oof, test_scores) -> None:
    """A blend's (or stack's) oof.csv and test_probs.csv, read like an experiment's (so it can be blended)."""
    import pandas as pd

    from pipeline.fileio import write_csv_atomic
    from pipeline.predict.probs import fold_probs_frame

    classes = first.classes
    oof_frame = pd.DataFrame({"row": first.rows, "label": first.labels.to_numpy(), "fold": first.folds})
    oof_frame = pd.concat([oof_frame, fold_probs_frame(first.rows, blended_oof, classes).drop(columns="id")], axis=1)
    write_csv_atomic(out_dir / "oof.csv", oof_frame, float_format="%.7g")
    write_csv_atomic(out_dir / "test_probs.csv", fold_probs_frame(first.test_ids, test_scores, classes),
                     float_format="%.7g")
