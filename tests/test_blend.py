"""Blending experiments: weights fitted on OOF, the same-folds guard, the outputs (synthetic files, no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.results.blend import FoldsMismatchError, blend
from pipeline.config import load_config
from pipeline.stamps import write_resolved
from pipeline.fileio import write_json_atomic
from pipeline.results.submission import validate_submission

CLASSES = ["cat", "dog", "fox"]
N_ROWS, N_TEST, K = 90, 12, 3
QUIET = dict(log=lambda *_: None)


def _folds_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(CLASSES)[np.arange(N_ROWS) % 3]
    return pd.DataFrame({"row": np.arange(N_ROWS), "image": [f"train/{i}.png" for i in range(N_ROWS)],
                         "label": labels, "group": np.arange(N_ROWS), "fold": rng.permutation(np.arange(N_ROWS) % K)})


def _noisy_probs(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Probabilities that put `skill` of their mass on the true class, the rest at random."""
    rng = np.random.default_rng(seed)
    noise = rng.dirichlet(np.ones(len(CLASSES)), size=len(y))
    return (1 - skill) * noise + skill * np.eye(len(CLASSES))[y]


def make_experiment(root, name: str, skill: float, seed: int, folds_name: str = "shared",
                    folds: pd.DataFrame | None = None, tta: bool = True, sidecar_extra: dict | None = None,
                    test_labels=None, competition: dict | None = None):
    """outputs/<name>/ as the pipeline leaves it: config.yaml, fold sidecars, oof(.tta).csv, test_probs.csv."""
    folds_dir = root / "folds"
    folds_dir.mkdir(exist_ok=True)
    folds_file = folds_dir / f"{folds_name}.csv"
    if not folds_file.exists():
        (folds if folds is not None else _folds_frame()).to_csv(folds_file, index=False)
    table = pd.read_csv(folds_file)
    sample = root / "sample_submission.csv"
    if not sample.exists():
        pd.DataFrame({"id": [f"t{i:03d}" for i in range(N_TEST)], "label": "cat"}).to_csv(sample, index=False)
    cfg = load_config(None, {"experiment": name, "output_dir": str(root / "outputs"),
                             "folds": {"n_splits": K, "name": folds_name, "dir": str(folds_dir)},
                             "data": {"sample_submission": str(sample), "train_csv": str(root / "train.csv"),
                                      "test_labels": str(test_labels) if test_labels else None},
                             "competition": competition or {}})
    write_resolved(cfg)
    y = table["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    oof = _noisy_probs(y, skill, seed)
    test_y = np.arange(N_TEST) % 3
    for k in range(K):
        d = cfg.fold_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "weights.json", {"model": "x", "classes": CLASSES, "fold": k, **(sidecar_extra or {})})
        rows = np.flatnonzero(table["fold"].to_numpy() == k)
        frame = pd.DataFrame({"row": rows, "label": table["label"].to_numpy()[rows], "fold": k})
        for c, cls in enumerate(CLASSES):
            frame[f"prob_{cls}"] = oof[rows, c]
        frame.to_csv(d / "oof.csv", index=False)
        if tta:
            frame.to_csv(d / "oof_tta.csv", index=False)
        test = pd.DataFrame({"id": [f"t{i:03d}" for i in range(N_TEST)]})
        probs = _noisy_probs(test_y, skill, seed + 100 + k)
        for c, cls in enumerate(CLASSES):
            test[f"prob_{cls}"] = probs[:, c]
        test.to_csv(d / "test_probs.csv", index=False)
    return cfg


