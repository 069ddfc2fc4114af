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
from pipeline.bundle.decisions import decisions_from_ensemble, shift_arrays
from pipeline.competitions.mask.heads import MaskHeadsModel
from pipeline.data.cache import BatchNormalize, geometry_transform
from pipeline.data.transforms import load_rgb
from pipeline.ensemble import label_shift
from pipeline.ensemble.chain import Rows
from pipeline.ensemble.decide import decide
from pipeline.ensemble.plan import Settings, factor_choices, shift_choice
from pipeline.ensemble.record import apply_submission
from pipeline.ensemble.steps.factors import apply_log_factor
from pipeline.ensemble.steps.prior_shift import fit_estimator
from pipeline.ensemble.steps.selection import merge_views
from pipeline.ensemble.voting import vote, vote_scores
from pipeline.fileio import read_table, write_csv_atomic
from pipeline.metrics import COMPETITION_METRICS, metric_gain
from pipeline.predict.probs import candidate_frame, candidates_of
from pipeline.predict.tta import parse_views, predict_tta_with_views
from pipeline.results.formats import SubmissionFormat, fill

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
def test_every_merge_mode_gives_the_ensembles_probabilities(mode):
    rng = np.random.default_rng(8)
    probs = _probs(rng, (3, 20, 5))
    probs[0, 0] = [1.0, 0, 0, 0, 0]             # an exact zero: floored the same way
    np.testing.assert_array_equal(template.merge_views(probs, mode, axis=0), merge_views(probs, mode, axis=0))


def test_the_views_run_in_one_pass_and_give_the_predict_stages_per_view_probabilities():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 6)).eval()
    x = torch.randn(5, 3, 16, 16)
    views = parse_views(["identity", "hflip", "scale_0.9"])
    ours = template.view_probs(model, x, [template.view_function(v.name) for v in views])
    assert torch.equal(ours, predict_tta_with_views(model, x, views, "mean")[0])


@pytest.mark.parametrize("mode", template.VOTING_MODES)
def test_every_vote_gives_the_pipelines_classes_and_scores(mode):
    rng = np.random.default_rng(0)
    probs = _probs(rng, (4, 50, 5))
    probs[:, :10] = probs[0, :10]               # rows where the folds agree exactly: ties in the ranks
    probs[:2, 10:20], probs[2:, 10:20] = [0.6, 0.4, 0, 0, 0], [0.1, 0.9, 0, 0, 0]   # hard-vote ties
    np.testing.assert_array_equal(template.vote(probs, mode), vote(probs, mode))
    np.testing.assert_array_equal(template.vote_scores(probs, mode), vote_scores(probs, mode))


def test_the_per_class_factor_is_the_ensembles():
    rng = np.random.default_rng(1)
    probs = _probs(rng, (3, 40, 4))
    probs[0, 0] = [1.0, 0.0, 0.0, 0.0]          # an exact zero: floored the same way
    factor = [0.0, 0.5, -1.25, 3.0]
    np.testing.assert_array_equal(template.apply_log_factor(probs, factor), apply_log_factor(probs, factor))


@pytest.mark.parametrize("metric", list(COMPETITION_METRICS))
def test_every_metric_is_the_pipelines(metric):
    rng = np.random.default_rng(9)
    for n_classes in (2, 4):
        y, probs = rng.integers(0, n_classes, 70), _probs(rng, (70, n_classes))
        probs[:5] = probs[5]                    # tied scores: average ranks in the AUC
        assert template.metric_gain(metric, y, probs) == pytest.approx(metric_gain(metric, y, probs), rel=1e-12)
    absent = np.zeros(20, dtype=int)            # one class only: AUC and QWK undefined, F1 of an absent class 0
    probs = _probs(rng, (20, 3))
    assert template.metric_gain(metric, absent, probs) == pytest.approx(metric_gain(metric, absent, probs))


def test_em_bbse_and_the_g_test_are_the_pipelines():
    rng = np.random.default_rng(3)
    oof, test, y = _probs(rng, (80, 5)), _probs(rng, (60, 5)), rng.integers(0, 5, 80)
    prior = [0.3, 0.3, 0.2, 0.1, 0.1]
    np.testing.assert_array_equal(template.em_prior(test, prior), label_shift.em_prior(test, prior)[0])
    np.testing.assert_array_equal(template.bbse_prior(oof, y, test), label_shift.bbse_prior(oof, y, test))
    oof[:, 4] = test[:, 4] = 0                  # a class neither set predicts: dropped from the table
    g, p = template.shift_test(oof, test)
    ref_g, ref_p = label_shift.shift_test(oof, test)
    assert g == pytest.approx(ref_g, rel=1e-12) and p == pytest.approx(ref_p, rel=1e-9)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 10, 17, 60])
