"""Stacking: the meta-model, its nested OOF rows, the refusals and `score-blend` (synthetic files, no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.results.blend import FoldsMismatchError, blend
from pipeline.results.score_blend import score_combined
from pipeline.ensemble.steps.combine import C_GRID
from pipeline.results.stack import stack
from tests.test_blend import CLASSES, K, N_TEST, QUIET, _folds_frame, _relabel_fold, make_experiment

COLS = [f"prob_{c}" for c in CLASSES]


def _shift_classes(root, name: str) -> None:
    """Move every probability to the next class's column in all of `name`'s files: a member that is right
    about every row, under the wrong class name (a fixed confusion a blend cannot undo)."""
    for k in range(K):
        for file in ("oof.csv", "oof_tta.csv", "test_probs.csv"):
            path = root / "outputs" / name / f"fold_{k}" / file
            frame = pd.read_csv(path)
            frame[COLS] = frame[COLS[-1:] + COLS[:-1]].to_numpy()
            frame.to_csv(path, index=False)


def _test_labels(root, labels=None):
    path = root / "test_labels.csv"
    labels = labels if labels is not None else [CLASSES[i % 3] for i in range(N_TEST)]
    pd.DataFrame({"id": [f"t{i:03d}" for i in range(N_TEST)], "label": labels}).to_csv(path, index=False)
    return path


def test_the_stack_learns_a_confusion_no_blend_can_undo_and_scores_it_on_test(tmp_path):
    truth = _test_labels(tmp_path)
    make_experiment(tmp_path, "shifted", skill=0.6, seed=1, test_labels=truth)
    make_experiment(tmp_path, "weak", skill=0.1, seed=2, test_labels=truth)
    _shift_classes(tmp_path, "shifted")
    outputs = tmp_path / "outputs"
    sub = stack(["shifted", "weak"], output_dir=outputs, **QUIET)
    out = outputs / "stack-shifted-weak"
    assert sub == out / "submission.csv"
    cv = pd.read_csv(out / "cv.csv").set_index("part")
    stacked = cv.loc["stack: logistic regression on log-probabilities, nested (submission)"]
    assert stacked["accuracy"] > 0.95                                        # on rows its model never saw
    assert cv.loc["plain vote (soft, uniform weights)", "accuracy"] < 0.6
    assert cv.loc["blend soft, fitted weights, nested", "accuracy"] < 0.6
    info = json.loads((out / "stack.json").read_text())
    assert info["experiments"] == ["shifted", "weak"] and info["C"] == "auto" and info["folds_sha256"]
    assert info["C_applied"] in C_GRID and set(info["nested_C"]) == {"0", "1", "2"}
    assert {"oof.csv", "test_probs.csv", "cv.md"} <= {p.name for p in out.iterdir()}

    blend(["shifted", "weak"], output_dir=outputs, **QUIET)
    written = score_combined(["shifted", "weak"], output_dir=outputs, **QUIET)
    assert written == [outputs / "blend-shifted-weak" / "score.csv", out / "score.csv"]
    score = pd.read_csv(out / "score.csv").set_index("model")
    submitted = pd.read_csv(sub)["label"]
    true = pd.read_csv(truth)["label"]
    assert score.loc["stack-shifted-weak: submission.csv (submission)", "accuracy"] == (submitted == true).mean() > 0.9
    assert score.loc["plain vote (soft, uniform weights)", "accuracy"] < 0.6
    assert {"shifted (soft vote of its folds)", "weak (soft vote of its folds)",
            "stack-shifted-weak (test_probs.csv)"} <= set(score.index)


def test_a_folds_nested_stack_rows_never_see_their_own_labels(tmp_path):
    """Relabel fold 0's OOF rows: the stack's fold-0 rows stay the same (their meta-model was fitted on
    folds 1-2), the other folds' rows and the test prediction (fitted on every row) change."""
    runs = {}
    for run in ("same", "relabelled"):
        root = tmp_path / run
        root.mkdir()
        make_experiment(root, "a", skill=0.3, seed=1)
        make_experiment(root, "b", skill=0.2, seed=2)
        if run == "relabelled":
            _relabel_fold(root, ["a", "b"], fold=0)
        stack(["a", "b"], output_dir=root / "outputs", **QUIET)
        out = root / "outputs" / "stack-a-b"
        runs[run] = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "test_probs.csv")
    (same, same_test), (relabelled, relabelled_test) = runs["same"], runs["relabelled"]
    held = same["fold"] == 0
    assert np.allclose(same.loc[held, COLS], relabelled.loc[held, COLS], atol=1e-6)
    assert not np.allclose(same.loc[~held, COLS], relabelled.loc[~held, COLS], atol=1e-3)
    assert not np.allclose(same_test[COLS], relabelled_test[COLS], atol=1e-3)


