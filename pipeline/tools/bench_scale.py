"""What each stage costs as the data grows: seconds, images/s and peak memory at N images, and the slope.

    python -m pipeline.tools.bench_scale --sizes 10000,30000,100000 --jpeg-sizes 30000 \\
        [--out outputs/bench_scale.json] [--docs]          (make bench-scale)

For every size, a generated competition (:mod:`pipeline.tools.scale_data`: N training images and N/10
test images; 28x28 PNGs, and 384x512 JPEGs at the --jpeg-sizes) is written once under --data, then the
stages run as a competitor runs them, each in its own process, in this order:

    resolve        the first `python -m pipeline resolve --make-vars` (writes every manifest)
    check          `make check`'s stage, no earlier verdicts: every image decoded
    check_again    the same, every verdict reused
    folds          the folds stage after the check
    noop_make      `make folds` with nothing to do (median of 3): what every later `make` call costs
    one_changed    `make folds` after one training image was rewritten
    eda            the EDA page (leak scan included: its own figure is `make bench-leaks`)
    cache          the decode cache of the training images (32x32)
    train_epoch    one epoch of fold 0 on the cache: a fixed small model (timm resnet10t, 32x32, batch 256)
    predict_tta    fold 0's out-of-fold and test predictions, two TTA views

Seconds are wall-clock; images/s is the images the stage reads over its seconds; peak memory is the
largest resident memory of the stage's processes summed (sampled every 50 ms, workers included) and
the largest single process (`getrusage(RUSAGE_CHILDREN)`). The slope is the least-squares slope of
log(seconds) on log(N) over the PNG sizes: 1 is linear. The machine's load average is recorded before
each stage: timings on a busy machine are longer, not wrong by a factor the slope could hide only when
the load changes between sizes. Results: --out (JSON) and a log-log figure beside it; --docs copies
both to docs/figures/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from pipeline.machine import cpu_name
from pipeline.tools.scale_data import write_image_set

__all__ = ["STAGES", "run_bench_scale", "measure", "slope", "main"]

REPO = Path(__file__).resolve().parents[2]
STAGES = ("resolve", "check", "check_again", "folds", "noop_make", "one_changed", "eda", "cache",
          "train_epoch", "predict_tta")
# Done when, at the largest PNG size (issue 29).
TARGETS = {"noop_make": ("seconds", "<", 2.0), "check": ("images_per_s", ">=", 5000.0),
           "folds": ("seconds", "<", 10.0), "eda": ("seconds", "<", 180.0), "eda_memory": ("peak_mb", "<", 4096.0)}
MAX_SLOPE = 1.1
_MODEL = {"name": "resnet10t", "pretrained": False}
_IMAGE_SIZE = 32
_NOOP_REPEATS = 3


# ---- measuring one command --------------------------------------------------------------------

class _TreeMemory:
    """The summed resident memory of a process and its descendants, sampled every 50 ms: its peak (MB)."""

    def __init__(self, pid: int):
        import psutil
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        import psutil
        while not self._stop.wait(0.05):
            try:
                procs = [self._root] + self._root.children(recursive=True)
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total / 2 ** 20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


# A launcher around the command: its RUSAGE_CHILDREN is the command's own process tree, not the bench's.
_LAUNCHER = ("import resource, subprocess, sys, json\n"
             "rc = subprocess.call(sys.argv[1:])\n"
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
             "print(json.dumps({'rc': rc, 'max_process_kb': peak}), file=sys.stderr)\n"
             "sys.exit(rc)\n")


def measure(command: list[str], images: int, env: dict | None = None, log=print) -> dict:
    """Run `command`; its seconds, images/s (`images` over the seconds), peak memory and load average.

    Raises RuntimeError with the command's last output lines when it fails.
    """
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    memory = _TreeMemory(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak = memory.stop()
    lines = err.strip().splitlines()
    try:
        launcher = json.loads(lines[-1])
    except (IndexError, ValueError):
        launcher = {"rc": proc.returncode, "max_process_kb": 0}
    if proc.returncode != 0:
        tail = "\n".join((out + err).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
    return {"seconds": round(seconds, 3), "images": images, "images_per_s": round(images / max(seconds, 1e-9), 1),
            "peak_mb": round(peak, 1), "max_process_mb": round(launcher["max_process_kb"] / 1024, 1),
            "load_before": round(load, 2), "log": (out + "\n".join(lines[:-1]))[-2000:]}


def slope(sizes: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(size); None with fewer than two sizes.

    >>> round(slope([10, 100, 1000], [1.0, 10.0, 100.0]), 3), round(slope([10, 100], [2.0, 2.0]), 3)
    (1.0, 0.0)
    """
    if len(sizes) < 2:
        return None
    x = [math.log(s) for s in sizes]
    y = [math.log(max(t, 1e-6)) for t in seconds]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


# ---- one dataset ------------------------------------------------------------------------------

