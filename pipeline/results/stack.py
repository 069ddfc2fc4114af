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

__all__ = ["DEFAULT_C", "parse_C", "stack"]

DEFAULT_C = "auto"   # inverse L2 strength, chosen by cross-validation; the log-probabilities share one scale: no scaler


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


def _cv_rows(members, y: np.ndarray, rows, stacked: np.ndarray, metric: str) -> list[dict]:
    """Each member, the plain vote, the blend (weights nested) and the stack (nested), on the same OOF rows."""
    from pipeline.ensemble.chain import nested_chain
    from pipeline.ensemble.steps.combine import BlendStep
    from pipeline.ensemble.voting import soft_vote
    from pipeline.results.cv_table import metrics_row

    blended = nested_chain([BlendStep("soft", "fitted", "logloss", metric)], rows)
    return [*(metrics_row(f"{m.name} ({m.oof_source})", y, m.oof) for m in members),
            metrics_row("plain vote (soft, uniform weights)", y, soft_vote(rows.probs)),
            metrics_row("blend soft, fitted weights, nested", y, blended),
            metrics_row("stack: logistic regression on log-probabilities, nested (submission)", y, stacked)]


def stack(experiments: list[str | Config], output_dir: str | Path = "outputs", out: str | Path | None = None,
          oof_source: str = "auto", C: float | str = DEFAULT_C, log=print) -> Path:
    """Stack experiments (names under `output_dir`, or configs) into one submission; returns its path."""
    import numpy as np
    import pandas as pd

    from pipeline.ensemble.chain import Nested, Rows
    from pipeline.ensemble.steps.combine import StackStep, chosen_C
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
    rows = Rows(np.stack([m.oof for m in members]), y, first.folds, np.stack([m.test for m in members]))
    chain = Nested(rows).add(StackStep(C))    # nested: each fold's meta-model fitted on the other folds
    nested, meta, test = chain.oof(), chain.fitted[0].model, chain.test()   # every OOF row fits the test's
    fold_Cs = {k: p["C"] for k, p in chain.per_fold().items()}
    out_dir = Path(out) if out is not None else Path(output_dir) / ("stack-" + "-".join(names))
    how = "chosen by leave-one-fold-out log-loss on the rows it is fitted on" if C == "auto" else "fixed"
    notes = [f"Meta-model: multinomial logistic regression on the {len(members)} members' log-probabilities "
             f"({len(members) * len(classes)} features, {first.oof_source}), C {how}. Its CV row is nested: each "
             "fold's rows predicted by a meta-model fitted (and its C chosen) on the other folds' rows only "
             f"(C {'/'.join(f'{c:g}' for c in fold_Cs.values())}). The test set is predicted by the meta-model "
             f"fitted on all {len(y)} OOF rows (C={chosen_C(meta):g}).",
             f"Folds: {first.folds_file} (sha256 {first.folds_hash[:12]}, the same split for every experiment).",
             f"For contrast, not a score: scored on the very rows it was fitted on, that meta-model shows {metric} "
             f"{metric_value(metric, y, chain.full.probs):.4f}; the nested row "
             "is the honest one."]
    summary = [("Submission", f"stack: logistic regression (C={chosen_C(meta):g}) on the log-probabilities of "
                              f"{', '.join(names)}"),
               ("Out-of-fold estimate", f"{metric_value(metric, y, nested):.4f} {metric} on {len(y)} OOF rows, each "
                                        "fold's meta-model fitted on the other folds")]
    write_cv(pd.DataFrame(_cv_rows(members, y, rows, nested, metric)), out_dir, f"Stack: {' + '.join(names)}",
             notes, log, metric, summary)
    write_blend_probs(out_dir, first, nested, test)
    write_json_atomic(out_dir / "stack.json", {
        "experiments": names, "meta_model": "LogisticRegression", "C": C, "C_applied": chosen_C(meta),
        "nested_C": fold_Cs, "features": "log-probabilities",
        "probability_floor": 1e-6, "oof_source": first.oof_source, "folds_file": str(first.folds_file),
        "folds_sha256": first.folds_hash, "classes": classes})
    d = first.cfg.data
    sub = out_dir / "submission.csv"
    write_submission(d.sample_submission, d.id_column, d.target_column, first.test_ids,
                     [classes[i] for i in test.argmax(axis=1)], sub, submission_format(first.cfg, classes), test)
    log(f"[stack] logistic regression (C={chosen_C(meta):g}) on {len(members)} experiments → {sub}")
    return sub
