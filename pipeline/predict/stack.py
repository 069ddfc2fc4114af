"""Stacking: a multinomial logistic regression on the members' out-of-fold log-probabilities.

    make stack EXPS="effnet convnext"      →  outputs/stack-effnet-convnext/submission.csv
    python -m pipeline stack effnet convnext [--C 1.0] [--oof tta|plain|auto] [--out DIR]

Where a blend learns one weight per experiment, the meta-model learns, per class, how much each
member's log-probability of every class counts (and a bias per class), so it can trust one member on
some classes and another elsewhere. It has many more parameters than a blend, so it is scored nested
only: each fold's rows are predicted by a meta-model fitted on the other folds' OOF rows. The test
prediction is the meta-model fitted on every OOF row, applied to the members' mean test probabilities.
Members must share folds and classes (:func:`pipeline.predict.blend.check_same_folds`).

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

__all__ = ["DEFAULT_C", "stack_features", "fit_meta", "meta_proba", "nested_stack", "stack"]

DEFAULT_C = 1.0      # inverse L2 strength; members' log-probabilities are all on one scale, so no scaler
_PROB_FLOOR = 1e-6   # log(0) is -inf; a member's "impossible" costs at most log(1e-6) ≈ -13.8


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


def fit_meta(features: np.ndarray, y: np.ndarray, C: float = DEFAULT_C):
    """The meta-model: scikit-learn's multinomial logistic regression (lbfgs, L2 with strength 1/C)."""
    from sklearn.linear_model import LogisticRegression

    if not C > 0:
        raise ValueError(f"--C must be a positive number, got {C!r}")
    if len(set(y.tolist())) < 2:
        raise ValueError("stacking needs out-of-fold rows of two or more classes to fit on")
    return LogisticRegression(C=C, max_iter=2000).fit(features, y)


def meta_proba(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities of `model`; a class absent from its training rows gets 0."""
    import numpy as np

    out = np.zeros((len(features), n_classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out


def nested_stack(probs, y: np.ndarray, folds: np.ndarray, C: float = DEFAULT_C) -> np.ndarray:
    """(N, C) out-of-fold stack probabilities: each fold's rows from a meta-model fitted on the other folds."""
    from pipeline.predict.nested import apply_per_fold, fit_per_fold

    x = stack_features(probs)
    n_classes = x.shape[1] // len(probs)
    fitted = fit_per_fold(folds, lambda rest: fit_meta(x[rest], y[rest], C))
    return apply_per_fold(folds, fitted, lambda model, held: meta_proba(model, x[held], n_classes))


def _cv_rows(members, y: np.ndarray, nested: np.ndarray) -> list[dict]:
    """Each member, the plain vote, the blend (weights nested) and the stack (nested), on the same OOF rows."""
    import numpy as np

    from pipeline.predict.blend import nested_blend_weights
    from pipeline.predict.cv_table import metrics_row
    from pipeline.predict.nested import apply_per_fold
    from pipeline.predict.voting import soft_vote

    oof, folds = np.stack([m.oof for m in members]), members[0].folds
    blended = apply_per_fold(folds, nested_blend_weights(oof, y, folds),
                             lambda w, held: soft_vote(oof[:, held], w))
    return [*(metrics_row(f"{m.name} ({m.oof_source})", y, m.oof) for m in members),
            metrics_row("plain vote (soft, uniform weights)", y, soft_vote(oof)),
            metrics_row("blend soft, fitted weights, nested", y, blended),
            metrics_row("stack: logistic regression on log-probabilities, nested (submission)", y, nested)]


def stack(experiments: list[str | Config], output_dir: str | Path = "outputs", out: str | Path | None = None,
          oof_source: str = "auto", C: float = DEFAULT_C, log=print) -> Path:
    """Stack experiments (names under `output_dir`, or configs) into one submission; returns its path."""
    import numpy as np
    import pandas as pd

    from pipeline.fileio import write_json_atomic
    from pipeline.predict.blend import load_members, write_blend_probs
    from pipeline.predict.cv_table import write_cv
    from pipeline.predict.probs import class_ids
    from pipeline.predict.submission import write_submission

    members = load_members(experiments, output_dir, oof_source, log)
    first, names = members[0], [m.name for m in members]
    classes = first.classes
    y = class_ids(first.labels, classes, f"{first.name} OOF labels")
    oof = np.stack([m.oof for m in members])
    nested = nested_stack(oof, y, first.folds, C)
    meta = fit_meta(stack_features(oof), y, C)                 # every OOF row: what the test set gets
    test = meta_proba(meta, stack_features(np.stack([m.test for m in members])), len(classes))

    out_dir = Path(out) if out is not None else Path(output_dir) / ("stack-" + "-".join(names))
    notes = [f"Meta-model: multinomial logistic regression (C={C:g}) on the {len(members)} members' "
             f"log-probabilities ({len(members) * len(classes)} features, {first.oof_source}). Its CV row is nested: "
             "each fold's rows predicted by a meta-model fitted on the other folds' rows only. The test set is "
             f"predicted by the meta-model fitted on all {len(y)} OOF rows.",
             f"Folds: {first.folds_file} (sha256 {first.folds_hash[:12]}, the same split for every experiment)."]
    write_cv(pd.DataFrame(_cv_rows(members, y, nested)), out_dir, f"Stack: {' + '.join(names)}", notes, log)
    write_blend_probs(out_dir, first, nested, test)
    write_json_atomic(out_dir / "stack.json", {
        "experiments": names, "meta_model": "LogisticRegression", "C": C, "features": "log-probabilities",
        "probability_floor": _PROB_FLOOR, "oof_source": first.oof_source, "folds_file": str(first.folds_file),
        "folds_sha256": first.folds_hash, "classes": classes})
    d = first.cfg.data
    sub = out_dir / "submission.csv"
    write_submission(d.sample_submission, d.id_column, d.target_column, first.test_ids,
                     [classes[i] for i in test.argmax(axis=1)], sub)
    log(f"[stack] logistic regression (C={C:g}) on {len(members)} experiments → {sub}")
    return sub
