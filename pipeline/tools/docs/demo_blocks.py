"""The demo's blocks: how it was run, its test scores, its CV table, the bench, mutation scores, the extra runs' tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.tools.bench_report import augment_cost_lines, tta_settings
from pipeline.tools.docs.commands import BENCH_DEFAULTS_FIGURE, EXTRA_RUNS
from pipeline.tools.docs.tables import minutes

__all__ = ["blocks", "run_block", "score_block", "cv_block", "bench_block", "mutation_block", "extra_blocks"]


def run_block(run: dict) -> str:
    epochs = run["epoch_seconds"]
    low, high = (f"{min(epochs):.0f}", f"{max(epochs):.0f}") if epochs else ("", "")
    epoch_text = "" if not epochs else f", {low} s per epoch" if low == high else f", {low}–{high} s per epoch"
    return (f"Measured by `make docs-run` on {run['date']} (commit {run['commit']}), on {run['cpu']} with "
            f"{run['cores']} cores and no GPU: `{run['commands']['demo']}` after `make clean` took "
            f"**{minutes(run['seconds']['demo'])}**{epoch_text}; `{run['commands']['bench']}` took "
            f"{minutes(run['seconds']['bench'])}"
            + (f"; the second model, its blend and stack (`make stack`, [fitted choices](fitted-choices.md)) {minutes(run['seconds']['stack'])}"
               if "stack" in run["seconds"] else "")
            + ". Another CPU, thread count or library version gives other "
            "timings and may change scores in the last digits; one without native bf16 trains in float32 "
            "(`train.amp: auto`), which moves them further.\n")


def score_block(score: pd.DataFrame) -> str:
    folds = score[score["model"].str.match(r"fold \d+$")]
    votes = score[~score.index.isin(folds.index)]
    lines = ["| model (test set) | macro-F1 | accuracy |", "| --- | --- | --- |",
             f"| {folds['model'].iloc[0]} … {folds['model'].iloc[-1]} alone | "
             f"{folds['f1_macro'].min():.3f} – {folds['f1_macro'].max():.3f} | "
             f"{folds['accuracy'].min():.3f} – {folds['accuracy'].max():.3f} |"]
    for row in votes.itertuples():
        bold = "**" if "(submission)" in row.model else ""
        lines.append(f"| {bold}{row.model}{bold} | {bold}{row.f1_macro:.3f}{bold} | {bold}{row.accuracy:.3f}{bold} |")
    submission = votes[votes["model"] == "submission.csv"]["f1_macro"].iloc[0]
    best, worst = folds["f1_macro"].max(), folds["f1_macro"].min()
    gap = round(submission - best, 3)
    relation = "equal to" if gap == 0 else f"{abs(gap):.3f} {'above' if gap > 0 else 'below'}"
    lines += ["", f"The submission's macro-F1 is {relation} the best fold's and {submission - worst:.3f} above the "
              "worst fold's, and you cannot know in advance which fold is which."]
    return "\n".join(lines) + "\n"


def cv_block(cv: pd.DataFrame) -> str:
    lines = ["| part | rows | macro-F1 | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.part} | {r.rows} | {r.f1_macro:.3f} | {r.accuracy:.3f} |" for r in cv.itertuples()]
    return "\n".join(lines) + "\n"


_BENCH_ROWS = [("train", "bare", "train: bare forward + backward + step, in memory"),
               ("train", "disk", "train: decode + augment every epoch (`data.cache: false`)"),
               ("train", "cache_u8", "**train: cache, uint8 batches + batch normalise (default)**"),
               ("train", "cache_u8_noaug", "train: the same without augmentation (what the loop itself costs)"),
               ("train", "cache_u8_w1", "train: the same with 1 DataLoader worker"),
               ("predict", "bare", "TTA: bare forward passes (images × views)"),
               ("predict", "memory", "TTA: the views alone, on batches already in memory (their own cost)"),
               ("predict", "disk", "TTA: decode + transform (`data.cache: false`)"),
               ("predict", "cache_u8", "**TTA: cache, uint8 + batch normalise (default)**")]


def _efficiency(part: dict, key: str, headline: dict) -> str:
    if key == "bare":
        return "(1)"
    if key != "cache_u8":
        return f"{part[key]['efficiency']:.3f}"
    return f"**{headline['headline']}**" if headline["reliable"] else f"unreliable: {headline['why']}"


def bench_block(bench: dict, defaults: dict | None = None) -> str:
    """`make bench`'s table; with `defaults` (the same bench run with `--allocator-defaults`), the training
    efficiency the C allocator's own thresholds give, for comparison."""
    m = bench["meta"]
    lines = [f"{m['model']}, {m['image_size']}×{m['image_size']}, batch {m['batch_size']}, amp {m.get('amp', 'off')}, "
             f"channels_last {'on' if m.get('channels_last') else 'off'}{tta_settings(m)}, median of "
             f"{m['repeats']} paired runs, {m['torch_threads']} torch threads; load average "
             f"{m['load_before']} before, {m['load_after']} after:", "",
             "| phase | images/s | efficiency | peak RSS (MB) |", "| --- | --- | --- | --- |"]
    headlines = {"train": bench["training_headline"], "predict": bench["prediction_headline"]}
    for part, key, label in (r for r in _BENCH_ROWS if r[1] in bench[r[0]]):   # runs before a row existed lack it
        d = bench[part][key]
        lines.append(f"| {label} | {d['images_per_s']:.0f} | {_efficiency(bench[part], key, headlines[part])} | "
                     f"{d['peak_rss_mb']:.0f} |")
    lo = bench["loader"]
    lines.append(f"| loader alone, training transform: cold (decode) / warm (cache) | "
                 f"{lo['cold_train']['images_per_s']:.0f} / {lo['warm_train_u8']['images_per_s']:.0f} | | |")
    lines += _pace_note(bench["train"]["bare"].get("images_per_s_all", []))
    costs = augment_cost_lines(bench.get("augment"), bench["train"]["bare"]["images_per_s"])   # [] before the line
    if costs:
        lines += ["", *costs]
    if defaults is not None:
        lines += ["", f"Allocator: {m.get('allocator', 'C library defaults')} (`pipeline/allocator.py`). With the C "
                  f"library's defaults instead (`--allocator-defaults`, load average {defaults['meta']['load_before']}"
                  f" before), training efficiency {_efficiency(defaults['train'], 'cache_u8', defaults['training_headline'])}"
                  f" at {defaults['train']['cache_u8']['images_per_s']:.0f} images/s."]
    worker = bench["train"]["cache_u8_w1"].get("workers_rss_mb")
    if worker is not None:
        lines += ["", f"A DataLoader worker process adds about {worker:.0f} MB of resident memory."]
    lg = bench.get("large")
    if lg:
        lines += ["", f"The large-image case ({lg['images']} JPEGs of 384×512 resized to {lg['size']}, like the mask "
                  f"photos): decoding costs {lg['decode_ms_per_image']:.1f} ms and resizing "
                  f"{lg['resize_ms_per_image']:.1f} ms per image; the loader runs at "
                  f"{lg['loader']['cold']['images_per_s']:.0f} images/s cold and "
                  f"{lg['loader']['warm_u8']['images_per_s']:.0f} warm. At the mask competition's 18,900 photos "
                  f"the cache saves about {lg['saved_s_per_epoch_at_18900_images']:.0f} s per epoch and takes "
                  f"{lg['cache_gb_at_18900_images']:.1f} GB of disk."]
    return "\n".join(lines) + "\n"


