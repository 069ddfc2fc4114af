"""The bundle's predict.py template against the pipeline, piece by piece: each function it re-implements must
give the pipeline's numbers bit for bit (the prior-shift test's p-value to round-off), so that the bundle's
submission is the ensemble's. Each test hands both the same inputs and compares their outputs."""

from __future__ import annotations

import ast
import io
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.bundle import predict_template as template
from pipeline.competitions.mask.heads import MaskHeadsModel
from pipeline.data.cache import BatchNormalize, geometry_transform
from pipeline.data.transforms import load_rgb
from pipeline.fileio import read_table, write_csv_atomic
from pipeline.predict import prior_shift as shift
from pipeline.predict.class_bias import apply_bias
from pipeline.predict.formats import SubmissionFormat, fill
from pipeline.predict.probs import fold_probs_frame
from pipeline.predict.shift_check import apply_shift, shift_record
from pipeline.predict.tta import merge_view_logits, parse_views
from pipeline.predict.voting import logit_adjust, vote, vote_scores

# Every module predict.py may import at its top; albumentations only inside the function that needs it.
ALLOWED_TOP_LEVEL = {"torch", "timm", "numpy", "pandas", "safetensors", "PIL"}


def _probs(rng, shape):
    p = rng.random(shape) ** 3
    return p / p.sum(axis=-1, keepdims=True)


def test_the_template_imports_nothing_of_the_pipeline_and_albumentations_only_where_an_image_is_resized():
    tree = ast.parse(open(template.__file__).read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    nested = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names} | {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    third_party = {m for m in top | nested if m not in sys.stdlib_module_names and m != "__future__"}
    assert third_party <= ALLOWED_TOP_LEVEL | {"albumentations"}, third_party
    assert "albumentations" not in top and "pipeline" not in third_party


@pytest.mark.parametrize("names", [["identity", "hflip", "vflip", "rot90", "rot180", "rot270"],
                                   ["scale_0.9", "scale_1.1", "scale_0.5", "brightness_0.1", "brightness_-0.2",
                                    "contrast_1.2", "contrast_0.8"]])
def test_every_view_gives_the_pipelines_pixels(names):
    x = torch.randn(3, 3, 17, 17)
    for view in parse_views(names):
        assert torch.equal(template.view_function(view.name)(x), view.fn(x)), view.name


@pytest.mark.parametrize("mode", template.MERGE_MODES)
def test_every_merge_mode_gives_the_pipelines_probabilities(mode):
    logits = torch.randn(4, 5, 7) * 3
    assert torch.equal(template.merge_view_logits(logits, mode), merge_view_logits(logits, mode))


def test_tta_runs_the_views_in_one_pass_and_merges_as_the_pipeline():
    from pipeline.predict.tta import predict_tta

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 6)).eval()
    x = torch.randn(5, 3, 16, 16)
    views = parse_views(["hflip", "scale_0.9"])
    ours = template.tta_probs(model, x, [template.view_function(v.name) for v in views], "geometric_mean")
    assert torch.equal(ours, predict_tta(model, x, views, "geometric_mean"))


@pytest.mark.parametrize("mode", template.VOTING_MODES)
def test_every_vote_gives_the_pipelines_classes_and_scores(mode):
    rng = np.random.default_rng(0)
    probs = _probs(rng, (4, 50, 5))
    probs[:, :10] = probs[0, :10]               # rows where the folds agree exactly: ties in the ranks
    probs[:2, 10:20], probs[2:, 10:20] = [0.6, 0.4, 0, 0, 0], [0.1, 0.9, 0, 0, 0]   # hard-vote ties
    np.testing.assert_array_equal(template.vote(probs, mode), vote(probs, mode))
    np.testing.assert_array_equal(template.vote_scores(probs, mode), vote_scores(probs, mode))


