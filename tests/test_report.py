"""The experiment report: one self-contained HTML file that renders in a real browser.

A tiny real run (3 folds, 1 epoch, the test model) is made once for the module; the report
built from it is opened in headless Chromium, which must load every embedded figure.
Chromium is Debian's `chromium` package: without it the rendering test is skipped, except
under CI (the CI variable set), where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.stamps import write_resolved
from pipeline.report.run_report import (headline_metric_columns, learning_curve_figure, prediction_distribution_table,
                             report_inputs, write_report)
from tests.conftest import tiny_config_dict

# Learning curves, confusion matrix, per-class F1, test distribution.
EXPECTED_FIGURES = 4
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--dump-dom"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_dir):
    """folds → train (1 epoch) → predict → ensemble on the tiny demo, once for this module.

    One torch thread: on a small shared machine, more threads than free cores make these
    tiny batches ten times slower.
    """
    import torch

    from pipeline import stages
    from pipeline.train import loop as train

    root = tmp_path_factory.mktemp("report")
    cfg = load_config(None, tiny_config_dict(root, demo_dir))
    write_resolved(cfg)
    quiet = lambda *a, **k: None  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stages.folds(cfg, log=quiet)
        for k in range(cfg.folds.n_splits):
            train.fit(cfg, k, log=quiet)
            stages.predict(cfg, [k], log=quiet)
        stages.ensemble(cfg, log=quiet)
    finally:
        torch.set_num_threads(threads)
    return cfg


@pytest.fixture(scope="module")
def report(run):
    path = write_report(run, log=lambda *a: None)
    return path, path.read_text()


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser; module-scoped so that, listed first, it is looked for before the tiny run."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: the report rendering test must run in CI")
    pytest.skip(reason)


def _render(chromium: str, path, tmp_path, width: int = 1280) -> tuple[str, int, int]:
    """(DOM after load, images loaded, images in all) of `path` in headless Chromium, `width` pixels wide."""
    result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size={width},2000",
                             f"--user-data-dir={tmp_path / 'chromium-profile'}", path.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:2000]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's load script did not run: {body.group(0)}"
    return dom, int(loaded.group(1)), int(total.group(1))


def test_report_renders_in_headless_chromium_with_every_figure_loaded(chromium, report, tmp_path):
    path, _ = report
    dom, loaded, total = _render(chromium, path, tmp_path)
    assert loaded == total >= EXPECTED_FIGURES, (loaded, total)
    assert "Experiment report" in dom and "Resolved configuration" in dom


def _widths(dom: str) -> tuple[int, int]:
    """(the page's scroll width, the window's width) that the page's load script recorded."""
    body = re.search(r"<body[^>]*>", dom).group(0)
    return (int(re.search(r'data-page-width="(\d+)"', body).group(1)),
            int(re.search(r'data-view-width="(\d+)"', body).group(1)))


def test_the_report_opens_with_its_summary_and_wide_tables_scroll_in_their_box(chromium, run, report, tmp_path):
    """In a 700-pixel window: the summary (the submission, its OOF estimate, the chain's steps) comes before the
    CV table, and the page is no wider than the window although the CV table is (it scrolls in its box)."""
    path, _ = report
    dom, loaded, total = _render(chromium, path, tmp_path, width=700)
    assert loaded == total
    record = json.loads((run.exp_dir / "ensemble.json").read_text())
    summary = dom[dom.index('id="summary"'):dom.index('id="cv"')]
    for text in ("Submission", "Out-of-fold estimate", f"{record['estimate']['oof']:.4f}", "logit adjustment",
                 "class bias", "prior-shift correction", "gain ± noise"):
        assert text in summary, text
    page, view = _widths(dom)
    assert page <= view, (page, view)
    assert re.search(r'<div class="table-box"><table><thead><tr><th>part</th>', dom)


def test_the_width_check_catches_a_table_that_widens_the_page(chromium, tmp_path):
    """The check the summary test relies on: a wide table outside a scrolling box makes the page wider."""
    from pipeline.report.plots import html_page, html_table

    wide = pd.DataFrame({f"column {i}": ["a long cell value"] for i in range(30)})
    boxed, bare = html_table(wide), html_table(wide).replace('<div class="table-box">', "<div>")
    for body, widened in ((boxed, False), (bare, True)):
        page = tmp_path / f"wide_{widened}.html"
        page.write_text(html_page("check", body, self_contained=True))
        width, view = _widths(_render(chromium, page, tmp_path, width=700)[0])
        assert (width > view) == widened, (width, view)


def test_the_render_check_catches_broken_and_external_images(chromium, tmp_path):
    """The check the report test relies on: a corrupt image and a network image both count as not loaded."""
    from pipeline.report.plots import data_uri, html_page, new_figure, png_bytes

    fig = new_figure(2, 2)
    fig.subplots().plot([0, 1], [1, 0])
    good = data_uri(png_bytes(fig))
    body = (f'<img src="{good}" alt="ok"><img src="{good[:60]}AAAA" alt="corrupt">'
            '<img src="http://127.0.0.1:9/x.png" alt="external, blocked by the page\'s policy">')
    page = tmp_path / "page.html"
    page.write_text(html_page("check", body, self_contained=True))
    _, loaded, total = _render(chromium, page, tmp_path)
    assert (loaded, total) == (1, 3)


