"""How long the leak scan takes on one large class, and how much memory it needs.

    python -m pipeline.tools.leak_bench --images 100000 [--out outputs/leak_bench.json]

The class is real images where they are installed (Debian's fashion-MNIST, every article of the training and
test sets as one class, the rest made up of shifted, re-exposed copies of them), else smooth random images
of one template: what matters is the scan's cost, which is linear in the class size (an index, and a fixed
number of aligned candidates per image). The images are built in memory: reading files is not the scan.
Wall seconds depend on what else the machine runs: the result records the CPU seconds and the load average
before the scan too; measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path

import numpy as np

from pipeline.data.leaks import suspected_pairs
from pipeline.fileio import write_text_atomic
from pipeline.tools.leak_sources import FASHION_DIR, read_idx_images

__all__ = ["large_class", "run_leak_bench"]

_COPY_SHARE = 0.1        # of the class: copies of other images, so the scan has something to find


def _originals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    files = [FASHION_DIR / f"{part}-images-idx3-ubyte.gz" for part in ("train", "t10k")]
    if all(f.is_file() for f in files):
        images = np.concatenate([read_idx_images(f) for f in files]).astype(np.float32) / 255
        return images[rng.permutation(len(images))[:n]], "fashion-MNIST articles"
    from scipy.ndimage import gaussian_filter
    template = gaussian_filter(rng.normal(size=(28, 28)), 2)
    own = gaussian_filter(rng.normal(size=(n, 28, 28)).astype(np.float32), (0, 1.5, 1.5))
    return (0.7 * template + 0.5 * own).astype(np.float32), "smooth random images"


def large_class(n: int, seed: int = 0) -> tuple[np.ndarray, str, np.ndarray]:
    """(n, 28, 28) float32 images of one class, a tenth of them shifted copies of others; their source; and
    the planted pairs (original's row, copy's row)."""
    from scipy.ndimage import shift
    rng = np.random.default_rng(seed)
    n_copies = int(n * _COPY_SHARE)
    originals, source = _originals(n - n_copies, rng)
    while len(originals) < n - n_copies:                  # fewer real images than asked: repeat, flipped
        originals = np.concatenate([originals, originals[:, :, ::-1]])[:n - n_copies]
    picks = rng.choice(len(originals), size=n_copies, replace=False)
    copies = np.stack([shift(originals[k], rng.uniform(-2, 2, size=2), order=1, mode="nearest")
                       * rng.uniform(0.85, 1.15) for k in picks])
    planted = np.stack([picks, np.arange(n - n_copies, n)], 1)
    return np.concatenate([originals, copies]).astype(np.float32), source, planted


def _flagged(pairs, planted: np.ndarray) -> int:
    """How many planted (original, copy) pairs the scan flagged."""
    n = int(planted.max()) + 1
    found = pairs["i"].to_numpy(dtype=np.int64) * n + pairs["j"].to_numpy(dtype=np.int64)
    return int(np.isin(planted.min(1) * n + planted.max(1), found).sum())


class _PeakMemory:
    """The process's resident memory, sampled every 20 ms while the block runs: its peak (MB)."""

    def __enter__(self):
        import threading

        import psutil
        self._process, self._stop, self.peak = psutil.Process(), threading.Event(), 0.0
        self.before = self._process.memory_info().rss / 2 ** 20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss / 2 ** 20)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss / 2 ** 20)


def run_leak_bench(n_images: int, out: Path | None = None, log=print) -> dict:
    """Time and peak memory of `suspected_pairs` on one class of `n_images`; the memory before it too."""
    importlib.import_module("torch")      # imported by the scan; loaded first so the baseline includes it
    images, source, planted = large_class(n_images)
    load = os.getloadavg()[0]
    with _PeakMemory() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        scan = suspected_pairs(images, np.zeros(n_images, dtype=object))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"images": n_images, "size": images.shape[1], "source": source, "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu, 1), "load_average_before": round(load, 2), "cpus": os.cpu_count(),
              "candidate_pairs": scan.candidates,
              "aligned_pairs": scan.compared, "pairs_flagged": len(scan.pairs),
              "copies_planted": len(planted), "planted_pairs_flagged": _flagged(scan.pairs, planted),
              "scan_memory_mb": round(memory.peak - memory.before),
              "peak_rss_mb": round(memory.peak), "rss_before_scan_mb": round(memory.before)}
    log(f"[leak-bench] {n_images} images of one class ({source}, {images.shape[1]} px): {seconds:.1f} s "
        f"({cpu:.1f} s of CPU on {os.cpu_count()} cores, load average {load:.2f} before it), "
        f"{scan.candidates} candidate pairs, {scan.compared} aligned in full, {len(scan.pairs)} flagged "
        f"({result['planted_pairs_flagged']} of the {result['copies_planted']} planted copies); "
        f"the scan's memory {result['scan_memory_mb']} MB (the process: {result['peak_rss_mb']} MB at its peak, "
        f"{result['rss_before_scan_mb']} MB before the scan)")
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--out", default=None, help="result JSON")
    args = parser.parse_args(argv)
    run_leak_bench(args.images, args.out)


if __name__ == "__main__":
    main()
