"""The pipeline's stages as functions of a config: each reads files and writes files.

    folds     train CSV                   → folds/<name>.csv
    (train)   see train.fit
    predict   fold checkpoints + images   → fold_<k>/oof_tta.csv   (validation rows, every TTA view)
                                            fold_<k>/test_probs.csv (test set, TTA-merged; the target)
    ensemble  fold OOF + test probs       → oof.csv, oof_tta.csv, cv.csv, cv.md, ensemble.json,
                                            submission.csv (the target, written last)
    score     submission + true labels    → score.csv (and a printed table)

Blending several experiments (fitted weights) is :mod:`pipeline.predict.blend`.

``fold_<k>/oof_tta.csv`` holds the fold's validation rows, one per line::

    row, label, fold,                      the train-table row, its true label, its fold
    prob_<class> ...                       TTA-merged probabilities (tta.merge), averaged over checkpoints
    <view>:prob_<class> ...                each view alone (e.g. ``identity:prob_cat``, ``hflip:prob_cat``)
    @<checkpoint>:prob_<class> ...         each checkpoint's TTA-merged probabilities (only with 2+)

so its ``prob_*`` columns read exactly like ``oof.csv``'s, and the CV table scores every view.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config
from pipeline.data.cache import BatchNormalize, decoded_for, make_dataset
from pipeline.data.tables import class_list, load_fold_table, read_test_table, read_train_table
from pipeline.predict.voting import VOTING_MODES, choose_tau, class_priors, log_loss, logit_adjust, vote, vote_scores
from pipeline.fileio import (folder_lock, locked, read_table, read_text_csv, write_csv_atomic, write_json_atomic,
                     write_text_atomic)
from pipeline.data.folds import assign_folds, fold_class_counts
from pipeline.metrics import classification_metrics, label_metrics, macro_f1
from pipeline.train.models import load_trained_model, read_sidecar
from pipeline.predict.submission import write_submission
from pipeline.device import loader_workers, resolve_device
from pipeline.predict.tta import parse_views, predict_tta, predict_tta_with_views

__all__ = ["make_folds", "predict_fold", "ensemble", "score", "fold_probs_frame", "checkpoint_names",
           "checkpoint_path", "cv_table", "markdown_table", "write_cv", "metrics_row", "view_columns",
           "class_ids", "text_table", "prob_columns", "logit_adjust_settings", "read_test_probs", "logit_adjust_record", "CV_COLUMNS"]

PROB_PREFIX = "prob_"
CKPT_PREFIX = "@"
CV_COLUMNS = ["part", "rows", "f1_macro", "accuracy"]   # the printed / Markdown table
_CKPT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def make_folds(cfg: Config, log=print) -> Path:
    """Assign a fold to every training row (stratified; grouped when a group column is set).

    The data check runs first, so bad data fails here, before training, with every problem listed.
    """
    path = cfg.folds_file
    with locked(path.with_name(f".{path.name}.lock"), f"the folds file {path}", log):
        return _make_folds(cfg, log)


def _make_folds(cfg: Config, log) -> Path:
    from pipeline.data.check import check_data

    report = check_data(cfg).raise_if_failed()
    if report.warnings:
        log(report.format())
    table = read_train_table(cfg)
    groups = table["group"].to_numpy() if cfg.data.group_column else None
    folds = assign_folds(table["stratify"].to_numpy(), cfg.folds.n_splits, cfg.seed, groups=groups)
    out = pd.DataFrame({"row": np.arange(len(table)), "image": table["source"],
                        "label": table["label"], "group": table["group"], "fold": folds})
    write_csv_atomic(cfg.folds_file, out)
    scored = cfg.data.true_label_column or cfg.data.label_column
    log(f"[folds] {cfg.folds_file}: {len(out)} rows, {out['group'].nunique()} groups, "
        f"{cfg.folds.n_splits} folds; validation rows per class (column '{scored}', which validation "
        "is scored on) and fold:")
    log(fold_class_counts(table["true_label"].to_numpy(), folds).to_string())
    if cfg.data.stratify_column:
        log(f"[folds] stratified on '{cfg.data.stratify_column}'")
    return cfg.folds_file


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(PROB_PREFIX)]


def prob_columns(classes: list) -> list[str]:
    """The probability columns of `classes`, in class order (``prob_<class>``)."""
    return [f"{PROB_PREFIX}{c}" for c in classes]


def fold_probs_frame(ids, probs: np.ndarray, classes: list) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids})
    for c, name in enumerate(classes):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, c]
    return frame


def class_ids(labels, classes: list, where: str) -> np.ndarray:
    """Labels (any dtype) → indices into `classes`, compared as text; unknown labels are an error."""
    index = {str(c): i for i, c in enumerate(classes)}
    text = pd.Series(labels).astype(str)
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:10]} are not among the model's classes {classes}; "
                         "the train CSV changed since training: rerun `make folds train`")
    return text.map(index).to_numpy(dtype=np.int64)


def view_columns(frame: pd.DataFrame, classes: list, prefix: str = "") -> dict[str, list[str]]:
    """``{view: [its prob columns in class order]}`` of an oof_tta frame, in file order.

    With ``prefix=CKPT_PREFIX``, the per-checkpoint columns instead (names without the ``@``).
    """
    names: dict[str, None] = {}
    for col in frame.columns:
        head, sep, rest = col.partition(":")
        if not sep or not rest.startswith(PROB_PREFIX) or head.startswith(PROB_PREFIX):
            continue  # not a view column (a merged column of a class named with ':' starts with prob_)
        if head.startswith(CKPT_PREFIX) if prefix else not head.startswith(CKPT_PREFIX):
            names.setdefault(head[len(prefix):], None)
    return {n: [f"{prefix}{n}:{PROB_PREFIX}{c}" for c in classes] for n in names}


# ---- checkpoints ---------------------------------------------------------------------------------

def checkpoint_names(cfg: Config, checkpoints=None) -> list[str]:
    """The checkpoints each fold predicts with (config key ``ensemble.checkpoints``, default [best])."""
    names = checkpoints if checkpoints is not None else cfg.ensemble.checkpoints
    if isinstance(names, str) or not names:
        raise ValueError(f"ensemble.checkpoints: expected a non-empty list such as [best, last], got {names!r}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _CKPT_NAME.match(name):
            raise ValueError(f"ensemble.checkpoints: {name!r} is not a checkpoint name (letters, digits, "
                             "'_', '-', '.'; 'best' is weights.safetensors, NAME is NAME.safetensors)")
        if name not in out:
            out.append(name)
    return out


def checkpoint_path(cfg: Config, fold: int, name: str) -> Path:
    """``best`` → ``fold_<k>/weights.safetensors`` (the train target); NAME → ``fold_<k>/NAME.safetensors``."""
    return cfg.fold_dir(fold) / ("weights.safetensors" if name == "best" else f"{name}.safetensors")


def _checkpoint_paths(cfg: Config, fold: int, names: list[str]) -> dict[str, Path]:
    paths = {n: checkpoint_path(cfg, fold, n) for n in names}
    missing = [f"'{n}' ({p})" for n, p in paths.items() if not p.is_file()]
    if missing:
        how = ("run `make train`" if list(paths) == ["best"] else
               "the trainer writes weights.safetensors ('best') and, when it keeps it, last.safetensors "
               "('last'): retrain this fold with such a trainer, or drop the name from ensemble.checkpoints")
        raise FileNotFoundError(f"fold {fold}: checkpoint(s) listed in ensemble.checkpoints are missing: "
                                f"{', '.join(missing)}; {how}")
    return paths


# ---- predict ---------------------------------------------------------------------------------------

def _predict_images(model, dataset, normalize, views, cfg: Config, device, per_view: bool):
    """TTA probabilities for a dataset's images: (merged (N, C), per-view (V, N, C) or None)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.tta.batch_size, num_workers=loader_workers(cfg.train.num_workers, device),
        pin_memory=device.type == "cuda")
    merged, each = [], []
    for images, _ in loader:
        images = normalize(images.to(device, non_blocking=True))   # uint8 cache batches → floats
        if per_view:
            v, m = predict_tta_with_views(model, images, views, cfg.tta.merge)
            each.append(v.float().cpu())
        else:
            m = predict_tta(model, images, views, cfg.tta.merge)
        merged.append(m.float().cpu())
    return torch.cat(merged).numpy(), (torch.cat(each, dim=1).numpy() if per_view else None)


