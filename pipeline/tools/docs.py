"""The README's figures, generated: `make docs-run` measures, `make docs` writes the tables.

``make docs-run`` runs the demo from scratch (``make clean``, then ``make folds train ensemble score``) and ``make bench``,
then a second experiment on the same folds with its blend and stack (``STACK_COMMANDS``), times them, and copies what
the README quotes into ``docs/figures/``: the demo's ``DEMO_FIGURES`` (``score.csv``, ``cv.csv``, ``ensemble.json``,
``leaks.csv``), ``bench.json``, the stack's and blend's ``stack_cv.csv``/``stack_score.csv``/``blend_score.csv``,
each extra run's files in ``<name>/`` and ``run.json`` (the commands, their wall-clock seconds, the CPU, the commit).
``make docs`` rewrites every block of the README between ``<!-- docs:NAME -->`` and ``<!-- /docs -->``
from those files: the README's measured scores, counts and priors are in these blocks, and the prose around a
block interprets it without repeating its numbers; a test checks that the README holds exactly what
``make docs`` writes from the committed ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import sys
import subprocess
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from pipeline.fileio import read_text_csv

__all__ = ["FIGURES", "render_blocks", "rewrite_readme", "record_run", "main"]

FIGURES = Path("docs/figures")


@dataclass(frozen=True)
class ExtraRun:
    commands: str | tuple[str, ...]
    folder: str                          # its score.csv and cv.csv become docs/figures/<name>/
    fresh: tuple[str, ...] = ()          # experiment folders removed first (default: `folder`)
    copies: tuple[tuple[str, str], ...] = ()   # (figure file name, source path) copied too

    @property
    def command_list(self) -> tuple[str, ...]:
        return (self.commands,) if isinstance(self.commands, str) else self.commands

DEMO_COMMAND = ["make", "folds", "train", "ensemble", "score"]   # after `make clean`, which runs alone
DEMO_FIGURES = ("score.csv", "cv.csv", "ensemble.json", "leaks.csv")   # copied from outputs/demo/
BENCH_COMMAND = ["make", "bench"]
# Further runs the README quotes: name -> (the command(s), the folder whose score.csv and cv.csv are copied to
# docs/figures/<name>/, the experiment folders removed first so that the run is timed from scratch, and further
# files copied: {figure name: source}). `make docs-run` runs them in this order after the demo (which they may
# build on); `python -m pipeline.tools.docs --extra NAME` reruns one alone. Blocks `<NAME>_score`, `<NAME>_cv`.
ODD = "CONFIG=configs/demo-odd.yaml"
EXTRA_RUNS = {
    "odd": ExtraRun(f"make folds train ensemble score validate {ODD}", "outputs/demo-odd"),
    "nogroups": ExtraRun('make folds train ensemble score SET="data.group_column=null experiment=demo-nogroups"',
                         "outputs/demo-nogroups"),
    "autogroups": ExtraRun('make folds train ensemble score '
                           'SET="data.group_column=null folds.auto_groups=true experiment=demo-autogroups"',
                           "outputs/demo-autogroups",
                           copies=(("leaks.csv", "outputs/demo-autogroups/leaks.csv"),)),   # the pairs left
    "pseudo": ExtraRun('make train ensemble score SET="experiment=demo-pl folds.name=demo pseudo.source=demo '
                       'pseudo.threshold=0.8 pseudo.max_per_class=0.1"', "outputs/demo-pl",
                       copies=(("pseudo_labels.csv", "outputs/demo-pl/pseudo_labels.csv"),
                               ("test_labels.csv", "data/demo/test_labels.csv"))),   # to count the right ones
    "seeds": ExtraRun('make train ensemble score SET="experiment=demo-seeds folds.name=demo" SEEDS="0 1"',
                      "outputs/demo-seeds"),
    # The binary variant (odd/even, ROC-AUC, a probability submission): stack, pseudo-labels and seeds too.
    "odd_stack": ExtraRun((f'make train ensemble validate {ODD} SET="experiment=demo-odd2 folds.name=demo-odd '
                           'model.name=resnet14t"', 'make ensemble EXPS="demo-odd demo-odd2"',
                           'make stack EXPS="demo-odd demo-odd2"', 'make score EXPS="demo-odd demo-odd2"'),
                          "outputs/stack-demo-odd-demo-odd2",
                          ("outputs/demo-odd2", "outputs/blend-demo-odd-demo-odd2", "outputs/stack-demo-odd-demo-odd2"),
                          (("blend_score.csv", "outputs/blend-demo-odd-demo-odd2/score.csv"),)),
    "odd_pl": ExtraRun(f'make train ensemble score validate {ODD} SET="experiment=demo-odd-pl folds.name=demo-odd '
                       'pseudo.source=demo-odd pseudo.threshold=0.9 pseudo.max_per_class=0.3"', "outputs/demo-odd-pl"),
    "odd_seeds": ExtraRun(f'make train ensemble score validate {ODD} SET="experiment=demo-odd-seeds '
                          'folds.name=demo-odd" SEEDS="0 1"', "outputs/demo-odd-seeds"),
}
LEAK_EVAL_COMMAND = ["python", "-m", "pipeline.tools.leak_eval", "--config", "configs/demo.yaml"]
# The same on real images in three copy styles (needs Debian's dataset-fashion-mnist) → leak_sources.json.
LEAK_SOURCES_COMMAND = [*LEAK_EVAL_COMMAND, "--sources", "digits,fashion", "--styles", "shift,zoom,crop",
                        "--work", "data/leak_eval"]
LEAK_BENCH_COMMAND = ["python", "-m", "pipeline.tools.leak_bench", "--images", "100000"]
# A second experiment on the same folds (another backbone), then its blend and stack with the demo, scored.
SECOND_EXPERIMENT = "experiment=demo2 folds.name=demo model.name=resnet14t"
STACK_COMMANDS = [["make", "folds", "train", "ensemble", f"SET={SECOND_EXPERIMENT}"],
                  ["make", "ensemble", "EXPS=demo demo2"], ["make", "stack", "EXPS=demo demo2"],
                  ["make", "score", "EXPS=demo demo2"]]
STACK_FIGURES = {"stack_cv.csv": "outputs/stack-demo-demo2/cv.csv",
                 "stack_score.csv": "outputs/stack-demo-demo2/score.csv",
                 "blend_score.csv": "outputs/blend-demo-demo2/score.csv"}
_BLOCK = re.compile(r"(<!-- docs:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /docs -->)", re.S)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(command: list[str], log) -> float:
    log(f"[docs] running {' '.join(command)}")
    tick = time.perf_counter()
    subprocess.run(command, check=True)
    return round(time.perf_counter() - tick, 1)


def record_run(figures: Path = FIGURES, exp_dir: Path = Path("outputs/demo"), bench: Path = Path("outputs/bench.json"),
               log=print) -> Path:
    """Run the demo, the benchmark and the stack from scratch, timed; copy their files into `figures`."""
    subprocess.run(["make", "clean"], check=True)
    seconds = {"demo": _timed(DEMO_COMMAND, log)}
    _wait_for_quiet(log)   # the training's load average decays slowly; the bench judges the load it sees
    seconds["bench"] = _timed(BENCH_COMMAND, log)
    seconds["stack"] = round(sum(_timed(c, log) for c in STACK_COMMANDS), 1)
    record_extras(list(EXTRA_RUNS), figures, log)
    record_leak_eval(figures, log)
    figures.mkdir(parents=True, exist_ok=True)
    for name, source in STACK_FIGURES.items():
        shutil.copyfile(source, figures / name)
    for name in DEMO_FIGURES:
        shutil.copyfile(exp_dir / name, figures / name)
    shutil.copyfile(bench, figures / "bench.json")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    run = {"commands": {"demo": " ".join(DEMO_COMMAND), "bench": " ".join(BENCH_COMMAND),
                        "stack": "; ".join(" ".join(c) for c in STACK_COMMANDS)}, "seconds": seconds,
           "cpu": cpu_name(), "cores": os.cpu_count(), "date": date.today().isoformat(), "commit": commit,
           "epoch_seconds": _epoch_seconds(exp_dir)}
    (figures / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    log(f"[docs] wrote {figures}/: {', '.join(DEMO_FIGURES)}, bench.json, run.json")
    return figures


def _wait_for_quiet(log, limit_s: float = 180.0) -> None:
    """Wait (up to `limit_s`) until the 1-minute load average is below half the cores."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1) and time.monotonic() < deadline:
        time.sleep(5)
    log(f"[docs] load average {os.getloadavg()[0]:.2f} before the bench")


