"""`make docs-run`: run the demo, the bench and the extra runs from scratch, timed, and copy their files into docs/figures/."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

from pipeline.machine import cpu_name
from pipeline.tools.docs.commands import (BENCH_COMMAND, BENCH_DEFAULTS_COMMAND, BENCH_DEFAULTS_FIGURE,
                                         DEMO_COMMAND, DEMO_FIGURES,
                                         EXTRA_RUNS, FIGURES,
                                         LEAK_BENCH_COMMAND, LEAK_EVAL_COMMAND, LEAK_SOURCES_COMMAND, STACK_COMMANDS,
                                         STACK_FIGURES)

__all__ = ["cpu_name", "record_run", "record_extras", "record_leak_eval"]


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
    seconds["bench_defaults"] = _timed([sys.executable, *BENCH_DEFAULTS_COMMAND[1:],
                                        "--out", str(figures / BENCH_DEFAULTS_FIGURE)], log)
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