def test_logit_adjustment_class_bias_and_reweighting_are_the_pipelines():
    rng = np.random.default_rng(1)
    probs, prior = _probs(rng, (3, 40, 4)), np.array([0.5, 0.3, 0.15, 0.05])
    probs[0, 0] = [1.0, 0.0, 0.0, 0.0]          # an exact zero: floored the same way
    np.testing.assert_array_equal(template.logit_adjust(probs, prior, 0.75), logit_adjust(probs, prior, 0.75))
    np.testing.assert_array_equal(template.logit_adjust(probs, prior, 0.0), logit_adjust(probs, prior, 0.0))
    bias = [0.0, 0.5, -1.25, 3.0]
    np.testing.assert_array_equal(template.apply_bias(probs, bias), apply_bias(probs, bias))
    q = [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_array_equal(template.reweight(probs, prior, q), shift.reweight(probs, prior, q))


MIXES = {"same": [1 / 3] * 3, "skewed": [0.7, 0.2, 0.1], "one class gone": [0.8, 0.2, 0.0]}


def _shifted_run(rng, mix: str):
    """OOF rows of a decent classifier on a balanced mix; test rows on the same or another mix (in the last,
    class 2 is absent and EM drives its share down to the floor)."""
    n_classes = 3
    y = rng.integers(0, n_classes, 300)
    oof = np.eye(n_classes)[y] * 0.6 + _probs(rng, (300, n_classes)) * 0.4
    t = rng.choice(n_classes, 200, p=MIXES[mix])
    if mix == "one class gone":
        oof, y = np.eye(n_classes)[y] * 0.98 + 0.01, y
        test = np.stack([np.eye(n_classes)[t] * 0.98 + 0.01 for _ in range(3)])
        return oof, y, test, {k: np.full(3, 1 / 3) for k in range(3)}
    test = np.stack([np.eye(n_classes)[t] * 0.6 + _probs(rng, (200, n_classes)) * 0.4 for _ in range(3)])
    priors = {k: np.array([0.34, 0.33, 0.33]) + 0.01 * k for k in range(3)}
    return oof, y, test, priors


@pytest.mark.parametrize("mode,mix", [("auto", "skewed"), ("auto", "same"), ("em", "same"), ("bbse", "skewed"),
                                      ("em", "one class gone")])
def test_the_prior_shift_is_decided_and_estimated_again_as_the_ensemble_did(mode, mix):
    oof, y, test, priors = _shifted_run(np.random.default_rng(2), mix)
    record = shift_record(mode, 0.01, oof, y, test, priors)
    step = {"step": "prior_shift", "mode": mode, "alpha": 0.01, "model_prior": record["model_prior"]}
    ours = template.prior_shift(step, test, {"probs": oof, "labels": y})
    assert (ours["applied"], ours["method"]) == (record["applied"], record["method"])
    assert ours["estimates"] == record["estimates"]
    assert ours["g_statistic"] == pytest.approx(record["g_statistic"], abs=1e-4)   # the record rounds it
    assert ours["p_value"] == pytest.approx(record["p_value"], rel=1e-9)
    adjusted, report = template.apply_decisions(test, {"steps": [step]}, {"probs": oof, "labels": y})
    np.testing.assert_array_equal(adjusted, apply_shift(test, record))
    assert report["prior_shift"]["applied"] == (mode != "auto" or mix != "same")
    if mix == "one class gone":
        assert min(ours["estimates"]["em"]) < 1e-5          # held at the floor


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 10, 17, 60])
def test_the_shift_tests_chi_square_tail_is_scipys(dof):
    from scipy.stats import chi2

    for x in (0.01, 0.5, dof * 0.8, dof + 3.0, 40.0, 150.0, 700.0):
        assert template.chi2_sf(x, dof) == pytest.approx(chi2.sf(x, dof), rel=1e-10, abs=1e-300)


def test_the_g_test_is_scipys_with_empty_classes():
    rng = np.random.default_rng(3)
    oof, test = _probs(rng, (80, 5)), _probs(rng, (60, 5))
    oof[:, 4] = test[:, 4] = 0                  # a class neither set predicts: dropped from the table
    g, p = template.shift_test(oof, test)
    ref_g, ref_p = shift.shift_test(oof, test)
    assert g == pytest.approx(ref_g, rel=1e-12) and p == pytest.approx(ref_p, rel=1e-9)


def test_the_steps_run_in_their_order_and_an_unknown_step_is_refused():
    rng = np.random.default_rng(4)
    probs, prior = _probs(rng, (2, 10, 3)), [0.6, 0.3, 0.1]
    steps = [{"step": "class_bias", "bias": [0.0, 1.0, -1.0]}, {"step": "logit_adjust", "tau": 1.0, "prior": prior}]
    ours, _ = template.apply_decisions(probs, {"steps": steps})
    np.testing.assert_array_equal(ours, logit_adjust(apply_bias(probs, [0.0, 1.0, -1.0]), prior, 1.0))
    with pytest.raises(template.BundleError, match="unknown step 'threshold'"):
        template.apply_decisions(probs, {"steps": [{"step": "threshold"}]})


def test_normalising_by_the_lookup_table_is_the_pipelines_batch_normalise():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    batch = np.random.default_rng(5).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    lut = BatchNormalize(mean, std).lut.reshape(256, 3)
    assert torch.equal(template.normalize(batch, lut), BatchNormalize(mean, std)(torch.from_numpy(batch)))


@pytest.mark.parametrize("shape,size,crop", [((40, 52), 32, None), ((32, 32), 24, None), ((30, 36), 32, (28, 28)),
                                            ((20, 20), 32, (24, 24))])
def test_decoding_gives_the_decode_caches_pixels(tmp_path, shape, size, crop):
    rng = np.random.default_rng(6)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    expected = geometry_transform(size, crop)(image=load_rgb(str(path)))["image"]
    np.testing.assert_array_equal(template.decode(path, size, crop), expected)


def test_an_image_of_the_right_size_needs_no_albumentations(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8), mode="L").save(path)   # grayscale: made RGB
    monkeypatch.setitem(sys.modules, "albumentations", None)    # any import of it fails
    monkeypatch.setattr(template, "_GEOMETRY", type(template._GEOMETRY)())
    assert template.decode(path, 32).shape == (32, 32, 3)
    with pytest.raises(ImportError):
        template.decode(path, 24)