def _epoch_seconds(exp_dir: Path) -> list[float]:
    """Every epoch's seconds over the folds (from their metrics.csv)."""
    return [round(float(s), 1) for f in sorted(exp_dir.glob("fold_*/metrics.csv"))
            for s in pd.read_csv(f)["seconds"]]


# ---- rendering -----------------------------------------------------------------------------

def _minutes(seconds: float) -> str:
    """
    >>> _minutes(511.4), _minutes(42.0)
    ('8 min 31 s', '42 s')
    """
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _run_block(run: dict) -> str:
    epochs = run["epoch_seconds"]
    low, high = (f"{min(epochs):.0f}", f"{max(epochs):.0f}") if epochs else ("", "")
    epoch_text = "" if not epochs else f", {low} s per epoch" if low == high else f", {low}–{high} s per epoch"
    return (f"Measured by `make docs-run` on {run['date']} (commit {run['commit']}), on {run['cpu']} with "
            f"{run['cores']} cores and no GPU: `{run['commands']['demo']}` after `make clean` took "
            f"**{_minutes(run['seconds']['demo'])}**{epoch_text}; `{run['commands']['bench']}` took "
            f"{_minutes(run['seconds']['bench'])}"
            + (f"; the second model, its blend and stack (`make stack`, below) {_minutes(run['seconds']['stack'])}"
               if "stack" in run["seconds"] else "")
            + ". Another CPU, thread count or library version gives other "
            "timings and may change scores in the last digits.\n")


