"""`make bundle-check`: run the bundle as the competition would, on the local test images, and compare its
submission with the ensemble's.

The bundle is copied to a fresh temporary folder (outside the repository) and its predict.py run there with
``python -I`` (no PYTHONPATH, no user site, not the current folder) and the package's name blocked, so an
import of anything of the pipeline fails instead of quietly working: the run proves the bundle stands alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.bundle.build import bundle_size
from pipeline.bundle.timing import machine
from pipeline.config import Config
from pipeline.fileio import file_sha256, read_text_csv, write_json_atomic

__all__ = ["Comparison", "run_offline", "compare_submissions", "numeric_columns", "check_bundle",
           "PROBABILITY_TOLERANCE"]

PROBABILITY_TOLERANCE = 1e-6
# `python -I -c` runs this: `pipeline` is made unimportable (even through an editable install), then
# predict.py runs as a script with the arguments that follow it.
_LAUNCHER = ("import runpy, sys; sys.modules['pipeline'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


@dataclass(frozen=True)
class Comparison:
    equal: bool
    verdict: str
    rows: int
    rows_differ: int = 0
    max_difference: float = 0.0


def run_offline(bundle, images, sample, out, device: str | None = None, explain=None,
                workdir=None) -> subprocess.CompletedProcess:
    """predict.py of a copy of `bundle`, run in a temporary folder with ``python -I``, the package blocked."""
    with tempfile.TemporaryDirectory(prefix="bundle-check-", dir=workdir) as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        args = ["--images", str(Path(images).resolve()), "--sample", str(Path(sample).resolve()),
                "--out", str(Path(out).resolve())]
        args += ["--device", device] if device else []
        args += ["--explain", str(Path(explain).resolve())] if explain else []
        return subprocess.run([sys.executable, "-I", "-c", _LAUNCHER, str(copy / "predict.py"), *args],
                              cwd=tmp, capture_output=True, text=True)


def numeric_columns(submission: dict, classes: list) -> list:
    """The columns of a submission that hold probabilities (none for labels)."""
    if submission["kind"] == "probability":
        return [submission["target_column"]]
    return list(classes) if submission["kind"] == "class_probabilities" else []


def compare_submissions(ours, reference, numeric: list, tolerance: float = PROBABILITY_TOLERANCE) -> Comparison:
    """Byte for byte; else every `numeric` column's numbers within `tolerance` and every other cell equal
    as text (ids, labels, columns and their order)."""
    ours, reference = Path(ours), Path(reference)
    a, b = read_text_csv(ours), read_text_csv(reference)
    if ours.read_bytes() == reference.read_bytes():
        return Comparison(True, f"equals {reference} byte for byte ({len(b)} rows)", len(b))
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return Comparison(False, f"{ours} has columns {list(a.columns)} and {len(a)} rows, {reference} "
                                 f"{list(b.columns)} and {len(b)}", len(b), len(b))
    text = [c for c in a.columns if c not in numeric]
    differ = ~(a[text] == b[text]).all(axis=1).to_numpy()
    diff = np.abs(a[numeric].astype(float).to_numpy() - b[numeric].astype(float).to_numpy())
    worst = float(diff.max()) if diff.size else 0.0
    differ |= (diff > tolerance).any(axis=1)
    if not differ.any():
        return Comparison(True, f"equals {reference} within {tolerance:g} (largest difference {worst:.2g}, "
                                f"{len(b)} rows)", len(b), 0, worst)
    first = int(np.flatnonzero(differ)[0]) + 2
    largest = f"; largest probability difference {worst:.2g}" if numeric else ""
    return Comparison(False, f"differs from {reference} on {int(differ.sum())} of {len(b)} rows (first at line "
                             f"{first}{largest})", len(b), int(differ.sum()), worst)


def _read_manifest(bundle: Path) -> dict:
    if not (bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"{bundle}/bundle.json is missing: run `make bundle` first")
    return json.loads((bundle / "bundle.json").read_text())


def _budget_dropped(manifest: dict) -> str | None:
    budget = manifest.get("budget") or {}
    parts = ([f"folds {budget['dropped_folds']}"] if budget.get("dropped_folds") else []) + \
            ([f"views {budget['dropped_views']}"] if budget.get("dropped_views") else [])
    return " and ".join(parts) or None


def _record(path, cfg: Config, bundle: Path, manifest: dict, explain: dict, wall: float, verdict: str,
            load_before) -> None:
    """The figures of the docs: the bundle's size and its speed on the local test images, here."""
    weights = sum((bundle / m["file"]).stat().st_size for f in manifest["folds"] for m in f["members"])
    here = machine(torch.device(explain["device"]))
    write_json_atomic(path, {
        "experiment": cfg.experiment, "bundle_bytes": bundle_size(bundle), "weights_bytes": weights,
        "folds": len(manifest["folds"]), "views": len(json.loads((bundle / "decisions.json").read_text())["tta"]["views"]),
        "images": explain["images"], "predict_seconds": round(explain["seconds"], 2), "wall_seconds": round(wall, 2),
        "seconds_per_1000_images": round(explain["seconds"] / explain["images"] * 1000, 2),
        "build_time_estimate_per_1000_images": round(manifest["timing"]["decode_per_1000"] + sum(
            sum(v.values()) for v in manifest["timing"]["fold_view_per_1000"].values()), 2),
        "machine": {**here, "load_average_before": load_before}, "verdict": verdict,
        "note": "predict_seconds: predict.py from reading the bundle to writing the submission (model loading "
                "included); wall_seconds adds Python's start and imports. Measured on a shared machine: "
                "re-measure on a quiet one."})