def _oof_tta_frame(rows, labels, fold: int, classes: list, merged, views, per_view, per_ckpt) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {"row": np.asarray(rows), "label": np.asarray(labels),
                                   "fold": np.full(len(rows), fold)}
    for c, name in enumerate(classes):
        cols[f"{PROB_PREFIX}{name}"] = merged[:, c]
    for v, view in enumerate(views):
        for c, name in enumerate(classes):
            cols[f"{view.name}:{PROB_PREFIX}{name}"] = per_view[v][:, c]
    if len(per_ckpt) > 1:
        for ckpt, probs in per_ckpt.items():
            for c, name in enumerate(classes):
                cols[f"{CKPT_PREFIX}{ckpt}:{PROB_PREFIX}{name}"] = probs[:, c]
    return pd.DataFrame(cols)


def _f1(y: np.ndarray, probs: np.ndarray) -> float:
    return macro_f1(y, probs) if len(y) else float("nan")


def predict_fold(cfg: Config, fold: int, log=print, checkpoints=None) -> Path:
    """Predict one fold's validation rows (every view) and the test set (merged) with TTA.

    Each checkpoint in ``ensemble.checkpoints`` (default ``[best]``) predicts; their probabilities are
    averaged. Writes ``fold_<k>/oof_tta.csv`` first, then ``fold_<k>/test_probs.csv`` (the Make target),
    both atomically, holding the fold's lock (a fold being trained is predicted once it is done).
    Every view of a batch goes through the model in one forward pass.
    """
    if not 0 <= fold < cfg.folds.n_splits:
        raise ValueError(f"fold {fold} does not exist: folds.n_splits is {cfg.folds.n_splits}")
    with folder_lock(cfg.fold_dir(fold), f"fold {fold} of {cfg.exp_dir}", log):
        return _predict_fold(cfg, fold, log, checkpoints)