def _score_block(score: pd.DataFrame) -> str:
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


def _cv_block(cv: pd.DataFrame) -> str:
    lines = ["| part | rows | macro-F1 | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.part} | {r.rows} | {r.f1_macro:.3f} | {r.accuracy:.3f} |" for r in cv.itertuples()]
    return "\n".join(lines) + "\n"


def _stack_rows(cv: pd.DataFrame, stack_score: pd.DataFrame, blend_score: pd.DataFrame,
                metric: str = "f1_macro") -> list[tuple[str, float, float]]:
    """(row, out-of-fold `metric` with fitted choices nested, held-back test `metric`) of each member, the plain
    vote, the blend and the stack (their submissions)."""
    test = stack_score.set_index("model")[metric]
    blend_sub = blend_score[blend_score["model"].str.endswith("submission.csv (submission)")][metric].iloc[0]
    stack_sub = test[test.index.str.endswith("submission.csv (submission)")].iloc[0]
    oof = cv.set_index("part")[metric]
    members = [p.rsplit(" (", 1)[0] for p in cv["part"] if p.endswith(".csv)")]
    rows = [(f"{m} alone", oof[oof.index.str.startswith(f"{m} (")].iloc[0], test[f"{m} (soft vote of its folds)"])
            for m in members]
    return rows + [("plain vote (soft, uniform weights)", oof["plain vote (soft, uniform weights)"],
                    test["plain vote (soft, uniform weights)"]),
                   ("blend, fitted weights (`make ensemble EXPS=`)", oof["blend soft, fitted weights, nested"],
                    blend_sub),
                   ("**stack (`make stack EXPS=`)**", oof[oof.index.str.startswith("stack:")].iloc[0], stack_sub)]


def _gains_text(rows: list[tuple[str, float, float]]) -> str:
    """The blend's and the stack's gain over the plain vote (the last three of `_stack_rows`)."""
    (_, vote_oof, vote_test), (_, blend_oof, blend_test), (_, stack_oof, stack_test) = rows[-3:]
    return (f"Against the plain vote, out of fold: the blend {blend_oof - vote_oof:+.3f}, the stack "
            f"{stack_oof - vote_oof:+.3f}; on the test set: the blend {blend_test - vote_test:+.3f}, the stack "
            f"{stack_test - vote_test:+.3f}.")


