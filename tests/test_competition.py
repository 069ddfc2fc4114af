"""The competition metric, class bias fitted out of fold (nested), and the submission formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from pipeline.config import ConfigError, load_config
from pipeline.metrics import COMPETITION_METRICS, metric_gain, metric_value
from pipeline.ensemble.class_bias import apply_bias, fit_class_bias
from pipeline.ensemble.chain import Nested, Rows, nested_chain
from pipeline.ensemble.steps.factors import ClassBiasStep, LogitAdjustStep
from pipeline.results.formats import check_values, detect_format, fill, scores_of
from pipeline.ensemble.voting import choose_tau, class_priors


def _case(n=300, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[y]
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# ---- one definition per metric ----------------------------------------------------------------------

def test_each_competition_metric_is_scikit_learns():
    y, p = _case()
    pred = p.argmax(axis=1)
    expected = {"f1_macro": f1_score(y, pred, average="macro"), "accuracy": accuracy_score(y, pred),
                "roc_auc": roc_auc_score(y, p, multi_class="ovr"), "log_loss": sk_log_loss(y, p),
                "qwk": cohen_kappa_score(y, pred, weights="quadratic")}
    assert set(expected) == set(COMPETITION_METRICS)
    for name, value in expected.items():
        assert metric_value(name, y, p) == pytest.approx(value, abs=1e-9), name


def test_binary_roc_auc_ranks_by_the_second_class():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    assert metric_value("roc_auc", y, p) == roc_auc_score(y, p[:, 1]) == 0.75


def test_gain_is_higher_for_better_predictions_whichever_direction_the_metric_has():
    y, p = _case()
    worse = 0.5 * p + 0.5 / p.shape[1]     # the same argmax, less confident: a worse log-loss
    assert metric_gain("log_loss", y, p) > metric_gain("log_loss", y, worse)
    assert metric_gain("log_loss", y, p) == -metric_value("log_loss", y, p)
    assert metric_gain("f1_macro", y, p) == metric_value("f1_macro", y, p)


def test_monitor_follows_the_competition_metric_unless_set():
    assert load_config(None, {"competition": {"metric": "qwk"}}).train.monitor == "qwk"
    assert load_config(None, {}).train.monitor == "f1_macro"
    assert load_config(None, {"competition": {"metric": "qwk"}, "train": {"monitor": "loss"}}).train.monitor == "loss"
    with pytest.raises(ConfigError, match="competition.metric: 'kappa' is not one of"):
        load_config(None, {"competition": {"metric": "kappa"}})


def test_tau_is_chosen_by_the_metric_it_is_given():
    y, p = _case(n=400, classes=3, seed=1)
    prior, grid = class_priors(y, 3), [0.0, 0.5, 1.0, 2.0]
    for metric in ("log_loss", "accuracy"):
        tau, curve = choose_tau(p, y, prior, grid, metric=metric)
        gains = {t: g for t, g in curve}
        assert tau == max(grid, key=lambda t: (gains[t], -t))
        from pipeline.ensemble.voting import logit_adjust
        assert gains[tau] == pytest.approx(metric_gain(metric, y, logit_adjust(p, prior, tau)))


# ---- class bias ---------------------------------------------------------------------------------------

def test_class_bias_raises_the_metric_on_the_rows_it_was_fitted_on():
    y, p = _case(n=400, classes=3, seed=2)
    p = apply_bias(p, [0.0, -1.5, 0.8])       # a miscalibrated model: class 1 under-, class 2 over-predicted
    bias = fit_class_bias(p, y, "f1_macro")
    assert metric_value("f1_macro", y, apply_bias(p, bias)) > metric_value("f1_macro", y, p) + 0.02
    assert bias[1] - bias[0] > 0.5 and bias[2] - bias[0] <= 0   # it undoes the distortion's direction


def test_binary_bias_is_a_threshold_on_class_one_and_no_gain_means_no_bias():
    y = np.array([0] * 8 + [1] * 4)
    p1 = np.array([0.05, 0.1, 0.1, 0.15, 0.2, 0.2, 0.25, 0.3] + [0.35, 0.4, 0.45, 0.6])
    p = np.stack([1 - p1, p1], axis=1)
    bias = fit_class_bias(p, y, "f1_macro")
    assert bias[0] == 0 and bias[1] > 0
    assert (apply_bias(p, bias).argmax(axis=1) == y).all()
    perfect = np.eye(2)[y] * 0.8 + 0.1
    assert fit_class_bias(perfect, y, "f1_macro").tolist() == [0.0, 0.0]


def test_nested_fits_never_see_the_held_folds_labels():
    """Flip every label of fold 0: fold 0's nested probabilities do not move, the other folds' may."""
    y, p = _case(n=300, classes=3, seed=3)
    p = apply_bias(p, [0.0, -1.0, 0.5])
    folds = np.arange(300) % 3
    steps = [LogitAdjustStep((0.0, 0.5, 1.0), "f1_macro"), ClassBiasStep("f1_macro")]
    out = nested_chain(steps, Rows(p, y, folds))
    flipped = y.copy()
    flipped[folds == 0] = (y[folds == 0] + 1) % 3
    again = nested_chain(steps, Rows(p, flipped, folds))
    np.testing.assert_array_equal(out[folds == 0], again[folds == 0])
    assert not np.array_equal(out[folds != 0], again[folds != 0])


def test_nested_refuses_a_single_fold():
    with pytest.raises(ValueError, match="two or more folds"):
        Nested(Rows(np.full((4, 2), 0.5), np.zeros(4, int), np.zeros(4, int))).add(ClassBiasStep("f1_macro"))


# ---- submission formats -------------------------------------------------------------------------------

def _sample(**columns):
    return pd.DataFrame({"id": ["a", "b", "c"], **columns})


@pytest.mark.parametrize("columns, classes, kind", [
    ({"cat": ["0"] * 3, "dog": ["0"] * 3}, ["cat", "dog"], "class_probabilities"),
    ({"label": ["0.5"] * 3}, ["0", "1"], "probability"),
    ({"label": ["zero"] * 3}, ["zero", "one"], "labels"),
    ({"label": ["0"] * 3}, ["0", "1"], "labels"),            # 0/1 placeholders could be labels: not guessed
    ({"label": ["0.5"] * 3}, ["a", "b", "c"], "labels"),      # fractions but three classes
    ({"label": ["0.5", "1.5", "0"]}, ["0", "1"], "labels"),   # not all in [0, 1]
])
def test_auto_reads_the_format_from_the_sample(columns, classes, kind):
    assert detect_format(_sample(**columns), "id", "label", classes).kind == kind


def test_a_named_format_that_the_sample_cannot_hold_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="competition.submission: probability is for two classes; this data has 3"):
        detect_format(_sample(label=["x"] * 3), "id", "label", ["a", "b", "c"], "probability")
    with pytest.raises(ConfigError, match=r"lacks \['dog'\] and has extra \['label'\]"):
        detect_format(_sample(cat=["0"] * 3, label=["0"] * 3), "id", "label", ["cat", "dog"], "class_probabilities")
    with pytest.raises(ConfigError, match="competition.positive_class: 'yes' is not a class"):
        detect_format(_sample(label=["0.5"] * 3), "id", "label", ["0", "1"], "auto", "yes")


def test_probability_submissions_hold_the_positive_class_and_read_back():
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    fmt = detect_format(_sample(label=["0.5"] * 3), "id", "label", ["no", "yes"], positive_class="no")
    sub = fill(_sample(label=["0.5"] * 3), fmt, "label", None, scores)
    assert sub["label"].tolist() == ["0.20000000", "0.90000000", "0.50000000"]
    np.testing.assert_allclose(scores_of(sub, fmt, "label"), scores)
    per_class = detect_format(_sample(dog=["0"] * 3, cat=["0"] * 3), "id", "label", ["cat", "dog"])
    sub = fill(_sample(dog=["0"] * 3, cat=["0"] * 3), per_class, "label", None, scores * 2)  # renormalised
    assert list(sub.columns) == ["id", "dog", "cat"]          # the sample's column order
    np.testing.assert_allclose(scores_of(sub, per_class, "label"), scores)
    assert check_values(sub, per_class, "label") == []


def test_malformed_probabilities_are_rejected_with_their_line():
    fmt = detect_format(_sample(cat=["0"] * 3, dog=["0"] * 3), "id", "label", ["cat", "dog"])
    bad = _sample(cat=["0.5", "1.2", "x"], dog=["0.5", "0.0", "0.3"])
    problems = check_values(bad, fmt, "label")
    assert "not numbers (first at line 4: 'x')" in problems[0]
    assert "outside [0, 1] (first at line 3: 1.2)" in problems[1]
    assert check_values(_sample(cat=["0.5", "0.2", "0.1"], dog=["0.5", "0.7", "0.9"]), fmt, "label") == [
        "1 row(s) do not sum to 1 over the class columns (first at line 3: 0.9)"]
    binary = detect_format(_sample(label=["0.5"] * 3), "id", "label", ["0", "1"])
    assert "outside [0, 1] (first at line 2: -0.1)" in check_values(_sample(label=["-0.1", "0.2", "1"]), binary,
                                                                        "label")[0]


# ---- the binary demo end to end: a probability submission ---------------------------------------------

def test_binary_demo_writes_validates_and_scores_a_probability_submission(tmp_path, monkeypatch):
    """The odd/even demo (sample of 0.5 placeholders) gets P("1") of the soft vote; `validate` accepts it and
    rejects a probability above 1; `score` reads the written probabilities back (ROC-AUC, the headline);
    the report counts the classes the probabilities predict."""
    import pipeline.report.run_report as run_report
    from pipeline.competitions.demo import make_demo_dataset
    from pipeline.data.fold_file import make_folds
    from pipeline.results.ensemble_stage import ensemble
    from pipeline.predict.fold import predict_fold
    from pipeline.results.score import score
    from pipeline.results.submission import SubmissionError, validate_for_config
    from pipeline.train.loop import fit
    from tests.conftest import tiny_config_dict

    data = tmp_path / "odd"
    make_demo_dataset(data, seed=0, scale=0.05, test_per_class=3, task="odd")
    raw = tiny_config_dict(tmp_path, data)
    raw["data"]["demo_task"] = "odd"
    raw["competition"] = {"metric": "roc_auc"}
    cfg = load_config(None, raw)
    quiet = dict(log=lambda *_: None)
    make_folds(cfg, **quiet)
    for k in range(cfg.folds.n_splits):
        fit(cfg, k, **quiet)
        predict_fold(cfg, k, **quiet)
    ensemble(cfg, **quiet)
    sub = pd.read_csv(cfg.exp_dir / "submission.csv", dtype=str)
    folds = [pd.read_csv(cfg.fold_dir(k) / "test_probs.csv", dtype={"id": str}) for k in range(3)]
    soft = np.mean([f.set_index("id").loc[sub["id"], "prob_1"].to_numpy() for f in folds], axis=0)
    np.testing.assert_allclose(sub["label"].astype(float), soft, atol=1e-8)
    assert validate_for_config(cfg) == cfg.exp_dir / "submission.csv"
    seen = []
    real = run_report.prediction_distribution_table
    monkeypatch.setattr(run_report, "prediction_distribution_table",
                        lambda train, predicted, classes: seen.append(list(predicted)) or real(train, predicted, classes))
    from pipeline.stamps import write_resolved
    write_resolved(cfg)                        # the resolved config.yaml the report shows
    run_report.write_report(cfg, **quiet)
    assert seen == [["1" if p > 0.5 else "0" for p in soft]]
    table = score(cfg, **quiet).set_index("model")
    assert table.columns[0] == "roc_auc"
    assert table.loc["submission.csv", "roc_auc"] == pytest.approx(table.loc["soft vote (submission)", "roc_auc"],
                                                                   abs=1e-6)
    sub.loc[2, "label"] = "1.5"
    sub.to_csv(cfg.exp_dir / "submission.csv", index=False)
    with pytest.raises(SubmissionError, match=r"outside \[0, 1\] \(first at line 4: 1.5\)"):
        validate_for_config(cfg)