def _config(name: str, root: Path, work: Path, kind: str) -> Path:
    """The experiment config of one generated set; every output under `work`."""
    ext = "png" if kind == "png" else "jpg"
    cfg = {"experiment": name, "seed": 0, "output_dir": str(work / "outputs"),
           "data": {"train_csv": str(root / "train.csv"), "image_root": str(root), "image_column": "image",
                    "label_column": "label", "group_column": "group",
                    "sample_submission": str(root / "sample_submission.csv"), "id_column": "id",
                    "target_column": "label", "test_image_template": "test/{id}." + ext},
           "folds": {"n_splits": 5, "dir": str(work / "folds")},
           "model": _MODEL, "augment": {"image_size": _IMAGE_SIZE},
           "train": {"epochs": 1, "batch_size": 256, "warmup_epochs": 0, "device": "cpu"},
           "tta": {"views": ["identity", "hflip"], "merge": "mean"},
           "report": {"progress": "off"}}
    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _touch_one_image(root: Path) -> None:
    """Rewrite one training image with its own bytes: a new mtime and ctime, the same pixels."""
    first = sorted((root / "train").iterdir())[0]
    first.write_bytes(first.read_bytes())


def _cache_command(config: Path) -> list[str]:
    code = ("import sys; from pipeline.config import load_config; from pipeline.data.cache import decoded_for; "
            "from pipeline.data.tables import read_train_table; cfg = load_config(sys.argv[1]); "
            "decoded_for(cfg, read_train_table(cfg)['image'].tolist())")
    return [sys.executable, "-c", code, str(config)]


def _fresh(work: Path, name: str) -> None:
    """No outputs of an earlier run of this set: every stage starts cold."""
    shutil.rmtree(work / "outputs", ignore_errors=True)
    (work / "folds" / f"{name}.csv").unlink(missing_ok=True)