def _table(header: list[str], rows: list[tuple[str, float, float]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            + [f"| {name} | {o:.3f} | {t:.3f} |" for name, o, t in rows])


def _stack_block(cv: pd.DataFrame, stack_score: pd.DataFrame, blend_score: pd.DataFrame) -> str:
    """Out-of-fold (nested) and held-back test macro-F1 of each member, the plain vote, the blend and the stack."""
    rows = _stack_rows(cv, stack_score, blend_score)
    lines = _table(["`demo` + `demo2`", "out-of-fold macro-F1 (fitted choices nested)", "test macro-F1"], rows)
    return "\n".join(lines + ["", _gains_text(rows)]) + "\n"


def _read_run(folder: Path) -> tuple[pd.Series, pd.Series, str]:
    """(cv.csv by part, score.csv by model, in the competition metric; that metric's name)."""
    score = pd.read_csv(folder / "score.csv")
    metric = score.columns[1]          # score.csv's first metric is the competition's
    return pd.read_csv(folder / "cv.csv").set_index("part")[metric], score.set_index("model")[metric], metric


def _oof_tta(cv: pd.Series) -> float:
    return cv[cv.index.str.startswith("out-of-fold, TTA (")].iloc[0]


def _soft_vote(score: pd.Series) -> float:
    """The plain soft vote of the folds on the test set (whether or not a correction made the submission)."""
    return score[score.index.str.fullmatch(r"soft vote( \(submission\))?")].iloc[0]


def _seed_rows(base: Path, seeds: Path, base_label: str) -> list[tuple[str, float, float]]:
    """(row, OOF TTA, test soft vote) of the one-seed run, each seed alone and the seeds averaged in each fold."""
    base_cv, base_score, _ = _read_run(base)
    cv, score, _ = _read_run(seeds)
    alone = [re.fullmatch(r"seed (\S+) alone: out-of-fold, TTA", part) for part in cv.index]
    names = [m[1] for m in alone if m]
    return ([(base_label, _oof_tta(base_cv), _soft_vote(base_score))]
            + [(f"seed {s} alone", cv[f"seed {s} alone: out-of-fold, TTA"], score[f"seed {s} alone, soft vote"])
               for s in names]
            + [(f"**seeds {' + '.join(names)} averaged within each fold**", _oof_tta(cv), _soft_vote(score))])


def _seeds_block(base: Path, seeds: Path) -> str:
    rows = _seed_rows(base, seeds, "`demo` (one seed, 42)")
    lines = _table(["`demo-seeds` (folds of `demo`)", "out-of-fold macro-F1 (TTA)", "test macro-F1 (soft vote)"], rows)
    best = max(rows[1:-1], key=lambda r: r[1])
    lines += ["", f"Averaged seeds against the best single seed out of fold ({best[0]}): {rows[-1][1] - best[1]:+.3f} "
              f"out of fold, {rows[-1][2] - best[2]:+.3f} on the test set; single seeds span "
              f"{min(r[2] for r in rows[:-1]):.3f} – {max(r[2] for r in rows[:-1]):.3f} on the test set."]
    return "\n".join(lines) + "\n"


def _odd_rounds_block(figures: Path) -> str:
    """The binary variant: every fitted choice and second round beside its plain vote, in its metric."""
    cv, score, metric = _read_run(figures / "odd")
    plain = ("plain: soft vote of the folds (`demo-odd`)", _oof_tta(cv), _soft_vote(score))
    bias = ("class bias (a threshold), fitted on the other folds",
            cv[cv.index.str.startswith("out-of-fold, TTA + class bias")].iloc[0],
            score[score.index.str.contains("class bias")].iloc[0])
    stack = figures / "odd_stack"
    stacked = _stack_rows(*(pd.read_csv(stack / n) for n in ("cv.csv", "score.csv", "blend_score.csv")), metric)
    pl_cv, pl_score, _ = _read_run(figures / "odd_pl")
    pseudo = ("pseudo-labels (`demo-odd-pl`)", _oof_tta(pl_cv), _soft_vote(pl_score))
    seeds = _seed_rows(figures / "odd", figures / "odd_seeds", "one seed (`demo-odd`, 42)")[1:]
    rows = [plain, bias, *stacked, pseudo, *seeds]
    lines = _table([f"odd/even demo, {metric}", f"out-of-fold {metric} (fitted choices nested)",
                    f"test {metric}"], rows)
    return "\n".join(lines + ["", _gains_text(stacked)]) + "\n"


_BENCH_ROWS = [("train", "bare", "train: bare forward + backward + step, in memory"),
               ("train", "disk", "train: decode + augment every epoch (`data.cache: false`)"),
               ("train", "cache_u8", "**train: cache, uint8 batches + batch normalise (default)**"),
               ("train", "cache_u8_w1", "train: the same with 1 DataLoader worker"),
               ("predict", "bare", "TTA: bare forward passes (images × views)"),
               ("predict", "disk", "TTA: decode + transform (`data.cache: false`)"),
               ("predict", "cache_u8", "**TTA: cache, uint8 + batch normalise (default)**")]


def _efficiency(part: dict, key: str, headline: dict) -> str:
    if key == "bare":
        return "(1)"
    if key != "cache_u8":
        return f"{part[key]['efficiency']:.3f}"
    return f"**{headline['headline']}**" if headline["reliable"] else f"unreliable: {headline['why']}"


def _bench_block(bench: dict) -> str:
    m = bench["meta"]
    lines = [f"{m['model']}, {m['image_size']}×{m['image_size']}, batch {m['batch_size']}, median of "
             f"{m['repeats']} paired runs, {m['torch_threads']} torch threads; load average "
             f"{m['load_before']} before, {m['load_after']} after:", "",
             "| phase | images/s | efficiency | peak RSS (MB) |", "| --- | --- | --- | --- |"]
    headlines = {"train": bench["training_headline"], "predict": bench["prediction_headline"]}
    for part, key, label in _BENCH_ROWS:
        d = bench[part][key]
        lines.append(f"| {label} | {d['images_per_s']:.0f} | {_efficiency(bench[part], key, headlines[part])} | "
                     f"{d['peak_rss_mb']:.0f} |")
    lo = bench["loader"]
    lines.append(f"| loader alone, training transform: cold (decode) / warm (cache) | "
                 f"{lo['cold_train']['images_per_s']:.0f} / {lo['warm_train_u8']['images_per_s']:.0f} | | |")
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


def _mutation_block(scores: dict) -> str:
    lines = ["| module | mutants | killed | survived | no tests | score |", "| --- | --- | --- | --- | --- | --- |"]
    for module, s in scores.items():
        lines.append(f"| `{module}` | {s['mutants']} | {s['killed']} | {len(s['survived'])} | {len(s['no_tests'])} | "
                     f"{s['score']:.3f} |")
    total = sum(s["mutants"] for s in scores.values())
    killed = sum(s["killed"] for s in scores.values())
    lines.append(f"| all | {total} | {killed} | {sum(len(s['survived']) for s in scores.values())} | "
                 f"{sum(len(s['no_tests']) for s in scores.values())} | {killed / total:.3f} |")
    return "\n".join(lines) + "\n"


def record_extras(names: list[str], figures: Path = FIGURES, log=print) -> None:
    """Run each named extra run (timed) and copy its score.csv and cv.csv into ``figures/<name>/``."""
    unknown = sorted(set(names) - set(EXTRA_RUNS))
    if unknown:
        raise ValueError(f"unknown extra run(s) {unknown}; known: {sorted(EXTRA_RUNS)}")
    for name in names:
        run = EXTRA_RUNS[name]
        for folder in run.fresh or (run.folder,):
            shutil.rmtree(folder, ignore_errors=True)   # timed from scratch, like the demo after `make clean`
        seconds = round(sum(_timed(shlex.split(command), log) for command in run.command_list), 1)
        out = figures / name
        out.mkdir(parents=True, exist_ok=True)
        for file in ("score.csv", "cv.csv"):
            shutil.copyfile(Path(run.folder) / file, out / file)
        for file, source in run.copies:
            shutil.copyfile(source, out / file)
        (out / "run.json").write_text(json.dumps({"command": "; ".join(run.command_list), "seconds": seconds,
                                                  "cpu": cpu_name(), "date": date.today().isoformat()},
                                                 indent=2) + "\n")
        log(f"[docs] wrote {out}/: score.csv, cv.csv, run.json")


def record_leak_eval(figures: Path = FIGURES, log=print) -> None:
    """The leak detector against true groups: the demo → ``leak_eval.json``, real sources → ``leak_sources.json``,
    and the scan of one 100,000-image class → ``leak_bench.json``."""
    for command, name in [(LEAK_EVAL_COMMAND, "leak_eval.json"), (LEAK_SOURCES_COMMAND, "leak_sources.json")]:
        log(f"[docs] running {' '.join(command)}")
        tick = time.perf_counter()
        out = json.loads(subprocess.run([sys.executable, *command[1:]], check=True, capture_output=True,
                                        text=True).stdout)
        out["seconds"] = round(time.perf_counter() - tick, 1)
        (figures / name).write_text(json.dumps(out, indent=2) + "\n")
    log(f"[docs] running {' '.join(LEAK_BENCH_COMMAND)}")
    subprocess.run([sys.executable, *LEAK_BENCH_COMMAND[1:], "--out", str(figures / "leak_bench.json")], check=True)


_AUTO = "auto_groups (before the split)"


def _leak_eval_row(name: str, found: dict) -> str:
    given, withheld, auto = found["groups given"], found["groups withheld"], found[_AUTO]
    share = given["flagged"] / withheld["true_pairs"] if withheld["true_pairs"] else float("nan")
    probe = [found[case]["probe_oof_f1"] for case in ("groups given", "groups withheld", _AUTO)]
    return (f"| {name} | {withheld['true_pairs']} | {withheld['precision']:.3f} | {withheld['recall']:.3f} | "
            f"{given['flagged']} ({share:.1%}) | {auto['precision']:.3f} / {auto['recall']:.3f} | "
            f"{probe[0]:.3f} / {probe[1]:.3f} / {probe[2]:.3f} |")


def _leak_eval_block(demo: dict, sources: dict | None = None) -> str:
    """One row per data set: the scan's precision/recall with the groups withheld, its flags with them given
    (and as a share of the true cross-fold pairs), auto_groups' pairs, and the probe's OOF macro-F1."""
    lines = ["| data set | true cross-fold copy pairs | precision, groups withheld | recall | flags with groups "
             "given (share of true pairs) | auto_groups precision / recall | probe OOF macro-F1: grouped / "
             "no groups / auto_groups |", "| --- | --- | --- | --- | --- | --- | --- |",
             _leak_eval_row("demo (digits, 4 copies, shift + tint)", demo)]
    for name, found in (sources or {}).items():
        if name != "seconds":
            lines.append(_leak_eval_row(f"{name} (3 copies)", found))
    command = f"`{' '.join(LEAK_EVAL_COMMAND)}` ({demo['seconds']:.0f} s)" if "seconds" in demo else \
        f"`{' '.join(LEAK_EVAL_COMMAND)}`"
    if sources:
        command += f" and `{' '.join(LEAK_SOURCES_COMMAND)}` ({sources['seconds'] / 60:.0f} min)"
    auto = demo[_AUTO]
    lines += ["", f"{command}. On the demo auto_groups' pairs form {auto['components']} components for the "
              f"{auto['true_groups']} true groups; {auto['components_mixing_true_groups']} join two or more true "
              f"groups and {auto['true_groups_split_across_folds']} true groups still span two folds."]
    return "\n".join(lines) + "\n"


def _leak_bench_block(found: dict) -> str:
    return (f"`{' '.join(LEAK_BENCH_COMMAND)}`: one class of {found['images']:,} images ({found['source']}, "
            f"{found['size']} px, {found['copies_planted']:,} of them planted copies) scans in {found['seconds']:.0f} s "
            f"({found['aligned_pairs']:,} candidate pairs aligned, {found['pairs_flagged']:,} flagged) and needs "
            f"{found['scan_memory_mb']:,} MB beyond the {found['rss_before_scan_mb']:,} MB the process held before it "
            "(Python, torch, the images).\n")


def _oof_and_test(folder: Path, metric: str = "f1_macro") -> tuple[float, float, float, float]:
    """(OOF TTA score, the submission's test score, the fold models' lowest and highest test score)."""
    cv = pd.read_csv(folder / "cv.csv").set_index("part")
    score = pd.read_csv(folder / "score.csv").set_index("model")
    oof = cv.loc[[p for p in cv.index if p.startswith("out-of-fold, TTA (")][0], metric]
    folds = score.loc[[m for m in score.index if re.fullmatch(r"fold \d+", m)], metric]
    return oof, score.loc["submission.csv", metric], folds.min(), folds.max()


def _leak_rows(folder: Path) -> tuple[int, float, int, float]:
    """(rows with a cross-fold near-duplicate, their accuracy, the other rows, theirs) from a run's cv.csv."""
    cv = pd.read_csv(folder / "cv.csv").set_index("part")
    rest = cv.loc["OOF rows without one"]
    if "OOF rows with a cross-fold near-duplicate" not in cv.index:      # the check flagged nothing
        return 0, float("nan"), int(rest["rows"]), rest["accuracy"]
    flagged = cv.loc["OOF rows with a cross-fold near-duplicate"]
    return int(flagged["rows"]), flagged["accuracy"], int(rest["rows"]), rest["accuracy"]


def _left_after_auto(pairs: pd.Series, rows: int, accuracy: float, accuracy_rest: float) -> str:
    if not len(pairs):
        return "no pair (every pair the split's scan found is inside one fold)"
    return (f"{len(pairs)} pairs of similarity {pairs.min():.4f}–{pairs.max():.4f} ({rows} rows, accuracy "
            f"{accuracy:.3f} against {accuracy_rest:.3f} for the rest)")


def _leak_optimism_block(figures: Path) -> str:
    """What the three leak runs' OOF and test scores and their CV leak rows say, from their files."""
    oof, test, low, high = _oof_and_test(figures / "nogroups")
    auto_oof, auto_test, _, _ = _oof_and_test(figures / "autogroups")
    grouped_oof = _oof_and_test(figures)[0]
    n_with, acc_with, n_rest, acc_rest = _leak_rows(figures / "nogroups")
    auto_with, auto_acc, _, auto_acc_rest = _leak_rows(figures / "autogroups")
    given_with, given_acc, _, given_acc_rest = _leak_rows(figures)
    pairs = pd.read_csv(figures / "autogroups" / "leaks.csv")["similarity"]
    return (f"Without groups the OOF macro-F1 ({oof:.3f}) is {oof - high:.2f}–{oof - low:.2f} above what one fold "
            f"model scores on the test set and {oof - test:.3f} above the submission; with auto_groups it is "
            f"{auto_oof:.3f} against the grouped run's {grouped_oof:.3f}, and {abs(auto_oof - auto_test):.3f} "
            f"{'below' if auto_oof < auto_test else 'above'} its own test score. The CV table's leak rows: in the run "
            f"without groups {n_with} of {n_with + n_rest} OOF rows have a copy in another fold (accuracy "
            f"{acc_with:.3f}; the {n_rest} others: {acc_rest:.3f}); after auto_groups the check still flags "
            f"{_left_after_auto(pairs, auto_with, auto_acc, auto_acc_rest)}; with the groups given, "
            f"{_given_flags(len(pd.read_csv(figures / 'leaks.csv')), given_with, given_acc, given_acc_rest)}.\n")


def _given_flags(pairs: int, rows: int, accuracy: float, accuracy_rest: float) -> str:
    if not pairs:
        return "it flags no pair"
    return (f"the {pairs} look-alike pairs ({rows} rows) score accuracy {accuracy:.3f} against {accuracy_rest:.3f} "
            "for the other rows")


def _runs_block(runs: list[tuple[str, Path]]) -> str:
    """OOF against held-back test macro-F1 of several runs, one row each."""
    lines = ["| run | OOF macro-F1 (TTA) | test macro-F1, submission | test, one fold model |",
             "| --- | --- | --- | --- |"]
    for label, folder in runs:
        oof, test, low, high = _oof_and_test(folder)
        lines.append(f"| {label} | {oof:.3f} | {test:.3f} | {low:.3f} – {high:.3f} |")
    return "\n".join(lines) + "\n"


def _pseudo_list_block(folder: Path) -> str:
    """How many test images the list held, per class, and how many of their labels were right (checked against
    the held-back labels afterwards; the pipeline never reads them for the list)."""
    listed = read_text_csv(folder / "pseudo_labels.csv")
    truth = read_text_csv(folder / "test_labels.csv").set_index("id")["label"]
    per_class = listed["label"].value_counts()
    right = int((listed["label"].to_numpy() == truth.loc[listed["id"]].to_numpy()).sum())
    return (f"The list held {len(listed)} of the {len(truth)} test images ({per_class.min()} to {per_class.max()} "
            f"per class), {right} of them correctly labelled (checked afterwards against the held-back labels, "
            "which the pipeline never read for it).\n")


def _span(values) -> str:
    """'low–high' of `values` (3 decimals)."""
    return f"{min(values):.3f}–{max(values):.3f}"


def _prior_shift_block(figures: Path) -> str:
    """The demo's priors, shift test and corrected scores, from its ensemble.json, score.csv and cv.csv."""
    record = json.loads((figures / "ensemble.json").read_text())["prior_shift"]
    cv, score, metric = _read_run(figures)
    test = score.rename(index=lambda name: name.removesuffix(" (submission)"))

    def simulated(mix: str, what: str) -> float:
        return cv[next(part for part in cv.index if part.startswith(f"simulated {mix} mix: {what}"))]

    def mix_text(mix: str) -> str:
        return (f"{simulated(mix, 'no correction'):.3f} without and {simulated(mix, 'EM correction'):.3f} with the "
                f"EM correction (`auto`: {simulated(mix, 'auto'):.3f})")

    decision = (f"so `auto` applies the {record['method'].upper()} correction" if record["applied"]
                else "so `auto` leaves the submission unchanged")
    estimates = record["estimates"]
    return (f"The G-test of out-of-fold against test predicted classes gives G={record['g_statistic']:.0f}, "
            f"p={record['p_value']:.1g}, {decision}. The models' effective prior spans {_span(record['model_prior'])} "
            f"against raw label shares of {_span(record['training_labels'])}; the EM estimate of the test mix spans "
            f"{_span(estimates['em'])}, BBSE's {_span(estimates['bbse'])}. On the test set ({metric}): the soft vote "
            f"{test['soft vote']:.3f}, EM-corrected {test['soft vote + prior-shift correction (em)']:.3f}, "
            f"BBSE-corrected {test['soft vote + prior-shift correction (bbse)']:.3f}, the rank vote "
            f"{test['rank vote']:.3f}. Out of fold, resampled to a balanced mix: {mix_text('balanced')}; to the "
            f"reversed mix: {mix_text('reversed')}; to their own training mix: {mix_text('training')}.\n")


def _headline_block(frame: pd.DataFrame, label: str, metric: str, extra: list[str]) -> str:
    """A narrow table of `frame`: the label column, then `extra` and the headline `metric` (3 decimals)."""
    columns = [label, *extra, metric]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in frame[columns].itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _extra_blocks(figures: Path) -> dict[str, str]:
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
                                 f"({_minutes(run['seconds'])}).\n")
    return blocks