def test_nothing_is_fitted_on_the_test_labels(tmp_path):
    """Stacks made with the true and with scrambled test labels configured are identical; only the score differs."""
    runs = {}
    for run, labels in (("true", None), ("scrambled", ["fox"] * N_TEST)):
        root = tmp_path / run
        root.mkdir()
        truth = _test_labels(root, labels)
        make_experiment(root, "a", skill=0.3, seed=1, test_labels=truth)
        make_experiment(root, "b", skill=0.2, seed=2, test_labels=truth)
        stack(["a", "b"], output_dir=root / "outputs", **QUIET)
        score_combined(["a", "b"], output_dir=root / "outputs", **QUIET)
        runs[run] = [pd.read_csv(root / "outputs/stack-a-b" / f) for f in ("oof.csv", "test_probs.csv",
                                                                           "submission.csv", "score.csv")]
    for mine, theirs in zip(runs["true"][:3], runs["scrambled"][:3]):
        pd.testing.assert_frame_equal(mine, theirs)
    assert not runs["true"][3]["accuracy"].equals(runs["scrambled"][3]["accuracy"])


def test_members_on_other_folds_or_classes_are_refused(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1, folds_name="split_a", folds=_folds_frame(seed=0))
    make_experiment(tmp_path, "b", 0.4, 2, folds_name="split_b", folds=_folds_frame(seed=1))
    with pytest.raises(FoldsMismatchError, match="different folds"):
        stack(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)
    make_experiment(tmp_path, "c", 0.4, 3, folds_name="split_a")
    for k in range(K):   # c's models were trained with the classes in another order
        sidecar = tmp_path / "outputs" / "c" / f"fold_{k}" / "weights.json"
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "classes": CLASSES[::-1]}))
    with pytest.raises(ValueError, match="classes differ"):
        stack(["a", "c"], output_dir=tmp_path / "outputs", **QUIET)
    assert not any(p.name.startswith("stack-") for p in (tmp_path / "outputs").iterdir())


def test_score_blend_needs_a_blend_or_stack_and_true_labels(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1)
    make_experiment(tmp_path, "b", 0.3, 2)
    with pytest.raises(FileNotFoundError, match='make stack EXPS='):
        score_combined(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)
    stack(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)
    with pytest.raises(ValueError, match="data.test_labels is not set"):
        score_combined(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)


def test_command_line(tmp_path, capsys):
    from pipeline.cli import main

    truth = _test_labels(tmp_path)
    make_experiment(tmp_path, "a", 0.4, 1, test_labels=truth)
    make_experiment(tmp_path, "b", 0.3, 2, test_labels=truth)
    outputs = str(tmp_path / "outputs")
    assert main(["stack", "a", "b", "--output-dir", outputs, "--C", "0.05", "--oof", "plain"]) == 0
    info = json.loads((tmp_path / "outputs/stack-a-b/stack.json").read_text())
    assert info["C"] == 0.05 and info["oof_source"] == "oof.csv"
    assert main(["score-blend", "a", "b", "--output-dir", outputs]) == 0
    assert (tmp_path / "outputs/stack-a-b/score.csv").is_file()
    with pytest.raises(SystemExit):
        main(["stack", "a", "b", "--output-dir", outputs, "--C", "0"])
    assert "--C must be 'auto' or a positive number, got '0'" in capsys.readouterr().err


def test_blend_and_stack_write_the_probabilities_the_competition_asks_for_and_score_them(tmp_path):
    """A competition scored by log-loss whose sample has one column per class: the blend's and the stack's
    submissions hold their test probabilities in those columns (not labels), and `make score EXPS=` reads
    them back, the competition metric first."""
    from sklearn.metrics import roc_auc_score

    truth = _test_labels(tmp_path)
    sample = pd.DataFrame({"id": [f"t{i:03d}" for i in range(N_TEST)], **{c: "0.3333" for c in CLASSES}})
    sample.to_csv(tmp_path / "sample_submission.csv", index=False)
    competition = {"metric": "log_loss"}
    make_experiment(tmp_path, "good", skill=0.3, seed=1, test_labels=truth, competition=competition)
    make_experiment(tmp_path, "weak", skill=0.2, seed=2, test_labels=truth, competition=competition)
    outputs = tmp_path / "outputs"
    subs = [blend(["good", "weak"], output_dir=outputs, **QUIET), stack(["good", "weak"], output_dir=outputs, **QUIET)]
    score_combined(["good", "weak"], output_dir=outputs, **QUIET)
    y = pd.read_csv(truth)["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    for sub in subs:
        written = pd.read_csv(sub)
        assert list(written.columns) == ["id", *CLASSES]
        probs = pd.read_csv(sub.parent / "test_probs.csv")[COLS].to_numpy()
        # (test_probs.csv is written to 7 decimals, the submission to 8)
        np.testing.assert_allclose(written[CLASSES].to_numpy(), probs / probs.sum(axis=1, keepdims=True), atol=1e-6)
        assert "| part | rows | log_loss |" in (sub.parent / "cv.md").read_text()
        score = pd.read_csv(sub.parent / "score.csv").set_index("model")
        assert score.columns[0] == "log_loss"
        held_back = -np.mean(np.log(written[CLASSES].to_numpy()[np.arange(N_TEST), y]))
        row = score.loc[f"{sub.parent.name}: submission.csv (submission)"]
        assert row["log_loss"] == pytest.approx(held_back, rel=1e-6)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, written[CLASSES].to_numpy(), multi_class="ovr"))