def _predict_fold(cfg: Config, fold: int, log, checkpoints) -> Path:
    device = resolve_device(cfg.train.device)
    paths = _checkpoint_paths(cfg, fold, checkpoint_names(cfg, checkpoints))
    views = parse_views(cfg.tta.views)
    normalize = BatchNormalize(cfg.augment.mean, cfg.augment.std).to(device)
    table = load_fold_table(cfg)
    rows = np.flatnonzero(table["fold"].to_numpy() == fold)
    labels = table["true_label"].to_numpy()[rows]
    train_paths = table["image"].to_numpy()
    test = read_test_table(cfg)
    # The training images' cache is the one training built; the test set gets its own.
    val_set = make_dataset(cfg.augment, train_paths, rows, decoded=decoded_for(cfg, train_paths, log=log))
    test_set = make_dataset(cfg.augment, test["image"].to_numpy(), decoded=decoded_for(cfg, test["image"], log=log))
    classes, oof_merged, oof_views, test_probs = None, {}, {}, {}
    for name, path in paths.items():
        model, meta = load_trained_model(path, device)
        if classes is not None and meta["classes"] != classes:
            raise ValueError(f"fold {fold}: checkpoint '{name}' ({path}) has classes {meta['classes']}, "
                             f"'{next(iter(paths))}' has {classes}; retrain the fold")
        classes = meta["classes"]
        oof_merged[name], oof_views[name] = _predict_images(model, val_set, normalize, views, cfg, device, True)
        test_probs[name], _ = _predict_images(model, test_set, normalize, views, cfg, device, False)
    merged = np.mean(list(oof_merged.values()), axis=0)
    per_view = np.mean(list(oof_views.values()), axis=0)
    y = class_ids(labels, classes, f"{cfg.folds_file} fold {fold}")
    frame = _oof_tta_frame(rows, labels, fold, classes, merged, views, per_view, oof_merged)
    oof_out, out = cfg.fold_dir(fold) / "oof_tta.csv", cfg.fold_dir(fold) / "test_probs.csv"
    write_csv_atomic(oof_out, frame, float_format="%.7g")   # float32 precision; about half the text
    write_csv_atomic(out, fold_probs_frame(test["id"], np.mean(list(test_probs.values()), axis=0), classes))
    ckpts = f" x {len(paths)} checkpoints ({', '.join(paths)})" if len(paths) > 1 else ""
    log(f"[predict] fold {fold}: {len(views)} views ({', '.join(v.name for v in views)}){ckpts}; "
        f"validation macro-F1 {_f1(y, per_view[0]):.4f} identity → {_f1(y, merged):.4f} TTA "
        f"({len(rows)} rows → {oof_out.name}); {len(test)} test images → {out}")
    return out


