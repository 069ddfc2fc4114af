"""`make gpu-check`: every CUDA path of the pipeline proved in one command, in under 8 minutes on one GPU.

Four checks, each with its own time limit, run the pipeline's own commands on the GPU:

1. bench: `make bench` at the demo's size (resnet10t, 32 px: loader-bound, its images/s and what bounds
   it) and on generated 384x512 JPEGs like the mask photos (resnet50 at 224 px, batch 128, bf16,
   channels_last, loader workers, decode cache warm): training and prediction efficiency against bare
   on-GPU tensors, peak GPU memory.
2. amp: the demo end to end (`make folds train ensemble validate`) in fp32, bf16, fp16 (GradScaler) and
   `train.compile: true`: each finishes, its submission validates, its out-of-fold score is within
   `OOF_TOLERANCE` of the fp32 run's.
3. parallel: two folds at once on the one GPU, by `make -j2 train GPUS=<id>` and by the Dask backend on a
   local cluster whose two workers share the GPU (a GPU resource each): both finish, each fold's files
   are its own.
4. resume: a fold SIGKILLed inside an epoch resumes to the uninterrupted run's weights (or, where the GPU
   is not deterministic, says so and holds the fold's OOF score within a tolerance).

Writes `outputs/gpu-check.json` (after every check, so a killed session keeps what finished) and prints
one row per check: pass/fail, seconds, figures. The runs and their logs stay in `outputs/gpu-check/`.
Without CUDA it prints one line and exits 1, having run nothing.

    python -m pipeline gpu-check [--out outputs/gpu-check.json] [--only bench,resume] [--time-scale 1.5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

from pipeline.fileio import write_json_atomic
from pipeline.tools.gpu_verdicts import describe, judge_amp, judge_bench, judge_parallel, judge_resume

__all__ = ["CHECKS", "cuda_refusal", "run_check", "run_gpu_check", "table", "main", "NO_CUDA_EXIT"]

NO_CUDA_EXIT = 1


class Check(NamedTuple):
    limit_s: float
    what: str
    run: str                                     # the function's name in pipeline.tools.gpu_runs
    judge: Callable[[dict], tuple[bool, str]]


# The limits add up to 7 min 30 s; a run that reaches its limit is killed and its check fails. The amp
# check has the most: torch.compile compiles in each of the five fold processes (training and eval modes).
CHECKS = {
    "bench": Check(110, "make bench on the GPU: demo 32 px and photos 224 px bf16", "run_bench_check", judge_bench),
    "amp": Check(240, "the demo end to end: fp32, bf16, fp16, compile", "run_amp_check", judge_amp),
    "parallel": Check(50, "two folds at once on one GPU: make -j2 GPUS=, Dask", "run_parallel_check", judge_parallel),
    "resume": Check(50, "a fold SIGKILLed mid-epoch resumes to the same weights", "run_resume_check", judge_resume),
}


def cuda_refusal() -> str | None:
    """The one line gpu-check prints instead of running on a machine without CUDA (None: CUDA is there)."""
    import torch

    if torch.cuda.is_available():
        return None
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"gpu-check: no CUDA device (torch {torch.__version__}, {built}, sees none); nothing was run. "
            "Run it on a machine with an NVIDIA GPU.")


def run_check(name: str, runner: Callable, judge: Callable, limit_s: float, log=print) -> dict:
    """Run one check within `limit_s` and judge it: {name, passed, seconds, limit_s, why, figures}. A run
    that ran out of time or raised fails with the reason; the figures it had gathered are kept."""
    from pipeline.tools.gpu_runs import CheckTimeout

    figures: dict = {}
    tick = time.monotonic()
    try:
        runner(figures, tick + limit_s)
        passed, why = judge(figures)
    except CheckTimeout as exc:
        passed, why = False, f"out of time ({limit_s:.0f} s): {exc}"
    except Exception as exc:   # a broken check must not stop the others
        log(traceback.format_exc())
        passed, why = False, f"{type(exc).__name__}: {exc}"
    return {"name": name, "passed": passed, "seconds": round(time.monotonic() - tick, 1), "limit_s": limit_s,
            "why": why, "figures": figures}


def table(result: dict) -> str:
    """The printed summary: a headline, one row per check (result, seconds, figures), then each reason."""
    checks = result["checks"]
    m = result["meta"]
    passed = sum(c["passed"] for c in checks)
    lines = [f"gpu-check on {m['gpu']} (torch {m['torch']}, CUDA {m['cuda']}), {m['seconds']:.0f} s: "
             f"{passed} of {len(checks)} passed",
             f"{'check':<10}{'result':<8}{'seconds':>8}{'limit':>7}  figures"]
    for c in checks:
        lines.append(f"{c['name']:<10}{'PASS' if c['passed'] else 'FAIL':<8}{c['seconds']:>8.0f}{c['limit_s']:>7.0f}  "
                     f"{describe(c['name'], c['figures'])}")
    lines += [f"  {c['name']}: {c['why']}" for c in checks]
    return "\n".join(lines)


def _meta(started: float) -> dict:
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(),
            "commit": _commit(), "seconds": round(time.monotonic() - started, 1)}


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _first_visible_gpu() -> str:
    """The id `GPUS=` and `parallel.gpus` name the GPU by: the first of CUDA_VISIBLE_DEVICES, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def run_gpu_check(out_json: str | Path = "outputs/gpu-check.json", only: list[str] | None = None,
                  log: Callable[[str], None] = print, time_scale: float = 1.0) -> dict:
    """Run the checks (all, or `only`), write `out_json` after each, print the table; return the result.
    `time_scale` multiplies every check's time limit (a slower GPU, a rerun of one check with more time).
    RuntimeError (with `cuda_refusal`'s line) without CUDA, before anything runs."""
    from pipeline.tools import gpu_runs

    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        raise ValueError(f"gpu-check: unknown check(s) {unknown}; the checks are: {', '.join(CHECKS)}")
    refusal = cuda_refusal()
    if refusal:
        raise RuntimeError(refusal)
    out_json = Path(out_json).resolve()      # the runs' commands run in the repository, wherever this was called
    work = out_json.parent / "gpu-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    session = gpu_runs.Session(work=work, gpu=_first_visible_gpu(), log=log)
    started = time.monotonic()
    result = {"passed": False, "meta": {}, "checks": []}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        limit = check.limit_s * time_scale
        log(f"[gpu-check] {name}: {check.what} (limit {limit:.0f} s)")
        runner = getattr(gpu_runs, check.run)
        result["checks"].append(run_check(name, lambda f, d: runner(session, f, d), check.judge, limit, log))
        result["passed"] = all(c["passed"] for c in result["checks"])
        result["meta"] = _meta(started)
        write_json_atomic(out_json, result)
    log(table(result))
    log(f"[gpu-check] → {out_json} (runs and logs in {work})")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/gpu-check.json", help="result JSON (default: %(default)s)")
    p.add_argument("--only", default=None, help=f"comma-separated checks to run (default all: {','.join(CHECKS)})")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every check's time limit (default 1)")
    a = p.parse_args(argv)
    refusal = cuda_refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return NO_CUDA_EXIT
    only = [c.strip() for c in a.only.split(",") if c.strip()] if a.only else None
    try:
        result = run_gpu_check(a.out, only, time_scale=a.time_scale)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