def render_blocks(figures: Path = FIGURES) -> dict[str, str]:
    """Every generated README block, by name, from the files in `figures`."""
    run = json.loads((figures / "run.json").read_text())
    bench = json.loads((figures / "bench.json").read_text())
    blocks = {"run": _run_block(run), "score": _score_block(pd.read_csv(figures / "score.csv")),
              "cv": _cv_block(pd.read_csv(figures / "cv.csv")), "bench": _bench_block(bench)}
    if all((figures / name).is_file() for name in STACK_FIGURES):
        blocks["stack"] = _stack_block(*(pd.read_csv(figures / name) for name in STACK_FIGURES))
    if (figures / "ensemble.json").is_file():
        blocks["prior_shift"] = _prior_shift_block(figures)
    if (figures / "mutation.json").is_file():   # written by `make mutation`
        blocks["mutation"] = _mutation_block(json.loads((figures / "mutation.json").read_text()))
    if (figures / "leak_eval.json").is_file():
        sources = figures / "leak_sources.json"
        blocks["leak_eval"] = _leak_eval_block(json.loads((figures / "leak_eval.json").read_text()),
                                               json.loads(sources.read_text()) if sources.is_file() else None)
    if (figures / "leak_bench.json").is_file():
        blocks["leak_bench"] = _leak_bench_block(json.loads((figures / "leak_bench.json").read_text()))
    if all((figures / name / "cv.csv").is_file() for name in ("nogroups", "autogroups")):
        blocks["leak_runs"] = _runs_block([("groups withheld (`demo-nogroups`)", figures / "nogroups"),
                                           ("`folds.auto_groups` (`demo-autogroups`)", figures / "autogroups"),
                                           ("groups given (`demo`)", figures)])
    if all((figures / name).is_file() for name in ("leak_eval.json", "leaks.csv", "autogroups/leaks.csv",
                                                   "nogroups/cv.csv")):
        blocks["leak_optimism"] = _leak_optimism_block(figures)
    if (figures / "seeds" / "cv.csv").is_file():
        blocks["seeds_runs"] = _seeds_block(figures, figures / "seeds")
    if all((figures / name / "cv.csv").is_file() for name in ("odd", "odd_stack", "odd_pl", "odd_seeds")):
        blocks["odd_rounds"] = _odd_rounds_block(figures)
    if (figures / "pseudo" / "cv.csv").is_file():
        blocks["pseudo_runs"] = _runs_block([("round 1 (`demo`)", figures), ("pseudo-labels (`demo-pl`)",
                                                                             figures / "pseudo")])
        blocks["pseudo_list"] = _pseudo_list_block(figures / "pseudo")
    return {**blocks, **_extra_blocks(figures)}