def test_report_is_one_self_contained_file(report):
    path, html = report
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) >= EXPECTED_FIGURES
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:80]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in html and "url(" not in html
    assert not re.search(r'(src|href)="(https?:|//|file:)', html)
    assert "Content-Security-Policy" in html
    assert not list(path.parent.glob(".report.html.*"))  # the atomic write left no temporary file


def test_report_shows_the_cv_table_config_and_every_fold(run, report):
    _, html = report
    cv = pd.read_csv(run.exp_dir / "cv.csv")
    for part in cv["part"]:
        assert part.replace("'", "&#x27;") in html or part in html
    assert f"{cv['f1_macro'].iloc[0]:.4f}" in html
    assert "test_resnet" in html  # the resolved config, in a <pre>
    for k in range(run.folds.n_splits):
        assert f"<td class=\"num\">{k}</td>" in html  # the per-fold summary rows


def test_missing_inputs_name_the_files_and_the_make_target(tiny_cfg):
    with pytest.raises(FileNotFoundError) as info:
        write_report(tiny_cfg)
    message = str(info.value)
    assert "fold_0/metrics.csv" in message and "make train" in message
    for name in ("oof.csv", "cv.csv", "submission.csv"):
        assert name in message
    assert "make ensemble" in message


def test_missing_ensemble_only_is_reported_alone(run, tmp_path):
    cfg = load_config(None, {**_as_dict(run), "output_dir": str(tmp_path / "outputs")})
    shutil.copytree(run.exp_dir, cfg.exp_dir)
    (cfg.exp_dir / "submission.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"submission\.csv \(run `make ensemble`\)") as info:
        report_inputs(cfg)
    assert "metrics.csv" not in str(info.value)


def _as_dict(cfg) -> dict:
    from pipeline.config import config_to_dict
    return config_to_dict(cfg)


def test_learning_curves_take_any_validation_columns(tiny_cfg):
    classes = ["a", "b"]
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95],
                            "val_accuracy": [0.5, 0.6, 0.7], "val_f1_macro": [0.4, 0.5, 0.45],
                            "val_top3_accuracy": [0.9, 0.95, 0.97], "val_f1_a": [0.1, 0.2, 0.3],
                            "val_f1_b": [0.3, 0.2, 0.1], "lr": [1e-3, 5e-4, 1e-4], "seconds": [1, 1, 1]})
    assert headline_metric_columns(metrics, classes) == ["val_accuracy", "val_f1_macro", "val_top3_accuracy"]
    fig = learning_curve_figure(tiny_cfg, [metrics, metrics.iloc[:1]], classes)  # a 1-epoch fold too
    assert len(fig.axes) == 8


def test_prediction_distribution_against_the_training_prior():
    table = prediction_distribution_table(["a", "a", "a", "b"], ["b", "b", "c"], ["a", "b"])
    assert table["class"].tolist() == ["a", "b", "c"]  # a predicted class outside the list still shows
    assert table["train images"].tolist() == [3, 1, 0]
    assert table["predicted test images"].tolist() == [0, 2, 1]
    np.testing.assert_allclose(table["train share"], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(table["predicted / train share"].iloc[:2], [0.0, (2 / 3) / 0.25])
    assert np.isnan(table["predicted / train share"].iloc[2])


def test_suspected_duplicates_are_shown_under_the_cv_table(run, tmp_path):
    """A leaks.csv with a pair (as `make ensemble` writes it) puts the warning and the pair's figure in the report;
    an empty one puts neither."""
    cfg = load_config(None, {**_as_dict(run), "output_dir": str(tmp_path / "outputs")})
    shutil.copytree(run.exp_dir, cfg.exp_dir)
    images = pd.read_csv(cfg.data.train_csv)["image"]
    pair = pd.DataFrame({"row_a": [0], "image_a": [f"{cfg.data.image_root}/{images[0]}"], "fold_a": [0],
                         "row_b": [1], "image_b": [f"{cfg.data.image_root}/{images[1]}"], "fold_b": [1],
                         "label": ["x"], "similarity": [0.99], "score": [9.0]})
    figures = lambda html: len(re.findall(r'<img src="data:image/png', html))  # noqa: E731
    pair.head(0).to_csv(cfg.exp_dir / "leaks.csv", index=False)
    quiet = write_report(cfg, log=lambda *a: None).read_text()
    pair.to_csv(cfg.exp_dir / "leaks.csv", index=False)
    warned = write_report(cfg, log=lambda *a: None).read_text()
    assert "Possible validation leakage" not in quiet and "Possible validation leakage" in warned
    assert figures(warned) == figures(quiet) + 1
