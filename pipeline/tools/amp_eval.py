"""Does `train.amp: auto` + `train.channels_last: auto` change what the demo learns? The measured answer.

Runs the demo (`make folds train ensemble`) once per seed with both settings off (float32, contiguous)
and once with both on `auto`, one run at a time, and writes `docs/figures/amp_eval.json`: each run's
out-of-fold score (best weights, no TTA; and with TTA from its CV table) and seconds per epoch, then the
verdict. `auto` is "unchanged within noise" when the mean of its paired differences from `off` (same
seed, same folds) is within the spread of the scores over seeds (the larger standard deviation of the
two settings). Finished runs are not retrained: an interrupted comparison continues where it stopped.

    python -m pipeline.tools.amp_eval [--seeds 0 1 2] [--out docs/figures/amp_eval.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.fileio import write_json_atomic
from pipeline.tools.run_files import epoch_seconds, fold_dirs, oof_score

__all__ = ["SETTINGS", "amp_eval_command", "verdict", "run_amp_eval", "main"]

SETTINGS = {"off": {"train.amp": "off", "train.channels_last": "false"},
            "auto": {"train.amp": "auto", "train.channels_last": "auto"}}
REPO = Path(__file__).resolve().parents[2]


def amp_eval_command(setting: str, seed: int, output_dir: str = "outputs") -> list[str]:
    """The make command of one run: the demo for `seed` with `setting` (each run its own folds file: the same
    folds for the same seed, and no run's rebuilt folds file makes another's weights stale)."""
    sets = {"experiment": f"amp-eval-{setting}-s{seed}", "seed": seed, "output_dir": output_dir, **SETTINGS[setting]}
    return ["make", "--no-print-directory", "folds", "train", "ensemble",
            "SET=" + " ".join(f"{k}={v}" for k, v in sets.items())]


def verdict(runs: list[dict]) -> dict:
    """The comparison of `runs` ({setting, seed, oof, seconds_per_epoch}): each setting's mean and spread
    over seeds, the paired differences auto - off, and whether auto is unchanged within noise.

    >>> runs = [{"setting": s, "seed": k, "oof": v, "seconds_per_epoch": t} for s, k, v, t in
    ...         [("off", 0, 0.90, 4.0), ("off", 1, 0.92, 4.0), ("auto", 0, 0.91, 3.0), ("auto", 1, 0.91, 3.0)]]
    >>> v = verdict(runs)
    >>> v["mean_difference"], v["unchanged_within_noise"], v["speedup"]
    (0.0, True, 1.333)
    """
    by = {s: {r["seed"]: r for r in runs if r["setting"] == s} for s in SETTINGS}
    seeds = sorted(set(by["off"]) & set(by["auto"]))
    if not seeds:
        raise ValueError("amp_eval: no seed has finished runs of both settings")
    stats = {}
    for s in SETTINGS:
        scores = [by[s][k]["oof"] for k in seeds]
        stats[s] = {"mean": round(statistics.mean(scores), 4),
                    "std": round(statistics.stdev(scores), 4) if len(scores) > 1 else None,
                    "seconds_per_epoch": round(statistics.mean(by[s][k]["seconds_per_epoch"] for k in seeds), 2)}
    diffs = [round(by["auto"][k]["oof"] - by["off"][k]["oof"], 4) for k in seeds]
    noise = max((stats[s]["std"] or 0.0) for s in SETTINGS)
    mean_diff = round(statistics.mean(diffs), 4)
    return {"seeds": seeds, "settings": stats, "paired_differences": diffs, "mean_difference": mean_diff,
            "noise": noise, "unchanged_within_noise": len(seeds) > 1 and abs(mean_diff) <= noise,
            "speedup": round(stats["off"]["seconds_per_epoch"] / stats["auto"]["seconds_per_epoch"], 3)}


def _tta_oof(exp_dir: Path, metric: str) -> float | None:
    """The CV table's "out-of-fold, TTA" row, when the ensemble wrote one."""
    import pandas as pd

    cv = exp_dir / "cv.csv"
    if not cv.is_file():
        return None
    table = pd.read_csv(cv)
    row = table[table["part"].astype(str).str.startswith("out-of-fold, TTA")]
    return round(float(row[metric].iloc[0]), 4) if len(row) else None


def _run_one(setting: str, seed: int, output_dir: str, log) -> dict:
    from pipeline.config import load_config

    cmd = amp_eval_command(setting, seed, output_dir)
    exp_dir = Path(output_dir) / f"amp-eval-{setting}-s{seed}"
    log(f"[amp_eval] {setting}, seed {seed} (load {os.getloadavg()[0]:.2f}): {' '.join(cmd)}")
    tick = time.monotonic()
    subprocess.run(cmd, check=True, cwd=REPO)
    metric = load_config(exp_dir / "config.yaml").competition.metric
    resolved = json.loads((fold_dirs(exp_dir)[0] / "weights.json").read_text())   # what `auto` chose here
    return {"setting": setting, "seed": seed, "oof": round(oof_score(exp_dir, metric), 4),
            "oof_tta": _tta_oof(exp_dir, metric), "metric": metric,
            "seconds_per_epoch": round(statistics.median(epoch_seconds(exp_dir)), 2),
            "seconds": round(time.monotonic() - tick, 1), "load_after": round(os.getloadavg()[0], 2),
            "resolved": {k: resolved.get(k) for k in ("device", "amp", "channels_last")}}


def run_amp_eval(seeds=(0, 1, 2), out: str | Path = "docs/figures/amp_eval.json", output_dir: str = "outputs",
                 log=print) -> dict:
    """Run (or reuse) every (seed, setting) demo, one at a time; write `out` after each; return the result."""
    result = {"command": f"python -m pipeline.tools.amp_eval --seeds {' '.join(map(str, seeds))}",
              "runs_made_by": {f"{s}, seed {k}": " ".join(amp_eval_command(s, k, output_dir))
                               for k in seeds for s in SETTINGS},
              "settings": SETTINGS, "cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat(),
              "runs": []}
    for seed in seeds:
        for setting in SETTINGS:
            result["runs"].append(_run_one(setting, seed, output_dir, log))
            if all(any(r["seed"] == seed and r["setting"] == s for r in result["runs"]) for s in SETTINGS):
                result["verdict"] = verdict(result["runs"])
            write_json_atomic(out, result)
    log(f"[amp_eval] {result.get('verdict')} → {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.amp_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="docs/figures/amp_eval.json")
    p.add_argument("--output-dir", default="outputs", help="where the runs are written (default: %(default)s)")
    a = p.parse_args(argv)
    run_amp_eval(a.seeds, a.out, a.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
