"""The `pseudo` stage: a finished experiment's voted test probabilities → this experiment's pseudo-label list.

The source's folds' test probabilities are averaged (after the source's logit adjustment when its
submission applied one); each test image's most probable class is its pseudo-label and that probability
its confidence. Images at or above ``pseudo.threshold`` are kept, at most ``pseudo.max_per_class`` of
the test set per class (the most confident first), so that easy classes do not swamp the class prior.
Only predictions are read here, never ``data.test_labels``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config, ConfigError, load_config
from pipeline.data.pseudo_labels import PSEUDO_COLUMNS, pseudo_labels_path
from pipeline.data.tables import model_classes, read_test_table, read_train_table
from pipeline.fileio import file_sha256, read_table, write_text_if_changed
from pipeline.ensemble.record import apply_submission
from pipeline.predict.probs import read_fold_probs, read_test_probs
from pipeline.results.submission import submission_format, submission_metrics
from pipeline.ensemble.voting import logit_adjust
from pipeline.train.models import read_sidecar

__all__ = ["select_pseudo", "source_config", "voted_test_probs", "build_pseudo_labels", "source_cv_rows",
           "source_score_rows", "pseudo_note"]


def select_pseudo(probs: np.ndarray, threshold: float, max_per_class: int | None = None) -> np.ndarray:
    """Positions of the rows of `probs` (N, C) to pseudo-label, in row order.

    A row is kept when its largest probability is at least `threshold`; with `max_per_class`, each
    predicted class keeps only its `max_per_class` most confident rows (ties: the earlier row).

    >>> p = np.array([[0.95, 0.05], [0.5, 0.5], [0.99, 0.01], [0.1, 0.9]])
    >>> select_pseudo(p, 0.9).tolist(), select_pseudo(p, 0.9, max_per_class=1).tolist()
    ([0, 2, 3], [2, 3])
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    keep = np.flatnonzero(confidence >= threshold)
    if max_per_class is not None:
        by_confidence = keep[np.argsort(-confidence[keep], kind="stable")]
        kept_per_class: dict[int, int] = {}
        chosen = []
        for row in by_confidence:
            c = int(label[row])
            if kept_per_class.get(c, 0) < max_per_class:
                kept_per_class[c] = kept_per_class.get(c, 0) + 1
                chosen.append(row)
        keep = np.sort(np.asarray(chosen, dtype=np.int64))
    return keep


def source_config(cfg: Config) -> Config:
    """The source experiment's resolved config (``<output_dir>/<pseudo.source>/config.yaml``)."""
    path = Path(cfg.output_dir) / str(cfg.pseudo.source) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"pseudo.source: {path} not found: the source experiment '{cfg.pseudo.source}' has "
                                "not been run; run it first (`make folds train ensemble` with its config)")
    return load_config(path)


def _check_same_folds(cfg: Config, source: Config) -> None:
    """The source must have been trained on this experiment's folds file, as it is now, and its classes."""
    if source.folds.n_splits != cfg.folds.n_splits:
        raise ConfigError(f"pseudo.source: '{source.experiment}' has {source.folds.n_splits} folds, this experiment "
                          f"{cfg.folds.n_splits}; a pseudo-label round trains on the same folds")
    ours = file_sha256(cfg.folds_file)
    for k in range(cfg.folds.n_splits):
        sidecar = source.fold_dir(k) / "weights.safetensors"
        theirs = read_sidecar(sidecar).get("folds_sha256")
        if theirs != ours:
            raise ConfigError(f"pseudo.source: {sidecar.with_suffix('.json')} was trained on other folds than "
                              f"{cfg.folds_file} (folds file sha256 differs); set folds.name to the source's folds "
                              f"({source.folds_file.stem}) or rerun the source on these folds")


def voted_test_probs(source: Config) -> tuple[pd.Series, np.ndarray, list]:
    """(test ids, averaged fold probabilities (N, C), classes) of a finished experiment.

    Finished means its ``submission.csv`` exists; its chain (ensemble.json's ``submission`` entry: the views,
    checkpoints and per-class factors it applied) is applied here too, so the pseudo-labels are the classes its
    submission's probabilities favour (their soft vote). A source ensembled by an older version applies its
    recorded logit adjustment only.
    """
    submission = source.exp_dir / "submission.csv"
    if not submission.is_file():
        raise FileNotFoundError(f"pseudo.source: {submission} is missing: the source experiment "
                                f"'{source.experiment}' is not finished; run `make ensemble` for it first")
    ids, probs, classes = read_test_probs(source)
    settings = source.exp_dir / "ensemble.json"
    record = json.loads(settings.read_text()) if settings.is_file() else {}
    if "submission" in record:
        probs, _, _ = apply_submission(record["submission"], read_fold_probs(source, "test_probs.csv")[0])
    elif float(record.get("logit_adjust", {}).get("tau", 0.0)):
        adjust = record["logit_adjust"]
        probs = logit_adjust(probs, np.asarray(adjust["prior"]), float(adjust["tau"]))
    return ids, probs.mean(axis=0), classes


