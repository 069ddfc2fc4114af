"""The runs behind `gpu-check`'s four checks: each starts the pipeline's own commands (`make`, `python -m
pipeline ...`) in subprocesses on the GPU, within a deadline, and fills a dict of figures that
:mod:`pipeline.tools.gpu_verdicts` judges. Every run writes under the session's work folder, its output
to `logs/<run>.log`."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.tools.gpu_verdicts import AMP_VARIANTS, FOLD_OOF_TOLERANCE, OOF_TOLERANCE, bench_figures
from pipeline.tools.run_files import (epoch_seconds, fold_dirs, foreign_fold_files, metrics_agree, oof_score,
                                     weights_difference)

__all__ = ["Session", "CheckTimeout", "run_logged", "make_command", "run_bench_check", "run_amp_check",
           "run_parallel_check", "run_resume_check"]

REPO = Path(__file__).resolve().parents[2]     # the commands run here, where the Makefile is

DEMO_BENCH = ["--repeats", "3", "--large-images", "0"]
PHOTO_BENCH = ["--data", "photos", "--photos", "256", "--model", "resnet50", "--image-size", "224",
               "--batch-size", "128", "--predict-batch-size", "128", "--amp", "bf16", "--channels-last", "on",
               "--steps", "12", "--repeats", "3", "--large-images", "0"]
BENCH_SHARE = {"demo": 0.35, "photos": 0.65}   # of the bench check's time
POLL_S = 0.25


class CheckTimeout(Exception):
    """A run outlived its check's deadline; its process group was killed."""


@dataclass
class Session:
    """Where and how the checks run: the work folder, the GPU's id for `GPUS=` and `parallel.gpus`, the
    interpreter (also Make's `PY`).

    `device` 'cpu' and `overrides` (config keys set on every demo run) exist for rehearsing the runs'
    mechanics on a CPU in tests; `variants` the precisions the amp check compares (the first is the
    reference)."""
    work: Path
    gpu: str = "0"
    python: str = sys.executable
    log: Callable[[str], None] = print
    make_jobs: int = 5            # the demo's five folds at once on the GPU
    device: str = "cuda"
    overrides: dict = field(default_factory=dict)
    variants: dict = field(default_factory=lambda: dict(AMP_VARIANTS))

    @property
    def outputs(self) -> Path:
        return self.work / "outputs"

    def log_file(self, run: str) -> Path:
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        return self.work / "logs" / f"{run}.log"


# ---- processes ----------------------------------------------------------------------------------