def test_the_shift_tests_chi_square_tail_is_scipys(dof):
    from scipy.stats import chi2

    for x in (0.01, 0.5, dof * 0.8, dof + 3.0, 40.0, 150.0, 700.0):
        assert template.chi2_sf(x, dof) == pytest.approx(chi2.sf(x, dof), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("method", ["em", "bbse", "calibrated_em"])
def test_each_estimator_estimates_and_corrects_as_the_ensembles(method):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    oof = np.eye(3)[y] * 0.5 + _probs(rng, (200, 3)) * 0.5
    test = _probs(rng, (3, 90, 3))
    theirs = fit_estimator(method, oof, y, [0.5, 0.3, 0.2])
    calibration = theirs.params().get("calibration")
    ours = template.Estimator(method, theirs.reference.tolist(), calibration, oof, y)
    q = ours.estimate(test)
    np.testing.assert_array_equal(q, theirs.estimate(test))
    np.testing.assert_array_equal(ours.log_factor(q), theirs.log_factor(q))


def _classifier_rows(rng, n: int, mix, n_classes: int = 3, sharp: float = 0.3):
    y = rng.choice(n_classes, n, p=mix)
    return y, np.eye(n_classes)[y] * sharp + _probs(rng, (n, n_classes)) * (1 - sharp)


SHIFTS = {  # (ensemble.prior_shift, the test mix): the OOF rows are balanced
    "auto, a strong shift": ("auto", [0.8, 0.15, 0.05]),
    "auto, no shift": ("auto", [1 / 3, 1 / 3, 1 / 3]),
    "em": ("em", [0.6, 0.3, 0.1]),
    "bbse": ("bbse", [0.2, 0.2, 0.6]),
    "calibrated_em": ("calibrated_em", [0.5, 0.4, 0.1]),
}


@pytest.mark.parametrize("case", list(SHIFTS))
def test_the_prior_shift_is_decided_and_fitted_again_as_the_ensembles_chain_did(case):
    """The chain of the ensemble stage (a class bias fitted out of fold, then the prior shift) decided on
    constructed OOF and test rows; the bundle's decisions and arrays built from its record; the template's
    correction on the same test rows must be the chain's: applied or not, the estimate, the log factor."""
    mode, mix = SHIFTS[case]
    rng = np.random.default_rng(5)
    y, oof = _classifier_rows(rng, 600, [1 / 3] * 3)
    test = np.stack([_classifier_rows(np.random.default_rng(6), 400, mix)[1] + rng.random((400, 3)) * 0.05
                     for _ in range(3)])
    rows, metric, prior = Rows(oof, y, np.arange(600) % 3, test), "f1_macro", (0.34, 0.33, 0.33)
    settings = Settings(class_bias="on")
    states, steps = decide(factor_choices(settings, metric, prior), rows, metric)
    _, shifted = decide([shift_choice(mode, prior, 400, 0.01)], rows, metric, start=states[-1])
    decisions = steps + shifted
    fitted = [np.asarray(d.fitted["log_factor"]) for d in decisions if d.applied]
    record = {"chain": [d.as_dict() for d in decisions], "metric": metric, "prior_shift": {"alpha": 0.01},
              "submission": {"views": ["identity"], "merge": "mean", "checkpoints": ["best"], "voting": "soft",
                             "log_factor": sum(fitted, np.zeros(3)).tolist()}}
    arrays, calibration = shift_arrays(states[-1], y, shifted[0].fitted["method"], prior)
    bundle = decisions_from_ensemble(record, 2.0, calibration)
    log_factor, report = template.submission_log_factor(bundle, test, arrays)
    assert report["prior_shift"]["applied"] == shifted[0].applied
    assert report["prior_shift"]["estimate"] == pytest.approx(shifted[0].fitted["estimate"], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(log_factor, record["submission"]["log_factor"], rtol=1e-9, atol=1e-12)
    if mode == "auto":
        sim = shifted[0].extra["simulation"]
        assert report["prior_shift"]["p_value"] == pytest.approx(sim["shift_p_value"], rel=1e-9)
        assert report["prior_shift"]["gain"] == pytest.approx(shifted[0].gain.gain, rel=1e-9, abs=1e-12)
        assert report["prior_shift"]["noise"] == pytest.approx(shifted[0].gain.noise, rel=1e-9, abs=1e-12)
        for key in ("estimate_l1_error", "shift_l1"):                     # what the reliability veto compares
            assert report["prior_shift"][key] == pytest.approx(sim[key], rel=1e-9, abs=1e-12)
        assert shifted[0].applied == (case == "auto, a strong shift")       # both verdicts are exercised


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


@pytest.mark.parametrize("chosen", [["best"], ["best", "last"]])
def test_each_fold_is_read_as_the_ensemble_reads_the_seeds_merged_test_files(tmp_path, chosen):
    """Two seeds x two checkpoints x two views of fold 0: each seed's test_probs.csv holds every (checkpoint,
    view) pair's float32 probabilities as the predict stage writes them, the real merge-seeds averages the seeds'
    files into the fold's, and the ensemble's submission entry reads that; the template must read the same."""
    from pipeline.bundle.build import SEED_AVERAGE_FORMAT
    from pipeline.config import load_config, seed_config
    from pipeline.predict.seeds import merge_seeds

    classes, ids, views = ["a", "b", "c"], [f"t{i}" for i in range(25)], ["identity", "hflip"]
    (tmp_path / "folds.csv").write_text("row,label,fold\n")
    cfg = load_config(None, {"output_dir": str(tmp_path), "experiment": "x", "seeds": [0, 1],
                             "folds": {"n_splits": 2, "dir": str(tmp_path), "name": "folds"}})
    per_member = [torch.randn(2, 25, 3).softmax(-1).numpy() for _ in range(4)]     # (V, N, C) float32
    members = [{"fold": 0, "seed": s, "checkpoint": c} for s in (0, 1) for c in ("best", "last")]
    for s in (0, 1):
        fold = seed_config(cfg, s).fold_dir(0)
        fold.mkdir(parents=True)
        (fold / "weights.json").write_text('{"classes": ["a", "b", "c"]}')
        oof = pd.DataFrame({"row": [0], "label": ["a"], "fold": [0], "prob_a": [1.0], "prob_b": [0.0], "prob_c": [0.0]})
        for name in ("oof.csv", "oof_tta.csv"):
            oof.to_csv(fold / name, index=False)
        pairs = {m["checkpoint"]: p for m, p in zip(members, per_member) if m["seed"] == s}
        every = candidate_frame({"all": np.mean(list(pairs.values()), axis=0)}, views, classes)   # as predict writes
        merged = pd.DataFrame({f"@{k}:prob_{c}": p.mean(axis=0)[:, j] for k, p in pairs.items()
                               for j, c in enumerate(classes)})
        write_csv_atomic(fold / "test_probs.csv", pd.concat([pd.DataFrame({"id": ids}), every, merged,
                                                             candidate_frame(pairs, views, classes)], axis=1))
    merge_seeds(cfg, 0, log=lambda _: None)
    frame = read_table(cfg.fold_dir(0) / "test_probs.csv")
    assert candidates_of(frame, classes).checkpoints == ("best", "last")
    entry = {"files": ["fold_0/test_probs.csv"], "classes": classes, "views": views, "merge": "geometric_mean",
             "checkpoints": chosen, "template": candidates_of(frame, classes).template, "log_factor": [0.0] * 3,
             "voting": "soft"}
    manifest = {"folds": [{"fold": 0}], "seed_average_format": SEED_AVERAGE_FORMAT}
    decisions = {"tta": {"views": views, "merge": "geometric_mean"}, "checkpoints": chosen}
    ours = template.apply_log_factor(template.fold_probabilities(per_member, members, manifest, decisions), [0.0] * 3)
    np.testing.assert_array_equal(ours, apply_submission(entry, [frame])[0])


def test_a_single_runs_probabilities_are_rounded_as_the_predict_stage_writes_them(tmp_path):
    per_view = torch.randn(2, 30, 4).softmax(-1).numpy()          # float32, as the predict stage has them
    frame = candidate_frame({"best": per_view}, ["identity", "hflip"], list("abcd"))
    write_csv_atomic(tmp_path / "p.csv", frame)
    written = read_table(tmp_path / "p.csv").to_numpy().reshape(30, 2, 4).transpose(1, 0, 2)
    np.testing.assert_array_equal(template.as_written(per_view), written)
    assert not np.array_equal(written, per_view.astype(np.float64))     # the rounding is real


def test_a_16_bit_image_is_refused_not_clipped(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    with pytest.raises(template.BundleError, match=r"x.png is a I;16 \(16/32-bit\) image"):
        template.decode(path, 8)