def check_bundle(cfg: Config, bundle=None, device: str | None = None, record=None, log=print) -> Comparison:
    """Run the bundle on the local test images and compare with ``outputs/<exp>/submission.csv``; raises
    RuntimeError when a bundle that keeps the whole ensemble does not reproduce it."""
    bundle = Path(bundle) if bundle is not None else cfg.exp_dir / "bundle"
    manifest = _read_manifest(bundle)
    reference = cfg.exp_dir / "submission.csv"
    ensemble = cfg.exp_dir / "ensemble.json"
    if not reference.is_file() or not ensemble.is_file():
        raise FileNotFoundError(f"{reference} is missing: run `make ensemble` first")
    if file_sha256(ensemble) != manifest["ensemble_sha256"]:
        raise RuntimeError(f"{bundle} was built from another {ensemble} than the current one: run `make bundle`")
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bundle-out-") as tmp:
        out, explain = Path(tmp) / "submission.csv", Path(tmp) / "explain.json"
        tick = time.perf_counter()
        run = run_offline(bundle, cfg.data.test_root or cfg.data.image_root, cfg.data.sample_submission, out,
                          device, explain)
        wall = time.perf_counter() - tick
        if run.returncode != 0:
            raise RuntimeError(f"the bundle's predict.py failed (exit {run.returncode}):\n{run.stderr.strip()[-3000:]}")
        result = compare_submissions(out, reference, numeric_columns(manifest["submission"], manifest["classes"]))
        report = json.loads(explain.read_text())
    dropped = _budget_dropped(manifest)
    verdict = result.verdict if result.equal or not dropped else \
        f"{result.verdict}: expected, the time budget dropped {dropped}"
    log(f"[bundle-check] {'PASS' if result.equal else ('BUDGETED' if dropped else 'FAIL')}: the bundle's "
        f"submission (python -I, {report['images']} images, {report['seconds']:.1f} s on {report['device']}) "
        f"{verdict}")
    if record:
        _record(record, cfg, bundle, manifest, report, wall, verdict, load_before)
        log(f"[bundle-check] figures → {record}")
    if not result.equal and not dropped:
        raise RuntimeError(f"bundle-check: the bundle does not reproduce the ensemble: {result.verdict}")
    return result
