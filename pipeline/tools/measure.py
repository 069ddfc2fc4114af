"""How the benchmark measures: peak memory, timing, paired runs and the verdict on them.

:class:`PeakRSS` and :func:`measure` time one run and record its memory; :class:`Paired`
interleaves bare steps with pipeline batches so that both see the same load from other
processes (why: :mod:`pipeline.tools.bench`); :func:`judge_efficiency` turns the runs into a
headline, or says why there is none.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch

__all__ = ["PeakRSS", "Paired", "SPREAD_TOLERANCE", "judge_efficiency", "load1", "measure", "median_of",
           "reset_hwm", "rotated", "summary", "sync", "torch_threads"]

# The runs of one line may differ by this share of their median before the line is called noise.
SPREAD_TOLERANCE = 0.10


# ---- memory -------------------------------------------------------------------------------------

def _rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak-RSS mark (VmHWM, ru_maxrss)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _read_hwm() is not None
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory of a phase: this process exactly, DataLoader workers sampled.

    Why not ru_maxrss deltas: ru_maxrss is a lifetime high-water mark, so a phase that needs
    less than an earlier one shows 0, and RUSAGE_CHILDREN is the max of finished children,
    not the sum of a phase's live workers. Instead:

    * this process: on Linux the high-water mark is reset at the start of the phase
      (`/proc/self/clear_refs` = 5) and VmHWM read at its end: exact, no overhead. Where that
      is not possible, a thread samples RSS every `interval` seconds (can miss short spikes).
    * workers (`children=True`): a thread sums the RSS of all child processes every `interval`
      seconds. Pages shared with the parent (forked model, memory-mapped cache) count once per
      process, so this overstates the real cost of workers.

    `peak_mb` is the absolute peak of this process, `delta_mb` the peak minus the RSS at the
    start of the phase (what the phase added), `workers_mb` the sampled peak sum over workers.
    """

    def __init__(self, children: bool = False, interval: float = 0.01):
        self.children, self.interval = children, interval

    def __enter__(self):
        import psutil
        self._proc = psutil.Process()
        self.start = _rss()
        self._exact = reset_hwm()
        self._main_peak, self._child_peak = self.start, 0
        self._stop = threading.Event()
        self._thread = None
        if self.children or not self._exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil
        while not self._stop.is_set():
            try:
                self._main_peak = max(self._main_peak, self._proc.memory_info().rss)
                if self.children:
                    self._child_peak = max(self._child_peak, _children_rss(self._proc))
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = _read_hwm() if self._exact else None
        self.peak = max(peak or 0, self._main_peak)
        self.peak_mb = self.peak / 2**20
        self.delta_mb = (self.peak - self.start) / 2**20
        self.workers_mb = self._child_peak / 2**20
        return False


def _children_rss(proc) -> int:
    """The summed RSS of `proc`'s live child processes (those that vanish meanwhile count 0)."""
    import psutil
    total = 0
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


# ---- timing -------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is the real time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load1() -> float | None:
    """The 1-minute load average, rounded (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def median_of(values):
    """The median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure(fn: Callable[[], float], children: bool = False) -> tuple[float, PeakRSS]:
    """Run `fn` (it returns its own seconds) under :class:`PeakRSS`; the memory gets `gpu_mb` too."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS(children=children) as mem:
        seconds = fn()
    mem.gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return seconds, mem


def summary(seconds: list[float], mems: list[PeakRSS], n: int, extra: dict | None = None) -> dict:
    """One result line: median images/s over the runs of `n` images, every rate, peak memories, `extra`."""
    rates = [n / s for s in seconds]
    out = {"images_per_s": round(median_of(rates), 1), "images_per_s_all": [round(r, 1) for r in rates],
           "seconds_median": round(median_of(seconds), 4),
           "peak_rss_mb": round(max(m.peak_mb for m in mems), 1),
           "peak_rss_delta_mb": round(max(m.delta_mb for m in mems), 1)}
    if any(m.workers_mb for m in mems):
        out["workers_rss_mb"] = round(max(m.workers_mb for m in mems), 1)
    if any(m.gpu_mb for m in mems):
        out["gpu_peak_mb"] = round(max(m.gpu_mb for m in mems), 1)
    out.update(extra or {})
    return out


class Paired:
    """A DataLoader that runs one bare step (timed apart) before handing out each batch.

    Wrapped around a main-process loader (num_workers=0), every pipeline step then runs right
    after a bare step on in-memory tensors, so both see the same load from other processes:
    the ratio of their sums is the efficiency, robust to load bursts that last seconds.
    Pipeline time = the loop's total time - `bare_seconds`. (With workers the loader would
    prefetch during the bare steps, so worker variants are compared unpaired.)
    """

    def __init__(self, loader, bare_step: Callable[[], None], device):
        self.loader, self.bare_step, self.device = loader, bare_step, device
        self.bare_seconds = 0.0

    def __getattr__(self, name):          # sampler, batch_size, drop_last, dataset, ...
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            # The batch was fetched before the bare step, so undo nothing: the fetch stays in
            # the pipeline's time; only the bare step's own time is moved to bare_seconds.
            sync(self.device)
            tick = time.perf_counter()
            self.bare_step()
            sync(self.device)
            self.bare_seconds += time.perf_counter() - tick
            yield batch


def rotated(names, r: int) -> list:
    """`names` rotated left by `r`: the variants' order for repeat `r`, so none always runs first."""
    names = list(names)
    return names[r % len(names):] + names[:r % len(names)]


# ---- the verdict --------------------------------------------------------------------------------

def judge_efficiency(runs: list[float], load_before: float | None, load_after: float | None,
                     cpus: int | None, tolerance: float = SPREAD_TOLERANCE) -> dict:
    """A headline efficiency, or the reason there is none.

    The median of `runs` is a result only when the runs agree (their range is within `tolerance`
    of the median) and it is not above 1 + `tolerance` (faster than the bare model is impossible:
    only noise gives that). A median between 1 and 1 + `tolerance` reads "indistinguishable from
    the bare model". When the runs disagree, the load average says whether other processes ran.

    >>> judge_efficiency([0.95, 0.96, 0.94], 0.1, 0.2, 2)["headline"]
    '0.950'
    >>> judge_efficiency([0.31, 1.43, 1.49], 3.9, 4.2, 2)["reliable"]
    False
    """
    median = statistics.median(runs)
    spread = (max(runs) - min(runs)) / median if median > 0 else float("inf")
    problems = []
    if spread > tolerance:
        problems.append(f"its {len(runs)} runs ranged {min(runs):.2f}-{max(runs):.2f}, a spread of {spread:.0%} "
                        f"of the median (more than {tolerance:.0%})")
    if median > 1 + tolerance:
        problems.append(f"its median {median:.2f} is above 1, which only noise can give")
    busy = [v for v in (load_before, load_after) if v is not None]
    load = (f"load average {load_before} before, {load_after} after, on {cpus} CPUs"
            + (": other processes were running" if cpus and busy and max(busy) > 0.5 * cpus else ""))
    if problems:
        return {"reliable": False, "median": round(median, 3), "headline": None,
                "why": "not a measurement: " + "; ".join(problems) + f" ({load}). Rerun on an idle machine."}
    headline = f"{median:.3f}" if median <= 1 else f"1.00 (indistinguishable from the bare model; median {median:.3f})"
    return {"reliable": True, "median": round(median, 3), "headline": headline, "why": load}

