"""The pages' figures (README.md, docs/*.md) are exactly what `make docs` writes from the run files in docs/figures/."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.tools.docs import FIGURES, pages, render_blocks, rewrite_blocks, rewrite_pages
from tests.conftest import REPO


def test_every_page_holds_what_make_docs_writes_from_the_committed_run():
    blocks = render_blocks(REPO / FIGURES)
    texts = [page.read_text() for page in pages(REPO)]
    for page, text in zip(pages(REPO), texts):
        assert rewrite_blocks(text, blocks, page.name) == text, f"{page}'s figures drifted: run `make docs`"
    for name in ("run", "score", "cv", "bench"):
        assert any(f"<!-- docs:{name} -->\n{blocks[name]}<!-- /docs -->" in text for text in texts), name


def test_make_docs_rewrites_a_stale_block_on_a_docs_page_and_names_a_page_with_an_unknown_one(tmp_path):
    shutil.copytree(REPO / FIGURES, tmp_path / FIGURES)
    (tmp_path / "README.md").write_text("# x\n")
    stale = tmp_path / "docs" / "demo.md"
    stale.write_text("intro\n<!-- docs:cv -->\nold table\n<!-- /docs -->\nafter\n")
    changed = rewrite_pages(tmp_path)
    assert changed == {tmp_path / "README.md": False, stale: True}
    assert stale.read_text() == f"intro\n<!-- docs:cv -->\n{render_blocks(REPO / FIGURES)['cv']}<!-- /docs -->\nafter\n"
    (tmp_path / "docs" / "other.md").write_text("<!-- docs:typo -->\nx\n<!-- /docs -->\n")
    with pytest.raises(ValueError, match=r"docs/other.md: blocks with no generator.*\['typo'\]"):
        rewrite_pages(tmp_path)


def test_the_figures_are_those_of_the_run_files(tmp_path):
    """Change a number in a run file and the README block changes with it (nothing is typed by hand)."""
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("run.json", "bench.json", "cv.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    score = pd.DataFrame({"model": ["fold 0", "fold 1", "hard vote", "soft vote (submission)", "submission.csv"],
                          "f1_macro": [0.80, 0.90, 0.85, 0.875, 0.875], "accuracy": [0.81, 0.91, 0.86, 0.88, 0.88]})
    score.to_csv(figures / "score.csv", index=False)
    block = render_blocks(figures)["score"]
    assert "| fold 0 … fold 1 alone | 0.800 – 0.900 | 0.810 – 0.910 |" in block
    assert "| **soft vote (submission)** | **0.875** | **0.880** |" in block
    assert "| hard vote | 0.850 | 0.860 |" in block
    assert "0.025 below the best fold's and 0.075 above the worst fold's" in block


def test_a_readme_block_without_a_generator_is_an_error():
    with pytest.raises(ValueError, match=r"README.md: blocks with no generator, or whose files are missing.*: \['typo'\]"):
        rewrite_blocks("<!-- docs:typo -->\nx\n<!-- /docs -->\n", {"run": ""})


def test_an_extra_runs_tables_come_from_its_files_with_the_competition_metric_as_headline(tmp_path):
    import json
    figures = tmp_path / "figures"
    (figures / "odd").mkdir(parents=True)
    for name in ("run.json", "bench.json", "cv.csv", "score.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    pd.DataFrame({"model": ["fold 0", "submission.csv"], "roc_auc": [0.91, 0.975], "f1_macro": [0.5, 0.6]}).to_csv(
        figures / "odd" / "score.csv", index=False)
    pd.DataFrame({"part": ["fold 0", "out-of-fold, TTA (mean)"], "rows": [40, 200], "f1_macro": [0.1, 0.2],
                  "roc_auc": [0.93, 0.95]}).to_csv(figures / "odd" / "cv.csv", index=False)
    (figures / "odd" / "run.json").write_text(json.dumps({"command": "make x", "seconds": 75, "cpu": "cpu z",
                                                          "date": "2026-11-28"}))
    blocks = render_blocks(figures)
    assert "| submission.csv | 0.975 |" in blocks["odd_score"] and "f1_macro" not in blocks["odd_score"]
    assert "| out-of-fold, TTA (mean) | 200 | 0.950 |" in blocks["odd_cv"]
    assert blocks["odd_run"].startswith("Measured by `make x` on 2026-11-28, on cpu z (1 min 15 s)")


def test_the_stack_block_is_that_of_the_stack_and_blend_files(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("run.json", "bench.json", "cv.csv", "score.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    pd.DataFrame({"part": ["a (oof_tta.csv)", "b (oof_tta.csv)", "plain vote (soft, uniform weights)",
                           "blend soft, fitted weights, nested", "stack: x, nested (submission)"],
                  "f1_macro": [0.90, 0.80, 0.91, 0.92, 0.88]}).to_csv(figures / "stack_cv.csv", index=False)
    members = ["a (soft vote of its folds)", "b (soft vote of its folds)", "plain vote (soft, uniform weights)"]
    pd.DataFrame({"model": members + ["stack-a-b (test_probs.csv)", "stack-a-b: submission.csv (submission)"],
                  "f1_macro": [0.95, 0.85, 0.96, 0.97, 0.97]}).to_csv(figures / "stack_score.csv", index=False)
    pd.DataFrame({"model": members + ["blend-a-b: submission.csv (submission)"],
                  "f1_macro": [0.95, 0.85, 0.96, 0.94]}).to_csv(figures / "blend_score.csv", index=False)
    block = render_blocks(figures)["stack"]
    assert "| a alone | 0.900 | 0.950 |" in block and "| b alone | 0.800 | 0.850 |" in block
    assert "| blend, fitted weights (`make ensemble EXPS=`) | 0.920 | 0.940 |" in block
    assert "| **stack (`make stack EXPS=`)** | 0.880 | 0.970 |" in block
    assert "out of fold: the blend +0.010, the stack -0.030; on the test set: the blend -0.020, the stack +0.010" in block


def _write_run(folder, metric, cv_rows: dict, score_rows: dict):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"part": list(cv_rows), "rows": 10, "accuracy": 0.5, metric: list(cv_rows.values())}).to_csv(
        folder / "cv.csv", index=False)
    pd.DataFrame({"model": list(score_rows), metric: list(score_rows.values()), "accuracy": 0.5}).to_csv(
        folder / "score.csv", index=False)
    (folder / "run.json").write_text('{"command": "make x", "seconds": 1, "cpu": "z", "date": "2026-11-29"}')


def test_the_seed_and_binary_round_tables_come_from_their_runs_files(tmp_path):
    """Each seed alone against their average (the plain soft vote on test, whatever the submission applied),
    and the binary variant's table of every fitted choice and second round in its own metric."""
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("run.json", "bench.json", "cv.csv", "score.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    seeds = {"out-of-fold, TTA (mean)": 0.94, "seed 0 alone: out-of-fold, TTA": 0.93, "seed 1 alone: out-of-fold, TTA": 0.935}
    _write_run(figures / "seeds", "f1_macro", seeds,
               {"soft vote (submission)": 0.956, "seed 0 alone, soft vote": 0.95, "seed 1 alone, soft vote": 0.94})
    odd = {"out-of-fold, TTA (mean)": 0.976, "out-of-fold, TTA + class bias, fitted on the other folds": 0.975}
    _write_run(figures / "odd", "roc_auc", odd,
               {"soft vote": 0.97, "soft vote + prior-shift correction (em) (submission)": 0.5,
                "soft vote + class bias (not applied)": 0.968})
    _write_run(figures / "odd_pl", "roc_auc", {"out-of-fold, TTA (mean)": 0.99}, {"soft vote (submission)": 0.98})
    _write_run(figures / "odd_seeds", "roc_auc", {"out-of-fold, TTA (mean)": 0.981, "seed 0 alone: out-of-fold, TTA": 0.977},
               {"soft vote (submission)": 0.973, "seed 0 alone, soft vote": 0.971})
    _write_run(figures / "odd_stack", "roc_auc",
               {"a (oof_tta.csv)": 0.97, "b (oof_tta.csv)": 0.96, "plain vote (soft, uniform weights)": 0.978,
                "blend soft, fitted weights, nested": 0.977, "stack: x, nested (submission)": 0.979},
               {"a (soft vote of its folds)": 0.97, "b (soft vote of its folds)": 0.965,
                "plain vote (soft, uniform weights)": 0.975, "stack-a-b: submission.csv (submission)": 0.976})
    pd.DataFrame({"model": ["blend-a-b: submission.csv (submission)"], "roc_auc": [0.974]}).to_csv(
        figures / "odd_stack" / "blend_score.csv", index=False)
    blocks = render_blocks(figures)

    demo_oof = pd.read_csv(figures / "cv.csv").set_index("part").loc["out-of-fold, TTA (mean)", "f1_macro"]
    demo_soft = pd.read_csv(figures / "score.csv").set_index("model")["f1_macro"].filter(regex=r"^soft vote( \(submission\))?$")
    assert f"| `demo` (one seed, 42) | {demo_oof:.3f} | {demo_soft.iloc[0]:.3f} |" in blocks["seeds_runs"]
    assert "| seed 0 alone | 0.930 | 0.950 |" in blocks["seeds_runs"]
    assert "| **seeds 0 + 1 averaged within each fold** | 0.940 | 0.956 |" in blocks["seeds_runs"]
    assert "(seed 1 alone): +0.005 out of fold, +0.016 on the test set" in blocks["seeds_runs"]

    odd_block = blocks["odd_rounds"]
    assert "| odd/even demo, roc_auc |" in odd_block and "f1_macro" not in odd_block
    assert "| plain: soft vote of the folds (`demo-odd`) | 0.976 | 0.970 |" in odd_block   # not the EM submission
    assert "| class bias (a threshold), fitted on the other folds | 0.975 | 0.968 |" in odd_block
    assert "| **stack (`make stack EXPS=`)** | 0.979 | 0.976 |" in odd_block
    assert "| blend, fitted weights (`make ensemble EXPS=`) | 0.977 | 0.974 |" in odd_block
    assert "| pseudo-labels (`demo-odd-pl`) | 0.990 | 0.980 |" in odd_block
    assert "| seed 0 alone | 0.977 | 0.971 |" in odd_block and "averaged within each fold** | 0.981 | 0.973 |" in odd_block


def test_the_pseudo_label_list_sentence_counts_the_listed_images_and_the_right_labels(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("run.json", "bench.json", "cv.csv", "score.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    _write_run(figures / "pseudo", "f1_macro", {"out-of-fold, TTA (mean)": 0.95},
               {"fold 0": 0.9, "submission.csv": 0.98})
    pd.DataFrame({"id": ["t1", "t2", "t3"], "label": ["a", "b", "a"]}).to_csv(figures / "pseudo" / "pseudo_labels.csv",
                                                                           index=False)
    pd.DataFrame({"id": ["t0", "t1", "t2", "t3", "t4"], "label": ["a", "a", "a", "a", "b"]}).to_csv(
        figures / "pseudo" / "test_labels.csv", index=False)
    block = render_blocks(figures)["pseudo_list"]
    assert block.startswith("The list held 3 of the 5 test images (1 to 2 per class), 2 of them correctly labelled")


def test_the_prior_shift_sentence_comes_from_the_runs_ensemble_score_and_cv_files(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("run.json", "bench.json", "score.csv"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    record = json.loads((REPO / FIGURES / "ensemble.json").read_text())
    record["prior_shift"].update(applied=False, method=None, g_statistic=3.2, p_value=0.4, why="no shift found",
                                 model_prior=[0.3, 0.7], training_labels=[0.2, 0.8],
                                 estimates={"em": [0.45, 0.55], "bbse": [0.41, 0.59]})
    (figures / "ensemble.json").write_text(json.dumps(record))
    cv = pd.read_csv(REPO / FIGURES / "cv.csv")
    reversed_em = cv["part"].str.startswith("simulated reversed mix: EM correction")
    cv.loc[reversed_em, "f1_macro"] = 0.5
    cv.to_csv(figures / "cv.csv", index=False)
    score = pd.read_csv(figures / "score.csv").set_index("model")["f1_macro"]
    score = score.rename(index=lambda name: name.removesuffix(" (submission)"))
    block = render_blocks(figures)["prior_shift"]
    assert "G=3, p=0.4, and `auto` leaves the submission unchanged: no shift found." in block
    assert "effective prior spans 0.300–0.700 against raw label shares of 0.200–0.800" in block
    assert "the EM estimate of the test mix spans 0.450–0.550, BBSE's 0.410–0.590" in block
    assert f"EM-corrected {score['soft vote + prior-shift correction (em)']:.3f}," in block
    assert "(the submission)" not in block                  # nothing applied, no applied correction's score
    assert f"the rank vote {score['rank vote']:.3f}." in block
    plain = cv.loc[cv["part"].str.startswith("simulated reversed mix: no correction"), "f1_macro"].item()
    assert f"to the reversed mix: {plain:.3f} without and 0.500 with the EM correction" in block
    # Applied with an estimator of its own, the sentence gives that correction's score too.
    record["prior_shift"].update(applied=True, method="calibrated_em", why=None)
    (figures / "ensemble.json").write_text(json.dumps(record))
    chosen = score["soft vote + prior-shift correction (calibrated_em)"]
    assert f"CALIBRATED_EM-corrected (the submission) {chosen:.3f}," in render_blocks(figures)["prior_shift"]


def _write_leak_run(folder, oof: float, test: float, folds: tuple, flagged: tuple, rest: tuple):
    """A run's cv.csv and score.csv with its TTA row and its two leak rows ((rows, accuracy) each)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"part": ["out-of-fold, TTA (mean)", "OOF rows with a cross-fold near-duplicate", "OOF rows without one"],
                  "rows": [flagged[0] + rest[0], flagged[0], rest[0]], "accuracy": [0.5, flagged[1], rest[1]],
                  "f1_macro": [oof, 0.1, 0.2]}).to_csv(folder / "cv.csv", index=False)
    pd.DataFrame({"model": ["fold 0", "fold 1", "submission.csv"], "f1_macro": [*folds, test], "accuracy": 0.5}).to_csv(
        folder / "score.csv", index=False)
    (folder / "run.json").write_text('{"command": "make x", "seconds": 1, "cpu": "z", "date": "2026-11-29"}')


def test_the_leak_optimism_sentence_comes_from_the_three_runs_files(tmp_path):
    figures = tmp_path / "figures"
    _write_leak_run(figures, 0.90, 0.93, (0.88, 0.91), (6, 1.0), (94, 0.93))   # the grouped demo itself
    for name in ("run.json", "bench.json", "leak_eval.json"):
        (figures / name).write_bytes((REPO / FIGURES / name).read_bytes())
    _write_leak_run(figures / "nogroups", 0.99, 0.95, (0.90, 0.94), (80, 0.99), (20, 0.97))
    _write_leak_run(figures / "autogroups", 0.92, 0.96, (0.89, 0.93), (3, 0.8), (97, 0.92))
    pd.DataFrame({"similarity": [0.96, 0.97, 0.975]}).to_csv(figures / "autogroups" / "leaks.csv", index=False)
    pd.DataFrame({"similarity": [0.99] * 4}).to_csv(figures / "leaks.csv", index=False)
    block = render_blocks(figures)["leak_optimism"]
    assert "OOF macro-F1 (0.990) is 0.05–0.09 above what one fold model scores on the test set and 0.040 above" in block
    assert "with auto_groups it is 0.920 against the grouped run's 0.900, and 0.040 below its own test score" in block
    assert "without groups 80 of 100 OOF rows have a copy in another fold (accuracy 0.990; the 20 others: 0.970)" in block
    assert "flags 3 pairs of similarity 0.9600–0.9750 (3 rows, accuracy 0.800 against 0.920 for the rest)" in block
    assert "the 4 look-alike pairs (6 rows) score accuracy 1.000 against 0.930 for the other rows" in block
    pd.DataFrame({"similarity": []}).to_csv(figures / "autogroups" / "leaks.csv", index=False)
    assert "no pair (every pair the split's scan found is inside one fold)" in render_blocks(figures)["leak_optimism"]


def test_the_leak_tables_rows_come_from_the_eval_and_bench_files(tmp_path):
    figures = tmp_path / "figures"
    shutil.copytree(REPO / FIGURES, figures)
    case = {"true_pairs": 200, "flagged": 190, "correct": 180, "precision": 0.9474, "recall": 0.9, "probe_oof_f1": 0.7}
    found = {"groups given": {**case, "true_pairs": 0, "flagged": 3, "probe_oof_f1": 0.61},
             "groups withheld": {**case, "probe_oof_f1": 0.83}, "auto_groups (before the split)": {**case, "precision": 0.5}}
    (figures / "leak_sources.json").write_text(json.dumps({"fashion/crop": found, "seconds": 600}))
    (figures / "leak_bench.json").write_text(json.dumps(
        {"images": 100000, "size": 28, "source": "x", "seconds": 170.4, "aligned_pairs": 2000000, "pairs_flagged": 9000,
         "copies_planted": 10000, "scan_memory_mb": 700, "peak_rss_mb": 1900, "rss_before_scan_mb": 1200}))
    blocks = render_blocks(figures)
    assert "| fashion/crop (3 copies) | 200 | 0.947 | 0.900 | 3 (1.5%) | 0.500 / 0.900 | 0.610 / 0.830 / 0.700 |" in blocks["leak_eval"]
    assert "(10 min)" in blocks["leak_eval"]
    assert "one class of 100,000 images (x, 28 px, 10,000 of them planted copies) scans in 170 s" in blocks["leak_bench"]
    assert "needs 700 MB beyond the 1,200 MB the process held before it" in blocks["leak_bench"]
    (figures / "leak_bench.json").write_text(json.dumps(          # a bench that records its CPU, load and finds
        {"images": 100000, "size": 28, "source": "x", "seconds": 170.4, "cpu_seconds": 250.2, "cpus": 2,
         "load_average_before": 0.71, "candidate_pairs": 1300000, "aligned_pairs": 600000, "pairs_flagged": 9000,
         "planted_pairs_flagged": 8500, "copies_planted": 10000, "scan_memory_mb": 700, "peak_rss_mb": 1900,
         "rss_before_scan_mb": 1200}))
    bench = render_blocks(figures)["leak_bench"]
    assert "scans in 170 s, 250 s of CPU on 2 cores at load average 0.7 before it (1,300,000 candidate pairs, " \
           "600,000 of them aligned, 9,000 flagged, 8,500 of them planted copies)" in bench


def test_the_bench_table_warns_when_the_bare_models_pace_moved_between_repeats():
    from pipeline.tools.docs.demo_blocks import _pace_note

    assert _pace_note([848.0, 1203.5, 876.0, 860.0, 1205.0])[1].startswith(
        "The bare model itself ran at 848 to 1,205 images/s from one repeat to the next")
    assert _pace_note([1180.0, 1200.0, 1210.0]) == []     # within 15 %: the images/s column compares like with like
    assert _pace_note([]) == []                           # a bench file from before the rates were kept


def test_the_bench_block_carries_each_augmentations_cost_when_the_bench_measured_it():
    from pipeline.tools.docs.demo_blocks import bench_block

    bench = json.loads((REPO / "docs" / "figures" / "bench.json").read_text())
    bench.pop("augment", None)
    assert "augment.train per image" not in bench_block(bench)             # a bench from before the line
    bench["augment"] = {"images": 256, "size": 32, "all_us_per_image": 66.4,
                        "steps": [{"name": "Affine", "p": 0.7, "us_per_image": 58.2}]}
    assert "augment.train per image, each alone at its p (256 images at 32 px): Affine 58 us (p 0.7)" in \
        bench_block(bench)