def bench_one(kind: str, n: int, data_dir: Path, work: Path, env: dict, log=print) -> dict:
    """Generate (once) and time every stage on `n` training images of `kind`."""
    name = f"{kind}-{n}"
    root = data_dir / name
    tick = time.perf_counter()
    write_image_set(root, n, kind=kind, log=log)
    generated = time.perf_counter() - tick
    config = _config(name, root, work, kind)
    _fresh(work, name)
    n_test = max(n // 10, 1)
    py = [sys.executable, "-m", "pipeline"]
    cfg_args = ["--config", str(config)]
    make = ["make", "--no-print-directory", "folds", f"CONFIG={config}"]
    steps = [("resolve", py + ["resolve", *cfg_args, "--make-vars"], n + n_test),
             ("check", py + ["check", *cfg_args], n + n_test),
             ("check_again", py + ["check", *cfg_args], n + n_test),
             ("folds", py + ["folds", *cfg_args], n),
             ("noop_make", make, n + n_test),
             ("one_changed", make, n + n_test),
             ("eda", py + ["eda", *cfg_args], n),
             ("cache", _cache_command(config), n),
             ("train_epoch", py + ["train", *cfg_args, "--fold", "0"], n),
             ("predict_tta", py + ["predict", *cfg_args, "--fold", "0"], n // 5 + n_test)]
    stages: dict[str, dict] = {}
    for stage, command, images in steps:
        if stage == "one_changed":
            _touch_one_image(root)
        runs = [measure(command, images, env, log) for _ in range(_NOOP_REPEATS if stage == "noop_make" else 1)]
        result = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        if stage == "noop_make":
            result["all_seconds"] = [r["seconds"] for r in runs]
        stages[stage] = result
        log(f"[bench-scale] {name} {stage}: {result['seconds']:.2f} s, {result['images_per_s']:.0f} images/s, "
            f"peak {result['peak_mb']:.0f} MB (largest process {result['max_process_mb']:.0f} MB), "
            f"load {result['load_before']}")
    return {"kind": kind, "n": n, "n_test": n_test, "generate_seconds": round(generated, 1), "stages": stages}


# ---- the whole run ----------------------------------------------------------------------------

def _targets(png_runs: list[dict], slopes: dict) -> dict:
    """Each target of issue 29 at the largest PNG size: the value, the target, met or not."""
    if not png_runs:
        return {}
    largest = max(png_runs, key=lambda r: r["n"])
    out = {"at_images": largest["n"]}
    for name, (field, op, bound) in TARGETS.items():
        stage = name.replace("_memory", "")
        value = largest["stages"][stage][field]
        out[name] = {"value": value, "target": f"{field} {op} {bound:g}",
                     "met": value < bound if op == "<" else value >= bound}
    out["slopes"] = {s: {"value": v, "target": f"<= {MAX_SLOPE}", "met": v is not None and v <= MAX_SLOPE}
                     for s, v in slopes.items()}
    return out


def _figure(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    png = sorted((r for r in result["runs"] if r["kind"] == "png"), key=lambda r: r["n"])
    for k, stage in enumerate(STAGES):
        sizes = [r["n"] for r in png]
        seconds = [r["stages"][stage]["seconds"] for r in png]
        s = result["slopes"].get(stage)
        label = f"{stage} (slope {s:.2f})" if s is not None else stage
        line, = ax.plot(sizes, seconds, marker="o", label=label, color=plt.cm.tab10(k % 10))
        for r in result["runs"]:
            if r["kind"] == "jpeg":
                ax.plot([r["n"]], [r["stages"][stage]["seconds"]], marker="s", ls="none", color=line.get_color(),
                        markerfacecolor="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training images (N; N/10 test images)")
    ax.set_ylabel("seconds (wall clock)")
    ax.set_title("Cost of each stage against N: 28x28 PNGs (lines), 384x512 JPEGs (squares)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _machine() -> dict:
    import psutil
    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1), "python": platform.python_version()}


def run_bench_scale(sizes: list[int], jpeg_sizes: list[int], out: Path, data_dir: Path, work: Path,
                    docs: bool = False, log=print) -> dict:
    """Run every size (PNG), then every JPEG size; write `out` (JSON) and the figure beside it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    uptime_before = os.getloadavg()
    runs = [bench_one("png", n, data_dir, work, env, log) for n in sorted(sizes)]
    runs += [bench_one("jpeg", n, data_dir, work, env, log) for n in sorted(jpeg_sizes)]
    png = [r for r in runs if r["kind"] == "png"]
    slopes = {s: (round(v, 3) if (v := slope([r["n"] for r in png], [r["stages"][s]["seconds"] for r in png]))
                  is not None else None) for s in STAGES}
    result = {"started": started, "machine": _machine(), "load_average_before": [round(v, 2) for v in uptime_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "model": {**_MODEL, "image_size": _IMAGE_SIZE, "batch_size": 256, "epochs": 1, "folds": 5,
                        "note": "train_epoch: one epoch of fold 0 (4/5 of N) on the decode cache; predict_tta: "
                                "fold 0's out-of-fold (N/5) and test (N/10) images, views identity + hflip"},
              "sizes": sorted(sizes), "jpeg_sizes": sorted(jpeg_sizes), "runs": runs, "slopes": slopes}
    result["targets"] = _targets(png, slopes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    figure = _figure(result, out.with_suffix(".png"))
    log(f"[bench-scale] {out}, {figure}")
    log(format_table(result))
    if docs:
        figures = REPO / "docs" / "figures"
        shutil.copy(out, figures / "bench_scale.json")
        shutil.copy(figure, figures / "bench_scale.png")
        log(f"[bench-scale] copied to {figures}")
    return result


def format_table(result: dict) -> str:
    """Seconds (images/s, peak MB) per stage and size, the slope, and the targets met or missed."""
    runs = sorted(result["runs"], key=lambda r: (r["kind"] != "png", r["n"]))
    head = ["stage"] + [f"{r['kind']} {r['n']}" for r in runs] + ["slope"]
    rows = [head]
    for stage in STAGES:
        cells = [f"{r['stages'][stage]['seconds']:.1f} s ({r['stages'][stage]['images_per_s']:.0f}/s, "
                 f"{r['stages'][stage]['peak_mb']:.0f} MB)" for r in runs]
        s = result["slopes"].get(stage)
        rows.append([stage] + cells + [f"{s:.2f}" if s is not None else "-"])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    for name, t in result.get("targets", {}).items():
        if name in ("at_images", "slopes"):
            continue
        lines.append(f"target {name}: {t['value']} ({t['target']}) {'met' if t['met'] else 'MISSED'}")
    missed = [s for s, t in result.get("targets", {}).get("slopes", {}).items() if not t["met"]]
    lines.append(f"slopes <= {MAX_SLOPE}: " + ("all met" if not missed else f"MISSED by {', '.join(missed)}"))
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated whole numbers, e.g. 2000,5000; got {text!r}") \
            from None
    if any(s < 100 for s in sizes):
        raise argparse.ArgumentTypeError(f"every size must be at least 100 images; got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_sizes, default=[10_000, 30_000, 100_000],
                        help="training images of each PNG set (default: 10000,30000,100000)")
    parser.add_argument("--jpeg-sizes", type=_sizes, default=[30_000],
                        help="training images of each 384x512 JPEG set (default: 30000; '' for none)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_scale.json"))
    parser.add_argument("--data", type=Path, default=Path("data/bench_scale"),
                        help="where the generated sets are written once (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_scale"),
                        help="configs, outputs and folds of the runs (emptied per set; default: %(default)s)")
    parser.add_argument("--docs", action="store_true", help="also copy the JSON and figure to docs/figures/")
    args = parser.parse_args(argv)
    run_bench_scale(args.sizes, args.jpeg_sizes, args.out.resolve(), args.data.resolve(), args.work.resolve(),
                    docs=args.docs)


if __name__ == "__main__":
    main()