def _start(cmd: list[str], log_file: Path, cwd: Path = REPO) -> subprocess.Popen:
    with open(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:   # its own process group: a kill reaches Make and every process it started
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
        except FileNotFoundError:
            raise RuntimeError(f"`{cmd[0]}` is not installed on this machine (not on PATH); the check needs it") from None


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait(proc: subprocess.Popen, deadline: float, what: str) -> int:
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise CheckTimeout(f"{what} was still running at the check's time limit") from None


def run_logged(cmd: list[str], log_file: Path, deadline: float, what: str, cwd: Path = REPO) -> int:
    """Run `cmd` (output appended to `log_file`) to its end; CheckTimeout, its group killed, at `deadline`."""
    return _wait(_start(cmd, log_file, cwd), deadline, what)


def log_tail(log_file: Path, lines: int = 6) -> str:
    text = log_file.read_text(errors="replace").strip().splitlines() if log_file.is_file() else []
    return " | ".join(text[-lines:])


def make_command(session: Session, goals: list[str], experiment: str, overrides: dict | None = None,
                 jobs: int = 1, variables: dict | None = None) -> list[str]:
    """`make <goals>` on the demo config for `experiment`, everything under the session's work folder,
    on CUDA (no silent CPU fallback), run by this interpreter (`PY`) without a virtual environment."""
    text = " ".join(f"{k}={v}" for k, v in _sets(session, experiment, overrides).items())
    if any(c.isspace() for c in str(session.work)):
        raise ValueError(f"gpu-check: the work folder {session.work} has a space in its path; Make's SET cannot "
                         "hold it: pass --out in a folder without spaces")
    ready = session.work / "interpreter.ok"   # Make's venv target, up to date: the interpreter is the environment
    ready.touch()
    extra = [f"{k}={v}" for k, v in (variables or {}).items()]
    return ["make", "--no-print-directory", f"-j{jobs}", *goals, "CONFIG=configs/demo.yaml", f"SET={text}",
            f"PY={session.python}", f"VENV_OK={ready}", *extra]


def _sets(session: Session, experiment: str, overrides: dict | None = None) -> dict:
    return {"experiment": experiment, "output_dir": session.outputs, "folds.dir": session.work / "folds",
            "train.device": session.device, "report.progress": "off", **session.overrides, **(overrides or {})}


def ensure_demo_data(session: Session, deadline: float) -> None:
    """`make data` once, before runs that would otherwise write the demo's images at the same time."""
    cmd = make_command(session, ["data"], "gpucheck-data")
    if run_logged(cmd, session.log_file("data"), deadline, "make data") != 0:
        raise RuntimeError(f"make data failed: {log_tail(session.log_file('data'))}")


def _sidecar_devices(exp_dir: Path, folds) -> list[str]:
    return sorted({json.loads((exp_dir / f"fold_{k}" / "weights.json").read_text()).get("device", "unknown")
                   for k in folds})


def _metric(exp_dir: Path) -> str:
    from pipeline.config import load_config

    return load_config(exp_dir / "config.yaml").competition.metric


# ---- 1. bench -----------------------------------------------------------------------------------

def run_bench_check(session: Session, figures: dict, deadline: float) -> None:
    """`python -m pipeline bench --device cuda` at the demo's size and on generated photos at 224 px."""
    start = time.monotonic()
    for run, args in (("demo", DEMO_BENCH), ("photos", PHOTO_BENCH)):
        out = session.work / f"bench-{run}.json"
        log = session.log_file(f"bench-{run}")
        own = min(deadline, time.monotonic() + BENCH_SHARE[run] * (deadline - start))
        session.log(f"[gpu-check] bench {run} (up to {own - time.monotonic():.0f} s) → {log}")
        cmd = [session.python, "-m", "pipeline", "bench", "--device", session.device, "--out", str(out), *args]
        try:
            rc = run_logged(cmd, log, own, f"the {run} bench")
        except CheckTimeout as exc:
            figures[run] = {"error": str(exc)}
            continue
        figures[run] = bench_figures(json.loads(out.read_text())) if rc == 0 else \
            {"error": f"exit {rc}: {log_tail(log)}"}


# ---- 2. the demo at each precision ------------------------------------------------------------

def run_amp_check(session: Session, figures: dict, deadline: float) -> None:
    """The demo end to end (folds, train, predict, ensemble, validate) in fp32, bf16, fp16 and compiled."""
    figures.update({"tolerance": OOF_TOLERANCE, "runs": {}})
    ensure_demo_data(session, deadline)
    for name, overrides in session.variants.items():
        exp = f"gpucheck-{name}"
        log = session.log_file(f"amp-{name}")
        session.log(f"[gpu-check] demo, {name} → {log}")
        cmd = make_command(session, ["folds", "train", "ensemble", "validate"], exp, overrides, session.make_jobs)
        tick = time.monotonic()
        rc = run_logged(cmd, log, deadline, f"the {name} demo")
        run = figures["runs"][name] = {"seconds": round(time.monotonic() - tick, 1)}
        if rc != 0:
            run["error"] = f"exit {rc}: {log_tail(log)}"
            continue
        exp_dir = session.outputs / exp
        run.update(validated="valid against" in log.read_text(), oof=round(oof_score(exp_dir, _metric(exp_dir)), 4),
                   epoch_s_median=round(statistics.median(epoch_seconds(exp_dir)), 2),
                   devices=_sidecar_devices(exp_dir, [int(d.name.split("_")[1]) for d in fold_dirs(exp_dir)]))
        figures["metric"] = _metric(exp_dir)


# ---- 3. two folds at once on one GPU ----------------------------------------------------------

def _in_training(fold_dir: Path) -> bool:
    """A fold past its first epoch and not yet finished."""
    return (fold_dir / "metrics.csv").is_file() and not (fold_dir / "weights.safetensors").is_file()


def _watch(proc: subprocess.Popen, exp_dir: Path, folds: list[int], deadline: float, what: str) -> tuple[int, float | None]:
    """Wait for `proc`, looking every POLL_S for a moment when all `folds` train at once; (exit code,
    seconds from the start to that moment or None)."""
    start, seen = time.monotonic(), None
    while proc.poll() is None:
        if seen is None and all(_in_training(exp_dir / f"fold_{k}") for k in folds):
            seen = time.monotonic() - start
        if time.monotonic() > deadline:
            _kill(proc)
            raise CheckTimeout(f"{what} was still running at the check's time limit")
        time.sleep(POLL_S)
    return proc.returncode, seen


def _parallel_run(session: Session, cmd: list[str], exp: str, folds: list[int], deadline: float, way: str) -> dict:
    log = session.log_file(f"parallel-{way}")
    session.log(f"[gpu-check] two folds at once, {way} → {log}")
    exp_dir = session.outputs / exp
    tick = time.monotonic()
    rc, seen = _watch(_start(cmd, log), exp_dir, folds, deadline, f"the {way} run")
    run = {"seconds": round(time.monotonic() - tick, 1), "overlap_at_s": None if seen is None else round(seen, 1)}
    if rc != 0:
        return {**run, "error": f"exit {rc}: {log_tail(log)}"}
    from pipeline.config import load_config

    folds_file = load_config(exp_dir / "config.yaml").folds_file
    return {**run, "devices": _sidecar_devices(exp_dir, folds),
            "foreign": [p for k in folds for p in foreign_fold_files(exp_dir, k, folds_file)]}


def run_parallel_check(session: Session, figures: dict, deadline: float) -> None:
    """Folds 0 and 1 by `make -j2 train GPUS=<id>`, then folds 2 and 3 by the Dask backend on a local
    cluster of two workers that share the GPU (`parallel.gpus: [id, id]`, one GPU slot each)."""
    exp = "gpucheck-parallel"
    ensure_demo_data(session, deadline)
    cmd = make_command(session, ["folds", "train"], exp, jobs=2, variables={"FOLD": "0 1", "GPUS": session.gpu})
    figures["make"] = _parallel_run(session, cmd, exp, [0, 1], deadline, "make")
    # two GPU slots on one GPU (on a CPU rehearsal too: the workers' GPU resource is what is exercised)
    sets = _sets(session, exp, {"parallel.gpus": f"[{session.gpu},{session.gpu}]"})
    cmd = [session.python, "-m", "pipeline", "train", "--config", "configs/demo.yaml", "--backend", "dask",
           "--fold", "2", "3", "--set", *[f"{k}={v}" for k, v in sets.items()]]
    figures["dask"] = _parallel_run(session, cmd, exp, [2, 3], deadline, "dask")


# ---- 4. resume after SIGKILL ------------------------------------------------------------------

def _kill_inside_epoch(proc: subprocess.Popen, fold_dir: Path, deadline: float) -> int:
    """SIGKILL `proc`'s group halfway through the epoch after its first checkpoint; the epochs finished
    by then (0 when the process ended before the kill)."""
    import pandas as pd

    state = fold_dir / "state" / "last.pt"
    while not state.is_file() or not (fold_dir / "metrics.csv").is_file():
        if proc.poll() is not None:
            return 0
        if time.monotonic() > deadline:
            _kill(proc)
            raise CheckTimeout("the fold to kill had not finished its first epoch at the check's time limit")
        time.sleep(POLL_S / 5)
    epoch_s = float(pd.read_csv(fold_dir / "metrics.csv")["seconds"].iloc[0])
    time.sleep(epoch_s / 2)
    if proc.poll() is not None:
        return 0
    _kill(proc)
    from pipeline.train.models import safe_torch_load

    return int(safe_torch_load(state)["epoch"]) + 1   # the checkpoint a rerun resumes from


def run_resume_check(session: Session, figures: dict, deadline: float) -> None:
    """Fold 0 trained straight and, beside it on the same GPU, a copy SIGKILLed inside its second epoch,
    rerun to resume; then their weights, metrics and out-of-fold scores compared."""
    straight, killed = "gpucheck-resume-straight", "gpucheck-resume"
    logs = {name: session.log_file(f"resume-{name}") for name in ("straight", "killed", "rerun")}
    session.log(f"[gpu-check] resume after SIGKILL → {logs['killed']}")
    ensure_demo_data(session, deadline)
    ref = _start(make_command(session, ["folds", "train"], straight, variables={"FOLD": "0"}), logs["straight"])
    kill_dir = session.outputs / killed / "fold_0"
    proc = _start(make_command(session, ["folds", "train"], killed, variables={"FOLD": "0"}), logs["killed"])
    try:
        epochs = _kill_inside_epoch(proc, kill_dir, deadline)
        figures.update(tolerance=FOLD_OOF_TOLERANCE, epochs_before_kill=epochs,
                       killed_mid_epoch=epochs > 0 and not (kill_dir / "weights.safetensors").is_file()
                       and (kill_dir / "state" / "last.pt").is_file())
        rc = run_logged(make_command(session, ["train"], killed, variables={"FOLD": "0"}), logs["rerun"], deadline,
                        "the resumed fold")
        figures["resumed"] = f"resuming after epoch {epochs}/" in logs["rerun"].read_text()
        ref_rc = _wait(ref, deadline, "the uninterrupted fold")
    finally:   # out of time or broken: no training outlives the check
        for p in (proc, ref):
            if p.poll() is None:
                _kill(p)
    if rc != 0 or ref_rc != 0:
        failed = "rerun" if rc != 0 else "straight"
        figures["error"] = f"the {failed} run failed: {log_tail(logs[failed])}"
        return
    ref_dir = session.outputs / straight / "fold_0"
    figures["weights"] = weights_difference(ref_dir / "weights.safetensors", kill_dir / "weights.safetensors")
    figures["metrics_agree_before_kill"] = epochs > 0 and metrics_agree(ref_dir / "metrics.csv",
                                                                        kill_dir / "metrics.csv", epochs)
    metric = _metric(session.outputs / straight)
    figures["oof_straight"] = round(oof_score(session.outputs / straight, metric, [0]), 4)
    figures["oof_resumed"] = round(oof_score(session.outputs / killed, metric, [0]), 4)