def test_the_mask_heads_are_the_pipelines():
    torch.manual_seed(0)
    ours, theirs = template.MaskHeads("test_resnet").eval(), MaskHeadsModel("test_resnet").eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))


def test_probabilities_are_rounded_as_the_pipelines_files_hold_them(tmp_path):
    probs = torch.randn(30, 4).softmax(-1).numpy()       # float32, as the predict stage has them
    write_csv_atomic(tmp_path / "p.csv", fold_probs_frame([str(i) for i in range(30)], probs, list("abcd")))
    written = read_table(tmp_path / "p.csv")[["prob_a", "prob_b", "prob_c", "prob_d"]].to_numpy()
    np.testing.assert_array_equal(template.as_written(probs), written)
    assert not np.array_equal(written, probs.astype(np.float64))     # the rounding is real
    seeds = (written + 1e-3) / 1.004
    write_csv_atomic(tmp_path / "s.csv", pd.DataFrame(seeds, columns=list("abcd")), float_format="%.7g")
    np.testing.assert_array_equal(template.as_written(seeds, "%.7g"), pd.read_csv(tmp_path / "s.csv").to_numpy())


@pytest.mark.parametrize("kind,classes,positive", [("labels", ["x", "01", "y,z"], None),
                                                   ("probability", ["0", "1"], "1"),
                                                   ("probability", ["no", "yes"], "no"),
                                                   ("class_probabilities", ["cat", "dog", "emu"], None)])
def test_the_submission_is_filled_as_the_pipeline_fills_it(kind, classes, positive):
    rng = np.random.default_rng(7)
    columns = ["id", *classes] if kind == "class_probabilities" else ["id", "target"]
    sample = pd.DataFrame({c: ["0.5"] * 6 for c in columns}).assign(id=[f"0{i}" for i in range(6)])
    scores = rng.random((6, len(classes)))
    picked = scores.argmax(axis=1)
    fmt = SubmissionFormat(kind, tuple(classes), positive, "")
    theirs = fill(sample, fmt, "target", [classes[i] for i in picked], scores)
    ours = template.fill_submission(sample, {"kind": kind, "positive": positive, "target_column": "target"},
                                    classes, picked, scores)
    assert ours.to_csv(index=False) == theirs.to_csv(index=False)


def test_a_format_the_template_cannot_write_is_an_error():
    with pytest.raises(template.BundleError, match="submission format 'top3'"):
        template.fill_submission(pd.DataFrame({"id": ["a"]}), {"kind": "top3"}, ["a"], [0], np.ones((1, 1)))


def test_the_submission_is_replaced_only_once_written(tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    out.write_text("old\n")

    def broken(self, path, **kwargs):
        io.open(path, "w").write("half")
        raise OSError("disk full")
    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        template.write_csv(pd.DataFrame({"id": ["a"]}), out)
    assert out.read_text() == "old\n" and list(tmp_path.iterdir()) == [out]


def test_each_fold_averages_its_checkpoints_then_its_seeds_as_the_predict_and_merge_seeds_stages_write_them(tmp_path):
    """Two seeds x two checkpoints of fold 0: the predict stage writes each seed's checkpoint mean (float32) to
    its test_probs.csv, the real merge-seeds averages the seeds' files into the fold's, the ensemble reads that."""
    from pipeline.bundle.build import SEED_AVERAGE_FORMAT
    from pipeline.config import load_config, seed_config
    from pipeline.predict.seeds import merge_seeds

    classes, ids = ["a", "b", "c"], [f"t{i}" for i in range(25)]
    (tmp_path / "folds.csv").write_text("row,label,fold\n")
    cfg = load_config(None, {"output_dir": str(tmp_path), "experiment": "x", "seeds": [0, 1],
                             "folds": {"n_splits": 2, "dir": str(tmp_path), "name": "folds"}})
    per_member = [torch.randn(25, 3).softmax(-1).numpy() for _ in range(4)]
    for s in (0, 1):
        fold = seed_config(cfg, s).fold_dir(0)
        fold.mkdir(parents=True)
        (fold / "weights.json").write_text('{"classes": ["a", "b", "c"]}')
        oof = pd.DataFrame({"row": [0], "label": ["a"], "fold": [0], "prob_a": [1.0], "prob_b": [0.0], "prob_c": [0.0]})
        for name in ("oof.csv", "oof_tta.csv"):
            oof.to_csv(fold / name, index=False)
        checkpoint_mean = np.mean(per_member[2 * s:2 * s + 2], axis=0)     # as the predict stage averages them
        write_csv_atomic(fold / "test_probs.csv", fold_probs_frame(ids, checkpoint_mean, classes))
    merge_seeds(cfg, 0, log=lambda _: None)
    expected = read_table(cfg.fold_dir(0) / "test_probs.csv")[["prob_a", "prob_b", "prob_c"]].to_numpy()
    members = [{"fold": 0, "seed": s, "checkpoint": c} for s in (0, 1) for c in ("best", "last")]
    manifest = {"folds": [{"fold": 0}], "seed_average_format": SEED_AVERAGE_FORMAT}
    np.testing.assert_array_equal(template.fold_probabilities(per_member, members, manifest)[0], expected)