def _members(root, names):
    """Each experiment's OOF rows (by row) and mean test probabilities, read back from its files."""
    oof, test = [], []
    for name in names:
        cfg = load_config(root / "outputs" / name / "config.yaml")
        frames = pd.concat([pd.read_csv(cfg.fold_dir(k) / "oof_tta.csv") for k in range(K)]).sort_values("row")
        oof.append(frames[[f"prob_{c}" for c in CLASSES]].to_numpy())
        test.append(np.mean([pd.read_csv(cfg.fold_dir(k) / "test_probs.csv")[[f"prob_{c}" for c in CLASSES]]
                             .to_numpy() for k in range(K)], axis=0))
    y = frames["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    return np.stack(oof), np.stack(test), y


def test_fitted_weights_are_the_oof_log_loss_optimum_and_make_the_submission(tmp_path):
    make_experiment(tmp_path, "good", skill=0.3, seed=1)
    make_experiment(tmp_path, "weak", skill=0.2, seed=2)
    printed = []
    sub = blend(["good", "weak"], output_dir=tmp_path / "outputs", log=printed.append)
    out = tmp_path / "outputs" / "blend-good-weak"
    assert sub == out / "submission.csv"
    info = json.loads((out / "blend.json").read_text())
    w = info["fitted_weights"]
    oof, test, y = _members(tmp_path, ["good", "weak"])
    true = oof[:, np.arange(len(y)), y] / oof.sum(axis=2)             # brute force over the weight of "good"
    grid = np.linspace(0, 1, 2001)
    best = grid[int(np.argmin([-np.log(g * true[0] + (1 - g) * true[1]).mean() for g in grid]))]
    assert 0.55 < best < 0.95 and w["good"] == pytest.approx(best, abs=1e-3)
    picked = (w["good"] * test[0] + w["weak"] * test[1]).argmax(axis=1)
    assert pd.read_csv(sub)["label"].tolist() == [CLASSES[i] for i in picked]
    assert info["folds_sha256"] and info["oof_source"] == "oof_tta.csv"
    cv = pd.read_csv(out / "cv.csv").set_index("part")
    fitted = cv.loc["blend soft, fitted weights, nested (submission)"]
    uniform = cv.loc["blend soft, uniform weights"]
    assert fitted["log_loss"] < uniform["log_loss"]               # the objective, even on rows it did not see
    assert {"good (oof_tta.csv)", "weak (oof_tta.csv)", "blend hard, uniform weights",
            "blend geometric, fitted weights, nested", "blend rank, uniform weights"} <= set(cv.index)
    assert "blend soft, fitted weights, nested" in (out / "cv.md").read_text()
    assert validate_submission(sub, tmp_path / "sample_submission.csv", "id", "label", CLASSES) == []
    for name in ("oof.csv", "test_probs.csv"):
        assert (out / name).is_file()
    assert any("Fitted weights" in line for line in printed)


def test_uniform_weights_hard_voting_and_an_explicit_output_dir(tmp_path):
    for name, skill, seed in (("a", 0.4, 1), ("b", 0.3, 2), ("c", 0.2, 3)):
        make_experiment(tmp_path, name, skill, seed)
    out = tmp_path / "mine"
    blend(["a", "b", "c"], output_dir=tmp_path / "outputs", out=out, voting="hard", weights="uniform",
          logit_adjust_on=True, **QUIET)
    info = json.loads((out / "blend.json").read_text())
    assert info["weights"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=1e-6)
    assert info["logit_adjust"]["applied"]
    parts = pd.read_csv(out / "cv.csv")["part"]   # the submission: the adjusted blend, its tau from OOF
    assert parts.str.endswith("(submission)").sum() == 1
    adjusted = r"blend hard, uniform weights \+ logit adjustment, tau from the other folds .*\(submission\)"
    assert parts.str.match(adjusted).any()


def test_experiments_on_different_folds_are_refused(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1, folds_name="split_a", folds=_folds_frame(seed=0))
    make_experiment(tmp_path, "b", 0.4, 2, folds_name="split_b", folds=_folds_frame(seed=1))
    with pytest.raises(FoldsMismatchError) as err:
        blend(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)
    message = str(err.value)
    for text in ("'a'", "'b'", "split_a.csv", "split_b.csv", "different folds"):
        assert text in message
    assert not (tmp_path / "outputs" / "blend-a-b").exists()


def test_same_split_under_two_file_names_is_accepted(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1, folds_name="copy_one")
    make_experiment(tmp_path, "b", 0.4, 2, folds_name="copy_two")     # same content, other path
    assert blend(["a", "b"], output_dir=tmp_path / "outputs", **QUIET).is_file()


def test_folds_regenerated_after_training_are_refused(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1)
    make_experiment(tmp_path, "b", 0.4, 2)
    _folds_frame(seed=5).to_csv(tmp_path / "folds" / "shared.csv", index=False)   # both now disagree with it
    with pytest.raises(FoldsMismatchError, match="regenerated"):
        blend(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)


def test_a_recorded_folds_hash_must_match_the_folds_file(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1, sidecar_extra={"folds_sha256": "0" * 64})
    make_experiment(tmp_path, "b", 0.4, 2)
    with pytest.raises(FoldsMismatchError, match="'a' was trained on a folds file"):
        blend(["a", "b"], output_dir=tmp_path / "outputs", **QUIET)


def test_oof_without_tta_is_used_for_all_when_one_lacks_it(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1)
    make_experiment(tmp_path, "b", 0.4, 2, tta=False)
    printed = []
    blend(["a", "b"], output_dir=tmp_path / "outputs", log=printed.append)
    assert json.loads((tmp_path / "outputs/blend-a-b/blend.json").read_text())["oof_source"] == "oof.csv"
    assert any("using oof.csv" in line for line in printed)
    with pytest.raises(FileNotFoundError, match="oof_tta.csv"):
        blend(["a", "b"], output_dir=tmp_path / "outputs", oof_source="tta", **QUIET)


def test_bad_requests_are_refused(tmp_path):
    make_experiment(tmp_path, "a", 0.4, 1)
    with pytest.raises(ValueError, match="two or more"):
        blend(["a"], output_dir=tmp_path / "outputs", **QUIET)
    with pytest.raises(ValueError, match="two or more"):
        blend(["a", "a"], output_dir=tmp_path / "outputs", **QUIET)
    with pytest.raises(FileNotFoundError, match="experiment 'nope'"):
        blend(["a", "nope"], output_dir=tmp_path / "outputs", **QUIET)
    with pytest.raises(ValueError, match="--voting"):
        blend(["a", "a"], output_dir=tmp_path / "outputs", voting="median", **QUIET)


def test_the_command_line_module_stays_light_and_in_step_with_the_ensemble_module():
    import subprocess
    import sys

    from pipeline.results import blend as blend_mod
    from pipeline.ensemble.voting import VOTING_MODES, WEIGHT_OBJECTIVES

    assert blend_mod.VOTING_CHOICES == VOTING_MODES and blend_mod.OBJECTIVES == WEIGHT_OBJECTIVES
    code = ("import sys, pipeline.cli; pipeline.cli._parser(); "
            "print(sorted(m for m in ('torch', 'pandas', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"   # Make runs `python -m pipeline` at parse time: the parser must not load torch


def test_command_line_arguments(tmp_path, capsys):
    from pipeline.cli import _parser, main

    make_experiment(tmp_path, "a", 0.4, 1)
    make_experiment(tmp_path, "b", 0.3, 2)
    args = _parser().parse_args(["blend", "a", "b", "--no-logit-adjust"])
    assert args.logit_adjust is False and _parser().parse_args(["blend", "a", "b"]).logit_adjust is None
    assert main(["blend", "a", "b", "--output-dir", str(tmp_path / "outputs"), "--objective", "f1"]) == 0
    blended = json.loads((tmp_path / "outputs" / "blend-a-b" / "blend.json").read_text())
    assert blended["objective"] == "f1"


def test_every_blend_row_scores_the_weighted_vote_it_names(tmp_path):
    """Each CV row 'blend <mode>, <kind> weights' holds the F1/accuracy of that vote, each fold's rows voted
    with that fold's weights (uniform, or the nested ones blend.json records); log loss only where the vote
    gives probabilities (soft, geometric)."""
    from pipeline.metrics import macro_f1
    from pipeline.ensemble.voting import VOTING_MODES, vote

    make_experiment(tmp_path, "good", skill=0.3, seed=1)
    make_experiment(tmp_path, "weak", skill=0.2, seed=2)
    blend(["good", "weak"], output_dir=tmp_path / "outputs", **QUIET)
    out = tmp_path / "outputs" / "blend-good-weak"
    nested = json.loads((out / "blend.json").read_text())["nested"]["fitted_weights"]
    oof, _, y = _members(tmp_path, ["good", "weak"])
    folds = _folds_frame()["fold"].to_numpy()
    weights = {"fitted weights, nested": {int(k): np.array([w["good"], w["weak"]]) for k, w in nested.items()},
               "uniform weights": {k: np.array([0.5, 0.5]) for k in range(K)}}
    assert len({tuple(w.round(3)) for w in weights["fitted weights, nested"].values()}) == K   # differ per fold
    cv = pd.read_csv(out / "cv.csv")
    cv["part"] = cv["part"].str.replace(" (submission)", "", regex=False)
    cv = cv.set_index("part")
    for mode in VOTING_MODES:
        for kind, per_fold in weights.items():
            row = cv.loc[f"blend {mode}, {kind}"]
            picked = np.empty(len(y), dtype=int)
            for k, w in per_fold.items():
                picked[folds == k] = vote(oof[:, folds == k], mode, w)
            one_hot = np.eye(len(CLASSES))[picked]
            assert row["f1_macro"] == pytest.approx(macro_f1(y, one_hot), abs=1e-9), (mode, kind)
            assert row["accuracy"] == pytest.approx((picked == y).mean(), abs=1e-9), (mode, kind)
            assert np.isnan(row["log_loss"]) == (mode in ("hard", "rank")), (mode, kind)


def test_nested_weights_are_the_optimum_on_the_other_folds_only(tmp_path):
    make_experiment(tmp_path, "good", skill=0.3, seed=1)
    make_experiment(tmp_path, "weak", skill=0.2, seed=2)
    blend(["good", "weak"], output_dir=tmp_path / "outputs", **QUIET)
    nested = json.loads((tmp_path / "outputs/blend-good-weak/blend.json").read_text())["nested"]["fitted_weights"]
    oof, _, y = _members(tmp_path, ["good", "weak"])
    folds = _folds_frame()["fold"].to_numpy()
    grid = np.linspace(0, 1, 2001)
    for k in range(K):
        rest = folds != k                                               # brute force over the weight of "good"
        true = oof[:, np.flatnonzero(rest), y[rest]] / oof[:, rest].sum(axis=2)
        best = grid[int(np.argmin([-np.log(g * true[0] + (1 - g) * true[1]).mean() for g in grid]))]
        assert nested[str(k)]["good"] == pytest.approx(best, abs=1e-3), k


def _relabel_fold(root, names, fold: int) -> None:
    """Give fold `fold`'s OOF rows other true labels (a cyclic shift of the classes) in every experiment."""
    shift = {c: CLASSES[(i + 1) % len(CLASSES)] for i, c in enumerate(CLASSES)}
    for name in names:
        for file in ("oof.csv", "oof_tta.csv"):
            path = root / "outputs" / name / f"fold_{fold}" / file
            frame = pd.read_csv(path)
            frame["label"] = frame["label"].map(shift)
            frame.to_csv(path, index=False)


@pytest.mark.parametrize("adjust", [False, True])
def test_a_folds_nested_oof_never_sees_its_own_labels(tmp_path, adjust):
    """The blend's oof.csv (its nested OOF): relabelling fold 0's rows leaves fold 0's blended rows unchanged
    (its weights and tau came from the other folds) and changes the other folds' rows (fold 0 helped fit them)."""
    runs = {}
    for run in ("same", "relabelled"):
        root = tmp_path / run
        root.mkdir()
        make_experiment(root, "good", skill=0.3, seed=1)
        make_experiment(root, "weak", skill=0.15, seed=2)
        if run == "relabelled":
            _relabel_fold(root, ["good", "weak"], fold=0)
        blend(["good", "weak"], output_dir=root / "outputs", logit_adjust_on=adjust, **QUIET)
        runs[run] = pd.read_csv(root / "outputs/blend-good-weak/oof.csv")
    cols = [f"prob_{c}" for c in CLASSES]
    held = runs["same"]["fold"] == 0
    assert np.allclose(runs["same"].loc[held, cols], runs["relabelled"].loc[held, cols], atol=1e-9)
    assert not np.allclose(runs["same"].loc[~held, cols], runs["relabelled"].loc[~held, cols], atol=1e-4)
