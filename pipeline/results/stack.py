"""Stacking: a multinomial logistic regression on the members' out-of-fold log-probabilities.

    make stack EXPS="effnet convnext"      →  outputs/stack-effnet-convnext/submission.csv
    python -m pipeline stack effnet convnext [--C auto|0.1] [--oof tta|plain|auto] [--out DIR]

Where a blend learns one weight per experiment, the meta-model learns, per class, how much each
member's log-probability of every class counts (and a bias per class), so it can trust one member on
some classes and another elsewhere. It has many more parameters than a blend, so it is scored nested
only: each fold's rows are predicted by a meta-model fitted on the other folds' OOF rows. The test
prediction is the meta-model fitted on every OOF row, applied to the members' mean test probabilities.
Fold models differ in how they err, so a meta-model fitted on some folds' OOF rows learns quirks of
those folds' models that do not carry over; its regularisation is therefore chosen (by default) by
leave-one-fold-out cross-validation inside the rows it is fitted on.
Members must share folds and classes (:func:`pipeline.results.blend.check_same_folds`).

Writes, in ``outputs/stack-<a>-<b>...`` (or `out`): ``cv.csv``/``cv.md`` (each member, the plain vote,
the blend with nested fitted weights and the nested stack), ``stack.json``, ``oof.csv`` (the nested
stack probabilities), ``test_probs.csv`` and, last, ``submission.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # heavy imports happen when a stack runs; the CLI reads DEFAULT_C at every Make parse
    import numpy as np

    from pipeline.config import Config

__all__ = ["DEFAULT_C", "C_GRID", "parse_C", "stack_features", "fit_meta", "chosen_C", "meta_proba", "nested_stack",
           "stack"]

DEFAULT_C = "auto"   # inverse L2 strength, chosen by cross-validation; the log-probabilities share one scale: no scaler
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_PROB_FLOOR = 1e-6   # log(0) is -inf; a member's "impossible" costs at most log(1e-6) ≈ -13.8


def parse_C(text: str) -> float | str:
    """``--C``: ``auto`` or a positive number.

    >>> parse_C("auto"), parse_C("0.1")
    ('auto', 0.1)
    """
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"--C must be 'auto' or a positive number, got {text!r}")
    return value


def stack_features(probs) -> np.ndarray:
    """(M members, N rows, C classes) probabilities → (N, M·C) log-probabilities, floored at 1e-6.

    >>> stack_features([[[0.5, 0.5]], [[1.0, 0.0]]]).round(2)      # member 0's two columns, then member 1's
    array([[ -0.69,  -0.69,   0.  , -13.82]])
    """
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member probabilities must be (members, rows, classes), got shape {p.shape}")
    return np.log(np.clip(p, _PROB_FLOOR, 1.0)).transpose(1, 0, 2).reshape(p.shape[1], -1)


def fit_meta(features: np.ndarray, y: np.ndarray, C: float | str = DEFAULT_C, folds: np.ndarray | None = None):
    """The meta-model: scikit-learn's multinomial logistic regression (lbfgs, L2 with strength 1/C).

    ``C="auto"`` chooses C from :data:`C_GRID` by the log-loss of leave-one-fold-out fits over the
    given rows' own `folds` (``LogisticRegressionCV``), then refits on all of them: the other folds'
    OOF rows come from other fold models, so C is chosen for predicting a model it was not fitted on.
    """
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    if len(set(y.tolist())) < 2:
        raise ValueError("stacking needs out-of-fold rows of two or more classes to fit on")
    if C == "auto":
        if folds is None or len(np.unique(folds)) < 2:
            raise ValueError("--C auto chooses C by cross-validation over the training rows' folds, which needs "
                             "3 or more folds (folds.n_splits) for a nested score; pass a number, e.g. --C 0.1")
        with warnings.catch_warnings():   # scikit-learn 1.9 announces new defaults that do not change this fit
            warnings.simplefilter("ignore", FutureWarning)
            return LogisticRegressionCV(Cs=list(C_GRID), cv=PredefinedSplit(folds), scoring="neg_log_loss",
                                        max_iter=2000).fit(features, y)
    if not isinstance(C, (int, float)) or not C > 0:
        raise ValueError(f"--C must be a positive number or 'auto', got {C!r}")
    return LogisticRegression(C=C, max_iter=2000).fit(features, y)


def chosen_C(model) -> float:
    """The C the meta-model was fitted with (chosen by cross-validation for ``C="auto"``)."""
    import numpy as np

    return float(np.ravel(model.C_)[0]) if hasattr(model, "C_") else float(model.C)   # C_: array or float


def meta_proba(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities of `model`; a class absent from its training rows gets 0."""
    import numpy as np

    out = np.zeros((len(features), n_classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out


def nested_stack(probs, y: np.ndarray, folds: np.ndarray, C: float | str = DEFAULT_C) -> tuple[np.ndarray, dict]:
    """(N, C) out-of-fold stack probabilities, each fold's rows from a meta-model fitted on the other folds
    (C chosen on those folds alone with ``"auto"``); and ``{fold: C used}``."""
    from pipeline.ensemble.nested import apply_per_fold, fit_per_fold

    x = stack_features(probs)
    n_classes = x.shape[1] // len(probs)
    fitted = fit_per_fold(folds, lambda rest: fit_meta(x[rest], y[rest], C, folds[rest]))
    return (apply_per_fold(folds, fitted, lambda model, held: meta_proba(model, x[held], n_classes)),
            {k: chosen_C(model) for k, model in fitted.items()})


def _cv_rows(members, y: np.ndarray, nested: np.ndarray) -> list[dict]:
    """Each member, the plain vote, the blend (weights nested) and the stack (nested), on the same OOF rows."""
    import numpy as np

    from pipeline.results.blend import nested_blend_weights
    from pipeline.results.cv_table import metrics_row
    from pipeline.ensemble.nested import apply_per_fold
    from pipeline.ensemble.voting import soft_vote

    oof, folds = np.stack([m.oof for m in members]), members[0].folds
    blended = apply_per_fold(folds, nested_blend_weights(oof, y, folds),
                             lambda w, held: soft_vote(oof[:, held], w))
    return [*(metrics_row(f"{m.name} ({m.oof_source})", y, m.oof) for m in members),
            metrics_row("plain vote (soft, uniform weights)", y, soft_vote(oof)),
            metrics_row("blend soft, fitted weights, nested", y, blended),
            metrics_row("stack: logistic regression on log-probabilities, nested (submission)", y, nested)]


def stack(experiments: list[str | Config], output_dir: str | Path = "outputs", out: str | Path | None = None,
          oof_source: str = "auto", C: float | str = DEFAULT_C, log=print) -> Path:
    """Stack experiments (names under `output_dir`, or configs) into one submission; returns its path."""
    import numpy as np
    import pandas as pd

    from pipeline.fileio import write_json_atomic
    from pipeline.metrics import metric_value
    from pipeline.results.blend import load_members, write_blend_probs
    from pipeline.results.cv_table import write_cv
    from pipeline.predict.probs import class_ids
    from pipeline.results.submission import submission_format, write_submission

    members = load_members(experiments, output_dir, oof_source, log)
    first, names = members[0], [m.name for m in members]
    classes, metric = first.classes, first.cfg.competition.metric
    y = class_ids(first.labels, classes, f"{first.name} OOF labels")
    oof = np.stack([m.oof for m in members])
    nested, fold_Cs = nested_stack(oof, y, first.folds, C)
    meta = fit_meta(stack_features(oof), y, C, first.folds)    # every OOF row: what the test set gets
    test = meta_proba(meta, stack_features(np.stack([m.test for m in members])), len(classes))

    out_dir = Path(out) if out is not None else Path(output_dir) / ("stack-" + "-".join(names))
    how = "chosen by leave-one-fold-out log-loss on the rows it is fitted on" if C == "auto" else "fixed"
    notes = [f"Meta-model: multinomial logistic regression on the {len(members)} members' log-probabilities "
             f"({len(members) * len(classes)} features, {first.oof_source}), C {how}. Its CV row is nested: each "
             "fold's rows predicted by a meta-model fitted (and its C chosen) on the other folds' rows only "
             f"(C {'/'.join(f'{c:g}' for c in fold_Cs.values())}). The test set is predicted by the meta-model "
             f"fitted on all {len(y)} OOF rows (C={chosen_C(meta):g}).",
             f"Folds: {first.folds_file} (sha256 {first.folds_hash[:12]}, the same split for every experiment).",
             f"For contrast, not a score: scored on the very rows it was fitted on, that meta-model shows {metric} "
             f"{metric_value(metric, y, meta_proba(meta, stack_features(oof), len(classes))):.4f}; the nested row "
             "is the honest one."]
    write_cv(pd.DataFrame(_cv_rows(members, y, nested)), out_dir, f"Stack: {' + '.join(names)}", notes, log, metric)
    write_blend_probs(out_dir, first, nested, test)
    write_json_atomic(out_dir / "stack.json", {
        "experiments": names, "meta_model": "LogisticRegression", "C": C, "C_applied": chosen_C(meta),
        "nested_C": fold_Cs, "features": "log-probabilities",
        "probability_floor": _PROB_FLOOR, "oof_source": first.oof_source, "folds_file": str(first.folds_file),
        "folds_sha256": first.folds_hash, "classes": classes})
    d = first.cfg.data
    sub = out_dir / "submission.csv"
    write_submission(d.sample_submission, d.id_column, d.target_column, first.test_ids,
                     [classes[i] for i in test.argmax(axis=1)], sub, submission_format(first.cfg, classes), test)
    log(f"[stack] logistic regression (C={chosen_C(meta):g}) on {len(members)} experiments → {sub}")
    return sub