# ---- the cross-validation table --------------------------------------------------------------------

def metrics_row(part: str, y: np.ndarray, probs: np.ndarray, predicted=None, **extra) -> dict:
    """One CV-table row: the classification metrics of `probs` (decisions `predicted`, default their
    argmax) plus the log-loss."""
    probs = np.asarray(probs, dtype=np.float64)
    return {"part": part, "rows": int(len(y)), **classification_metrics(y, probs, predicted),
            "log_loss": log_loss(probs, y) if len(y) else float("nan"), **extra}


def _read_fold_probs(cfg: Config, name: str) -> tuple[list[pd.DataFrame], list]:
    frames, classes = [], None
    for k in range(cfg.folds.n_splits):
        path = cfg.fold_dir(k) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make train ensemble` (fold {k} is not done)")
        frame = read_table(path)
        fold_classes = read_sidecar(cfg.fold_dir(k) / "weights.safetensors")["classes"]
        if classes is not None and fold_classes != classes:
            raise ValueError(f"fold {k} was trained on classes {fold_classes}, fold 0 on {classes}; retrain")
        classes = fold_classes
        frames.append(frame)
    return frames, classes


def read_test_probs(cfg: Config) -> tuple[pd.Series, np.ndarray, list]:
    """Every fold's test_probs.csv: (the test ids, probabilities (folds, ids, classes), classes)."""
    frames, classes = _read_fold_probs(cfg, "test_probs.csv")
    ids = frames[0]["id"]
    for k, f in enumerate(frames):
        if not f["id"].equals(ids):
            raise ValueError(f"fold {k}'s test predictions cover other ids than fold 0's; rerun `make ensemble`")
    return ids, np.stack([f[prob_columns(classes)].to_numpy() for f in frames]), classes


def _oof_table(cfg: Config) -> tuple[pd.DataFrame, list]:
    frames, classes = _read_fold_probs(cfg, "oof.csv")
    oof = pd.concat(frames).sort_values("row").reset_index(drop=True)
    return oof, classes


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
    return pd.concat(frames).sort_values("row").reset_index(drop=True)


def cv_table(oof: pd.DataFrame, classes: list, oof_tta: pd.DataFrame | None = None, merge: str = "mean",
             tau: float | None = None, prior: np.ndarray | None = None) -> pd.DataFrame:
    """Each fold and the whole out-of-fold set without TTA (oof.csv); with TTA, each view alone and each
    checkpoint (oof_tta.csv); then the TTA probabilities after logit adjustment by `tau` (when given)."""
    y = class_ids(oof["label"], classes, "oof.csv")
    probs = oof[_prob_columns(oof)].to_numpy()
    folds = oof["fold"].to_numpy()
    rows = [metrics_row(f"fold {k}", y[folds == k], probs[folds == k]) for k in sorted(np.unique(folds))]
    rows.append(metrics_row("out-of-fold, no TTA", y, probs))
    if oof_tta is not None:
        y_tta = class_ids(oof_tta["label"], classes, "oof_tta.csv")
        tta = oof_tta[prob_columns(classes)].to_numpy()
        rows.append(metrics_row(f"out-of-fold, TTA ({merge})", y_tta, tta))
        for view, cols in view_columns(oof_tta, classes).items():
            rows.append(metrics_row(f"out-of-fold, view {view}", y_tta, oof_tta[cols].to_numpy()))
        for ckpt, cols in view_columns(oof_tta, classes, CKPT_PREFIX).items():
            rows.append(metrics_row(f"out-of-fold, checkpoint {ckpt}", y_tta, oof_tta[cols].to_numpy()))
        y, probs = y_tta, tta
    if tau is not None and prior is not None:
        what = "TTA" if oof_tta is not None else "no TTA"
        rows.append(metrics_row(f"out-of-fold, {what} + logit adjustment tau={tau:g}", y,
                                logit_adjust(probs, prior, tau)))
    return pd.DataFrame(rows)


def _escape_md(value) -> str:
    return str(value).strip().replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, columns: list[str] | None = None, float_format: str = "%.4f") -> str:
    """A GitHub-flavoured Markdown table of `frame` (numbers right-aligned, `|` escaped).

    >>> print(markdown_table(pd.DataFrame({"part": ["a|b"], "f1": [0.5]})))
    | part | f1 |
    | :--- | ---: |
    | a\\|b | 0.5000 |
    """
    columns = columns or list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    lines = ["| " + " | ".join(_escape_md(c) for c in columns) + " |",
             "| " + " | ".join("---:" if n else ":---" for n in numeric) + " |"]
    for _, row in frame[columns].iterrows():
        cells = [(float_format % v if isinstance(v, float) else str(v)) if n else _escape_md(v)
                 for v, n in zip(row, numeric)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_cv(cv: pd.DataFrame, out_dir: Path, title: str, notes: list[str] = (), log=print) -> None:
    """Save ``cv.csv`` (every metric) and ``cv.md`` (the narrow table), and print the narrow table."""
    write_csv_atomic(out_dir / "cv.csv", cv)
    md = [f"# {title}", "", markdown_table(cv, CV_COLUMNS), ""] + ([*notes, ""] if notes else [])
    write_text_atomic(out_dir / "cv.md", "\n".join(md))
    log(f"[cv] {title}:\n" + text_table(cv, CV_COLUMNS) + "".join(f"\n{n}" for n in notes))


def text_table(frame: pd.DataFrame, columns: list[str], float_format: str = "%.4f") -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    cells = [[(float_format % v if isinstance(v, float) else str(v)) if n else str(v)
              for v, n in zip(row, numeric)] for row in frame[columns].itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    fmt = lambda vals: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric))
    return "\n".join([fmt(columns)] + [fmt(r) for r in cells]).rstrip()


# ---- ensemble ----------------------------------------------------------------------------------------

def logit_adjust_settings(cfg: Config, logit_adjust_on=None, tau_grid=None) -> tuple[bool, list[float]]:
    """(apply it?, tau grid): the arguments where given, else ``ensemble.logit_adjust`` / ``ensemble.tau_grid``."""
    on = cfg.ensemble.logit_adjust if logit_adjust_on is None else logit_adjust_on
    grid = cfg.ensemble.tau_grid if tau_grid is None else tau_grid
    return bool(on), [float(t) for t in grid]


def logit_adjust_record(applied: bool, tau: float, chosen_tau: float, grid, prior: np.ndarray, curve) -> dict:
    """The ``logit_adjust`` entry of ensemble.json / blend.json (`score` reads its tau and prior back)."""
    return {"applied": bool(applied), "tau": tau, "chosen_tau": chosen_tau, "grid": grid,
            "prior": prior.round(6).tolist(), "oof_f1_by_tau": [[t, round(f, 6)] for t, f in curve]}


def ensemble(cfg: Config, log=print, logit_adjust_on: bool | None = None, tau_grid=None) -> Path:
    """Vote the folds' test probabilities into the submission; report the cross-validation table.

    With ``ensemble.logit_adjust`` (or `logit_adjust_on`), every fold's test probabilities are divided
    by the class priors to the power tau before voting, tau chosen on OOF macro-F1 over
    ``ensemble.tau_grid``. The CV table always shows what the chosen tau does to the OOF score.
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
    prior = class_priors(y, len(classes))
    tau, curve = choose_tau(base[prob_columns(classes)].to_numpy(), y, prior, grid)
    cv = cv_table(oof, classes, oof_tta, cfg.tta.merge, tau, prior)
    state = "applied to the test probabilities" if adjust else "not applied (ensemble.logit_adjust: false)"
    notes = [f"Logit adjustment p / prior^tau: tau={tau:g} chosen on OOF macro-F1 over "
             f"[{', '.join(f'{t:g}' for t in grid)}]; {state}."]
    ckpts = list(view_columns(oof_tta, classes, CKPT_PREFIX)) if oof_tta is not None else []
    if ckpts:
        notes.append(f"The TTA, view and logit-adjustment rows average the checkpoints ({', '.join(ckpts)}); "
                     "the fold and 'no TTA' rows are the trainer's oof.csv (best weights).")
    write_cv(cv, cfg.exp_dir, f"Cross-validation: {cfg.experiment}", notes, log)

    ids, probs, _ = read_test_probs(cfg)
    applied_tau = tau if adjust else 0.0
    if applied_tau:
        probs = logit_adjust(probs, prior, applied_tau)
    picked = vote(probs, cfg.ensemble.voting)
    labels = [classes[i] for i in picked]
    write_json_atomic(cfg.exp_dir / "ensemble.json", {
        "voting": cfg.ensemble.voting, "folds": len(probs), "classes": classes,
        "checkpoints": checkpoint_names(cfg), "oof_source": "oof_tta.csv" if oof_tta is not None else "oof.csv",
        "logit_adjust": logit_adjust_record(adjust, applied_tau, tau, grid, prior, curve)})
    out = cfg.exp_dir / "submission.csv"
    write_submission(cfg.data.sample_submission, cfg.data.id_column, cfg.data.target_column, ids, labels, out)
    adj = f", logit adjustment tau={applied_tau:g}" if applied_tau else ""
    log(f"[ensemble] {cfg.ensemble.voting} voting over {len(probs)} folds{adj} → {out}")
    return out


def _vote_metrics(y: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    """The metrics of a vote: its decisions, and ROC-AUC from its scores."""
    return classification_metrics(y, vote_scores(probs, mode), vote(probs, mode))


def score(cfg: Config, log=print) -> pd.DataFrame:
    """Score the submission, each fold alone and every voting mode on the held-back test labels.

    Each vote is scored from its own scores (soft/geometric: the averaged probabilities, hard: the
    vote shares, rank: the rank averages), so ROC-AUC ranks rows by what the vote computed; the
    submission's row has labels only, so its ROC-AUC is empty.
    """
    if not cfg.data.test_labels:
        raise ValueError("data.test_labels is not set: scoring needs the true test labels")
    ids, probs, classes = read_test_probs(cfg)
    truth = read_text_csv(cfg.data.test_labels).set_index(cfg.data.id_column)
    missing = sorted(set(ids) - set(truth.index))
    if missing:
        raise ValueError(f"{cfg.data.test_labels}: no true label for {len(missing)} test id(s), e.g. {missing[:5]}")
    y = class_ids(truth.loc[ids, cfg.data.target_column], classes, str(cfg.data.test_labels))
    rows = [{"model": f"fold {k}", **classification_metrics(y, probs[k])} for k in range(len(probs))]
    settings = cfg.exp_dir / "ensemble.json"
    adjustment = json.loads(settings.read_text()).get("logit_adjust", {}) if settings.is_file() else {}
    tau = float(adjustment.get("tau", 0.0))
    for mode in VOTING_MODES:
        chosen = " (submission)" if mode == cfg.ensemble.voting and not tau else ""
        rows.append({"model": f"{mode} vote{chosen}", **_vote_metrics(y, probs, mode)})
    if tau:
        adjusted = logit_adjust(probs, np.asarray(adjustment["prior"]), tau)
        rows.append({"model": f"{cfg.ensemble.voting} vote + logit adjustment tau={tau:g} (submission)",
                     **_vote_metrics(y, adjusted, cfg.ensemble.voting)})
    sub = read_text_csv(cfg.exp_dir / "submission.csv")
    sub_y = class_ids(sub[cfg.data.target_column], classes, "submission.csv")
    rows.append({"model": "submission.csv", **label_metrics(y, sub_y, len(classes)), "roc_auc": float("nan")})
    table = pd.DataFrame(rows)
    write_csv_atomic(cfg.exp_dir / "score.csv", table)
    log(table.to_string(index=False, float_format="%.4f"))
    return table
