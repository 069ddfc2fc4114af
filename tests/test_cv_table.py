"""Out-of-fold TTA, the CV table (cv.csv + cv.md), checkpoints, logit adjustment and the validator,
on ONE tiny trained run shared by the module (3 folds x 1 epoch of test_resnet on CPU)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_config
from pipeline.train.models import load_trained_model, save_weights
from pipeline.data.fold_file import make_folds
from pipeline.results.ensemble_stage import ensemble
from pipeline.predict.fold import checkpoint_path, predict_fold
from pipeline.results.score import score
from pipeline.results.submission import SubmissionError, validate_for_config, validate_submission
from pipeline.train.loop import fit
from tests.conftest import tiny_config_dict

QUIET = dict(log=lambda *_: None)
VIEWS = ["identity", "hflip"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir):
    """Folds, 3 trained folds and their predictions (TTA on validation and test), once per module."""
    root = tmp_path_factory.mktemp("cv")
    cfg = load_config(None, tiny_config_dict(root, demo_dir))
    make_folds(cfg, **QUIET)
    for k in range(cfg.folds.n_splits):
        fit(cfg, k, **QUIET)
        predict_fold(cfg, k, **QUIET)
    return cfg


@pytest.fixture
def copy_of(trained, tmp_path, demo_dir):
    """A private copy of the trained run (same folds file), for tests that add or change files."""
    shutil.copytree(trained.exp_dir, tmp_path / "outputs" / trained.experiment)
    raw = tiny_config_dict(tmp_path, demo_dir)
    raw.update(output_dir=str(tmp_path / "outputs"), folds=dict(raw["folds"], dir=trained.folds.dir))
    return load_config(None, raw)


def _classes(cfg):
    return json.loads((cfg.fold_dir(0) / "weights.json").read_text())["classes"]


# ---- predict: oof_tta.csv ------------------------------------------------------------------------

def test_oof_tta_covers_exactly_the_folds_validation_rows(trained):
    folds = pd.read_csv(trained.folds_file)
    classes = _classes(trained)
    for k in range(trained.folds.n_splits):
        tta = pd.read_csv(trained.fold_dir(k) / "oof_tta.csv")
        assert tta["row"].tolist() == folds.index[folds["fold"] == k].tolist()   # each validation row once
        assert (tta["fold"] == k).all()
        assert tta["label"].astype(str).tolist() == folds.loc[folds["fold"] == k, "label"].astype(str).tolist()
        expected = ["row", "label", "fold"] + [f"{p}prob_{c}" for p in ["", *(f"{v}:" for v in VIEWS)]
                                               for c in classes]
        assert list(tta.columns) == expected


def test_oof_tta_views_merge_to_the_tta_columns_and_identity_matches_oof(trained):
    classes = _classes(trained)
    for k in range(trained.folds.n_splits):
        tta = pd.read_csv(trained.fold_dir(k) / "oof_tta.csv")
        oof = pd.read_csv(trained.fold_dir(k) / "oof.csv").set_index("row").loc[tta["row"]]
        views = {v: tta[[f"{v}:prob_{c}" for c in classes]].to_numpy() for v in VIEWS}
        merged = tta[[f"prob_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(merged, (views["identity"] + views["hflip"]) / 2, atol=1e-6)  # tta.merge: mean
        np.testing.assert_allclose(merged.sum(axis=1), 1.0, atol=1e-5)
        # the identity view is the trainer's own out-of-fold prediction (same best weights, same transform)
        np.testing.assert_allclose(views["identity"], oof[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-4)
        assert not np.allclose(views["hflip"], views["identity"], atol=1e-4)  # the view is really applied


def test_oof_tta_is_written_before_the_make_target(trained):
    for k in range(trained.folds.n_splits):
        d = trained.fold_dir(k)
        assert (d / "oof_tta.csv").stat().st_mtime_ns <= (d / "test_probs.csv").stat().st_mtime_ns


# ---- the CV table --------------------------------------------------------------------------------

def _markdown_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines, text
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    assert len({len(c) for c in cells}) == 1, "every Markdown row has the same number of cells"
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in cells[1]), "second line is the header separator"
    block = text[text.index(lines[0]):text.index(lines[-1]) + len(lines[-1])]
    assert block.splitlines() == lines, "the table lines are contiguous"
    return [cells[0]] + cells[2:]


def test_cv_table_has_no_tta_tta_and_every_view_in_csv_and_markdown(copy_of):
    printed = []
    ensemble(copy_of, log=printed.append)
    cv = pd.read_csv(copy_of.exp_dir / "cv.csv")
    parts = cv["part"].tolist()
    assert parts[:3] == ["fold 0", "fold 1", "fold 2"]
    for part in ["out-of-fold, no TTA", "out-of-fold, TTA (mean)", "out-of-fold, view identity",
                 "out-of-fold, view hflip"]:
        assert part in parts
    assert any(p.startswith("out-of-fold, TTA + logit adjustment, tau from the other folds (") for p in parts)
    assert {"rows", "f1_macro", "accuracy", "log_loss"} <= set(cv.columns)
    n = len(pd.read_csv(copy_of.folds_file))
    assert (cv.loc[cv["part"].str.startswith("out-of-fold"), "rows"] == n).all()
    by = cv.set_index("part")
    assert by.loc["out-of-fold, view identity", "f1_macro"] == pytest.approx(
        by.loc["out-of-fold, no TTA", "f1_macro"], abs=1e-9)   # identity alone = no TTA

    md = (copy_of.exp_dir / "cv.md").read_text()
    assert md.index("**Submission**") < md.index("## The chain") < md.index("## Every row")   # the answer first
    every_row = md[md.index("## Every row"):]
    rows = _markdown_rows(every_row[:every_row.index("\n\n", every_row.index("|"))])
    assert rows[0] == ["part", "rows", "f1_macro", "accuracy"]
    folded = {r[0] for block in md.split("<details>")[1:] for r in _markdown_rows(block.split("</details>")[0])[1:]}
    assert [r[0] for r in rows[1:]] == [p for p in parts if p not in folded]     # the rest, folded, in order
    assert folded <= set(parts)
    for r in rows[1:]:
        assert float(r[2]) == pytest.approx(by.loc[r[0], "f1_macro"], abs=5e-5)
    text = "\n".join(printed)
    assert "out-of-fold, TTA (mean)" in text and "log_loss" not in text  # the printed table stays narrow
    assert text.index("Submission:") < text.index("out-of-fold, TTA (mean)")
    assert (copy_of.exp_dir / "oof_tta.csv").is_file()
    assert validate_submission(copy_of.exp_dir / "submission.csv", copy_of.data.sample_submission, "id", "label",
                               _classes(copy_of)) == []


def test_logit_adjustment_is_recorded_applied_and_scored(copy_of):
    ensemble(copy_of, logit_adjust_on=True, tau_grid=[1.0], **QUIET)   # a one-point grid fixes tau
    settings = json.loads((copy_of.exp_dir / "ensemble.json").read_text())["logit_adjust"]
    assert settings["applied"] and settings["tau"] == 1.0 and len(settings["prior"]) == len(_classes(copy_of))
    cv = pd.read_csv(copy_of.exp_dir / "cv.csv")
    assert "out-of-fold, TTA + logit adjustment, tau from the other folds (1/1/1)" in cv["part"].tolist()
    table = score(copy_of, **QUIET)
    models = table["model"].tolist()
    assert "soft vote + logit adjustment tau=1 (submission)" in models
    assert {"soft vote", "hard vote", "geometric vote", "rank vote"} <= set(models)
    by = table.set_index("model")
    assert by.loc["submission.csv", "f1_macro"] == by.loc["soft vote + logit adjustment tau=1 (submission)",
                                                          "f1_macro"]


def test_score_ranks_each_vote_by_its_own_scores(copy_of):
    """ROC-AUC of a vote comes from its scores (mean probabilities, vote shares), never from one-hot labels."""
    from sklearn.metrics import roc_auc_score

    ensemble(copy_of, **QUIET)
    table = score(copy_of, **QUIET).set_index("model")
    classes = _classes(copy_of)
    folds = [pd.read_csv(copy_of.fold_dir(k) / "test_probs.csv", dtype={"id": str}) for k in range(3)]
    probs = np.stack([f[[f"prob_{c}" for c in classes]].to_numpy() for f in folds])
    truth = pd.read_csv(copy_of.data.test_labels, dtype=str).set_index("id").loc[folds[0]["id"], "label"]
    y = np.array([classes.index(v) for v in truth])
    soft = probs.mean(axis=0)
    assert table.loc["soft vote (submission)", "roc_auc"] == pytest.approx(
        roc_auc_score(y, soft / soft.sum(1, keepdims=True), multi_class="ovr"), abs=1e-9)
    shares = np.stack([(probs.argmax(axis=2) == c).mean(axis=0) for c in range(len(classes))], axis=1)
    assert table.loc["hard vote", "roc_auc"] == pytest.approx(roc_auc_score(y, shares, multi_class="ovr"), abs=1e-12)
    assert np.isnan(table.loc["submission.csv", "roc_auc"])   # labels alone have no ranking
    assert table.loc["submission.csv", "f1_macro"] == table.loc["soft vote (submission)", "f1_macro"]


def test_tta_rows_missing_when_predicted_before_oof_tta(copy_of):
    for k in range(copy_of.folds.n_splits):
        (copy_of.fold_dir(k) / "oof_tta.csv").unlink()
    printed = []
    ensemble(copy_of, log=printed.append)
    parts = pd.read_csv(copy_of.exp_dir / "cv.csv")["part"].tolist()
    assert "out-of-fold, no TTA" in parts and not any("view" in p for p in parts)
    assert any("oof_tta.csv is missing" in line for line in printed)


# ---- several checkpoints per fold ------------------------------------------------------------------

def test_a_listed_checkpoint_that_is_missing_is_a_clear_error(copy_of):
    (copy_of.fold_dir(0) / "last.safetensors").unlink(missing_ok=True)  # e.g. trained by an older version
    with pytest.raises(FileNotFoundError, match=r"ensemble.checkpoints.*'last'.*last\.safetensors"):
        predict_fold(copy_of, 0, checkpoints=["best", "last"], **QUIET)
    with pytest.raises(ValueError, match="ensemble.checkpoints"):
        predict_fold(copy_of, 0, checkpoints="best", **QUIET)


def test_checkpoints_are_averaged_and_scored_one_by_one(copy_of):
    classes = _classes(copy_of)
    for k in range(copy_of.folds.n_splits):   # a "last" checkpoint that differs from the best one
        model, meta = load_trained_model(checkpoint_path(copy_of, k, "best"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_weights(model, checkpoint_path(copy_of, k, "last"), meta)
    best_only = pd.read_csv(copy_of.fold_dir(0) / "test_probs.csv")
    for k in range(copy_of.folds.n_splits):
        predict_fold(copy_of, k, checkpoints=["best", "last"], **QUIET)
    tta = pd.read_csv(copy_of.fold_dir(0) / "oof_tta.csv")
    cols = lambda prefix: [f"{prefix}prob_{c}" for c in classes]
    np.testing.assert_allclose(tta[cols("")].to_numpy(),
                               (tta[cols("@best:")].to_numpy() + tta[cols("@last:")].to_numpy()) / 2, atol=1e-6)
    test = pd.read_csv(copy_of.fold_dir(0) / "test_probs.csv")
    assert test["id"].tolist() == best_only["id"].tolist()
    assert not np.allclose(test[cols("")].to_numpy(), best_only[cols("")].to_numpy(), atol=1e-4)
    ensemble(copy_of, **QUIET)
    parts = pd.read_csv(copy_of.exp_dir / "cv.csv")["part"].tolist()
    assert {"out-of-fold, checkpoint best", "out-of-fold, checkpoint last"} <= set(parts)
    assert "average the checkpoints (best, last)" in (copy_of.exp_dir / "cv.md").read_text()


# ---- the submission validator ----------------------------------------------------------------------

def test_validator_accepts_the_pipelines_submission_and_lists_every_problem(copy_of, tmp_path):
    ensemble(copy_of, **QUIET)
    sub_path = copy_of.exp_dir / "submission.csv"
    assert validate_for_config(copy_of) == sub_path
    sub = pd.read_csv(sub_path, dtype=str, keep_default_na=False)
    classes = _classes(copy_of)

    def problems(frame):
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        return validate_submission(path, copy_of.data.sample_submission, "id", "label", classes)

    assert any("columns" in p for p in problems(sub[["label", "id"]]))
    assert any("columns" in p for p in problems(sub.rename(columns={"label": "target"})))
    assert any("another order" in p for p in problems(sub.iloc[::-1]))
    missing = problems(sub.iloc[1:])
    assert any("rows" in p for p in missing) and any("missing" in p for p in missing)
    dup = sub.copy()
    dup.loc[1, "id"] = dup.loc[0, "id"]
    assert any("duplicate" in p for p in problems(dup))
    blank = sub.copy()
    blank.loc[2, "label"] = ""
    assert any("blank value(s) in 'label'" in p and "line 4" in p for p in problems(blank))
    unknown = sub.copy()
    unknown.loc[0, "label"] = "eleven"
    assert any("eleven" in p for p in problems(unknown))
    shutil.copy(tmp_path / "bad.csv", sub_path)
    with pytest.raises(SubmissionError, match="would be rejected"):
        validate_for_config(copy_of)


def test_ids_keep_their_text_exactly(tmp_path):
    from pipeline.results.submission import write_submission

    sample = tmp_path / "sample.csv"
    sample.write_text("id,label\n007,x\n010,x\n")
    write_submission(sample, "id", "label", ["007", "010"], ["a", "b"], tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_text() == "id,label\n007,a\n010,b\n"
    # Predictions made for ids read as numbers (7, 10) belong to other rows: refused, not rewritten.
    with pytest.raises(SubmissionError, match="do not cover the ids"):
        write_submission(sample, "id", "label", ["7", "10"], ["a", "b"], tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()
    (tmp_path / "mangled.csv").write_text("id,label\n7,a\n10,b\n")
    found = validate_submission(tmp_path / "mangled.csv", sample, "id", "label", ["a", "b"])
    assert any("missing" in p for p in found)


def test_class_bias_is_fitted_out_of_fold_applied_and_scored(copy_of):
    """With ensemble.class_bias the submission is the soft vote of every fold's biased probabilities; the CV
    row is nested (its own fits, never the full-OOF bias) and `make score` marks the biased vote as submitted."""
    from pipeline.ensemble.class_bias import apply_bias

    copy_of.ensemble.class_bias = True
    ensemble(copy_of, **QUIET)
    record = json.loads((copy_of.exp_dir / "ensemble.json").read_text())
    assert record["class_bias"]["applied"] and record["metric"] == "f1_macro"
    classes = _classes(copy_of)
    folds = [pd.read_csv(copy_of.fold_dir(k) / "test_probs.csv", dtype={"id": str}) for k in range(3)]
    probs = np.stack([f[[f"prob_{c}" for c in classes]].to_numpy() for f in folds])
    expected = apply_bias(probs, record["class_bias"]["bias"]).mean(axis=0).argmax(axis=1)
    sub = pd.read_csv(copy_of.exp_dir / "submission.csv", dtype=str).set_index("id").loc[folds[0]["id"]]
    assert sub["label"].tolist() == [classes[i] for i in expected]
    cv = pd.read_csv(copy_of.exp_dir / "cv.csv").set_index("part")
    row = cv.loc["out-of-fold, TTA + class bias, fitted on the other folds"]
    from pipeline.ensemble.chain import Rows, nested_chain
    from pipeline.ensemble.steps.factors import ClassBiasStep
    from pipeline.ensemble.steps.selection import CheckpointsStep, ViewsStep
    from pipeline.metrics import metric_value
    from pipeline.predict.probs import candidate_probs, candidates_of
    oof = pd.read_csv(copy_of.exp_dir / "oof_tta.csv")
    y = np.array([classes.index(v) for v in oof["label"].astype(str)])
    found = candidates_of(oof, classes)
    steps = [ViewsStep(found.views, [tuple(range(len(found.views)))], "f1_macro"),
             CheckpointsStep(found.checkpoints, [(0,)], "f1_macro"), ClassBiasStep("f1_macro")]
    held_out = nested_chain(steps, Rows(candidate_probs(oof, classes, found), y, oof["fold"].to_numpy()))
    assert row["f1_macro"] == pytest.approx(metric_value("f1_macro", y, held_out), abs=1e-12)
    table = score(copy_of, **QUIET).set_index("model")
    assert table.loc["soft vote + class bias (submission)", "f1_macro"] == table.loc["submission.csv", "f1_macro"]
    assert "soft vote (submission)" not in table.index and "soft vote" in table.index


def test_everything_on_auto_records_its_choices_and_the_submission_follows_the_record(copy_of):
    """tta.select, ensemble.checkpoints, logit_adjust, class_bias on auto: ensemble.json holds each step's
    decision with its nested gain and noise, the chosen views and checkpoints, and the submission is what its
    submission entry gives from the folds' test files; no step is applied whose gain is not above its noise."""
    from pipeline.ensemble.record import apply_submission

    for k in range(copy_of.folds.n_splits):
        predict_fold(copy_of, k, checkpoints=["best", "last"], **QUIET)
    copy_of.tta.select, copy_of.ensemble.checkpoints = "auto", "auto"
    copy_of.ensemble.logit_adjust = copy_of.ensemble.class_bias = "auto"
    ensemble(copy_of, **QUIET)
    record = json.loads((copy_of.exp_dir / "ensemble.json").read_text())
    steps = {s["step"]: s for s in record["chain"]}
    assert list(steps) == ["views", "checkpoints", "logit_adjust", "class_bias", "prior_shift"]
    for s in steps.values():
        assert s["applied"] == (s["setting"] == "on" or (s["setting"] == "auto" and s["gain"] > 2 * s["noise"]))
        assert np.isfinite(s["gain"]) and s["noise"] >= 0 and s["why"]
    views = steps["views"]["fitted"]["views"] if steps["views"]["applied"] else VIEWS
    assert record["submission"]["views"] == views
    assert set(record["submission"]["checkpoints"]) <= {"best", "last"}
    assert len(steps["views"]["fitted"]["candidates"]) == 3           # all, identity alone, hflip alone
    classes = _classes(copy_of)
    frames = [pd.read_csv(copy_of.fold_dir(k) / "test_probs.csv", dtype={"id": str}) for k in range(3)]
    _, _, picked = apply_submission(record["submission"], frames)
    sub = pd.read_csv(copy_of.exp_dir / "submission.csv", dtype=str)
    assert sub["label"].tolist() == [classes[i] for i in picked]
    table = score(copy_of, **QUIET).set_index("model")
    submitted = table.index[table.index.str.endswith("(submission)")]
    assert len(submitted) == 1 and table.loc[submitted[0], "f1_macro"] == table.loc["submission.csv", "f1_macro"]