def rewrite_readme(text: str, blocks: dict[str, str]) -> str:
    """`text` with each ``<!-- docs:NAME -->`` block's body replaced; every block must be known.

    >>> rewrite_readme("a\\n<!-- docs:x -->\\nold\\n<!-- /docs -->\\nb", {"x": "new\\n"})
    'a\\n<!-- docs:x -->\\nnew\\n<!-- /docs -->\\nb'
    """
    unknown = sorted({m["name"] for m in _BLOCK.finditer(text)} - set(blocks))
    if unknown:
        raise ValueError(f"README blocks with no generator, or whose files are missing from the figures folder "
                         f"(commit them, or run `make docs-run`): {unknown}; rendered: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]] + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="first run the demo and the bench from scratch (slow)")
    parser.add_argument("--extra", nargs="+", metavar="NAME", help=f"rerun only these extra runs: {list(EXTRA_RUNS)}")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args(argv)
    if args.run:
        record_run(args.figures)
    elif args.extra:
        record_extras(args.extra, args.figures)
    text = args.readme.read_text()
    new = rewrite_readme(text, render_blocks(args.figures))
    if new != text:
        args.readme.write_text(new)
    print(f"[docs] {args.readme}: {'rewritten' if new != text else 'already up to date'} from {args.figures}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