def _pace_note(bare_rates: list[float], spread: float = 1.15) -> list[str]:
    """A warning when the bare model's own pace moved between repeats (a shared machine): the images/s column
    then compares runs made at different speeds, while each efficiency pairs its steps with bare ones."""
    if not bare_rates or max(bare_rates) < spread * min(bare_rates):
        return []
    return ["", f"The bare model itself ran at {min(bare_rates):,.0f} to {max(bare_rates):,.0f} images/s from one "
            f"repeat to the next (other work on a shared machine): each images/s is the median of runs made at "
            f"different speeds, while each efficiency pairs every step with a bare one, so compare efficiencies."]


def mutation_block(scores: dict) -> str:
    lines = ["| module | mutants | killed | survived | no tests | score |", "| --- | --- | --- | --- | --- | --- |"]
    for module, s in scores.items():
        lines.append(f"| `{module}` | {s['mutants']} | {s['killed']} | {len(s['survived'])} | {len(s['no_tests'])} | "
                     f"{s['score']:.3f} |")
    total = sum(s["mutants"] for s in scores.values())
    killed = sum(s["killed"] for s in scores.values())
    lines.append(f"| all | {total} | {killed} | {sum(len(s['survived']) for s in scores.values())} | "
                 f"{sum(len(s['no_tests']) for s in scores.values())} | {killed / total:.3f} |")
    return "\n".join(lines) + "\n"


def _headline_block(frame: pd.DataFrame, label: str, metric: str, extra: list[str]) -> str:
    """A narrow table of `frame`: the label column, then `extra` and the headline `metric` (3 decimals)."""
    columns = [label, *extra, metric]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in frame[columns].itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def extra_blocks(figures: Path) -> dict[str, str]:
    """`<name>_score` / `<name>_cv` / `<name>_run` for each extra run recorded under `figures`."""
    blocks = {}
    for name in EXTRA_RUNS:
        folder = figures / name
        if not (folder / "score.csv").is_file():
            continue
        score, cv = pd.read_csv(folder / "score.csv"), pd.read_csv(folder / "cv.csv")
        metric = score.columns[1]          # score.csv's first metric is the competition's
        run = json.loads((folder / "run.json").read_text())
        blocks[f"{name}_score"] = _headline_block(score, "model", metric, [])
        blocks[f"{name}_cv"] = _headline_block(cv, "part", metric, ["rows"])
        blocks[f"{name}_run"] = (f"Measured by `{run['command']}` on {run['date']}, on {run['cpu']} "
                                 f"({minutes(run['seconds'])}).\n")
    return blocks


def _optional(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def blocks(figures: Path) -> dict[str, str]:
    """The demo's run, test scores, CV table and bench (always present), mutation scores and each extra run's
    tables (when their files are)."""
    run = json.loads((figures / "run.json").read_text())
    found = {"run": run_block(run), "score": score_block(pd.read_csv(figures / "score.csv")),
             "cv": cv_block(pd.read_csv(figures / "cv.csv")),
             "bench": bench_block(json.loads((figures / "bench.json").read_text()),
                                  _optional(figures / BENCH_DEFAULTS_FIGURE))}
    if (figures / "mutation.json").is_file():   # written by `make mutation`
        found["mutation"] = mutation_block(json.loads((figures / "mutation.json").read_text()))
    return {**found, **extra_blocks(figures)}