def build_pseudo_labels(cfg: Config, log=print) -> Path:
    """Write ``outputs/<exp>/pseudo_labels.csv`` (rewritten only when its content changes)."""
    if not cfg.pseudo.source:
        raise ConfigError("pseudo.source is not set: name the finished experiment whose test predictions "
                          "label this round's extra training images")
    source = source_config(cfg)
    ids, probs, classes = voted_test_probs(source)
    ours = model_classes(read_train_table(cfg))
    if [str(c) for c in classes] != [str(c) for c in ours]:
        raise ConfigError(f"pseudo.source: '{source.experiment}' was trained on classes {classes}, this "
                          f"experiment's train CSV has {ours}; a pseudo-label round needs the same classes")
    _check_same_folds(cfg, source)
    test = read_test_table(cfg).set_index("id")
    unknown = sorted(set(ids) - set(test.index))
    if unknown:
        raise ValueError(f"pseudo.source: '{source.experiment}' predicted test ids that "
                         f"{cfg.data.sample_submission} lacks, e.g. {unknown[:5]}; it predicted another test set")
    cap = None if cfg.pseudo.max_per_class is None else math.floor(cfg.pseudo.max_per_class * len(ids))
    keep = select_pseudo(probs, cfg.pseudo.threshold, cap)
    frame = pd.DataFrame({"id": ids.to_numpy()[keep], "image": test.loc[ids.to_numpy()[keep], "image"].to_numpy(),
                          "label": [classes[i] for i in probs[keep].argmax(axis=1)],
                          "confidence": probs[keep].max(axis=1).round(6)})[PSEUDO_COLUMNS]
    out = pseudo_labels_path(cfg)
    changed = write_text_if_changed(out, frame.to_csv(index=False))
    counts = frame["label"].value_counts().reindex([str(c) for c in classes], fill_value=0)
    log(f"[pseudo] {len(frame)} of {len(ids)} test images from '{source.experiment}' at confidence >= "
        f"{cfg.pseudo.threshold:g}" + (f", at most {cap} per class" if cap is not None else "")
        + f" → {out}{'' if changed else ' (unchanged)'}; per class: "
        + ", ".join(f"{c}: {n}" for c, n in counts.items()))
    return out


def source_cv_rows(cfg: Config) -> list[dict]:
    """The source experiment's out-of-fold rows of its cv.csv, renamed 'round 1 (<source>): ...'.

    The pseudo-label round trains on the same folds, so these rows compare with its own.
    """
    if not cfg.pseudo.source:
        return []
    path = Path(cfg.output_dir) / cfg.pseudo.source / "cv.csv"
    if not path.is_file():
        raise FileNotFoundError(f"pseudo.source: {path} is missing: run `make ensemble` for '{cfg.pseudo.source}'")
    table = read_table(path)
    table = table[table["part"].str.startswith("out-of-fold")].copy()
    table["part"] = f"round 1 ({cfg.pseudo.source}): " + table["part"]
    return table.to_dict("records")


def source_score_rows(cfg: Config, ids, y: np.ndarray, classes: list) -> list[dict]:
    """`make score`'s row for the source experiment's submission (the round this one started from)."""
    if not cfg.pseudo.source:
        return []
    path = Path(cfg.output_dir) / cfg.pseudo.source / "submission.csv"
    if not path.is_file():
        return []
    metrics = submission_metrics(path, submission_format(cfg, classes), cfg.data.id_column, cfg.data.target_column,
                                 ids, y, classes)
    return [{"model": f"round 1 ({cfg.pseudo.source}): submission.csv", **metrics}]


def pseudo_note(cfg: Config) -> list[str]:
    """The CV table's note on the pseudo-labels (how many, from where), or none without them."""
    if not cfg.pseudo.source:
        return []
    n = len(read_table(pseudo_labels_path(cfg)))
    cap = "" if cfg.pseudo.max_per_class is None else f", at most {cfg.pseudo.max_per_class:g} of the test set per class"
    return [f"Pseudo-labels: {n} test images voted by '{cfg.pseudo.source}' at confidence >= {cfg.pseudo.threshold:g}"
            f"{cap} joined every fold's training part (never its validation; list: pseudo_labels.csv). "
            f"The 'round 1' rows are '{cfg.pseudo.source}''s own cv.csv, on the same folds."]
