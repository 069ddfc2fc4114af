"""Seconds per 1,000 images of each fold on each view, measured at build time with the bundle's own code.

The bundle's predict.py is timed, not the pipeline: its decoding and normalising (per 1,000 images, once
whatever the folds), loading each fold's models, and each fold's models on each view alone (per 1,000
images, after one warm-up batch, the fastest of a few repeats: another process's work only ever slows a
run down, so the minimum is the least disturbed). The record says on which machine and device, and under
what load.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from pipeline.bundle import predict_template as template
from pipeline.machine import cpu_name

__all__ = ["measure_timing", "machine", "REPEATS"]

REPEATS = 3


def machine(device: torch.device) -> dict:
    """Where a timing was measured: the device, the CPU, the threads, the load average at the time."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"device": str(device), "gpu": gpu, "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in load] if load else None,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decoded_batches(paths: list, manifest: dict, batch_size: int) -> tuple[list, float]:
    image = manifest["image"]
    lut = np.asarray(image["lut"], dtype=np.float32)
    tick = time.perf_counter()
    with template.decode_pool() as pool:
        batches = [template.normalize(template.decode_batch(paths[i:i + batch_size], image["size"], image["crop"],
                                                            pool), lut)
                   for i in range(0, len(paths), batch_size)]
    return batches, time.perf_counter() - tick


def _fold_on_view(members: list, batches: list, view: str, device: torch.device) -> float:
    views = [template.view_function(view)]
    for member in members:                       # warm-up: first calls allocate and pick kernels
        template.view_probs(member["model"], batches[0].to(device), views)
    fastest = float("inf")
    for _ in range(REPEATS):
        _sync(device)
        tick = time.perf_counter()
        for x in batches:
            x = x.to(device)
            for member in members:
                template.view_probs(member["model"], x, views)
        _sync(device)
        fastest = min(fastest, time.perf_counter() - tick)
    return fastest


def measure_timing(folder, manifest: dict, decisions: dict, image_paths: list, device: torch.device,
                   batch_size: int, log=print) -> dict:
    """bundle.json's ``timing``: the seconds of the bundle in `folder` on `image_paths` (a few are enough)."""
    paths = list(image_paths)
    if not paths:
        raise ValueError("no images to time the bundle on")
    batches, decode_seconds = _decoded_batches(paths, manifest, batch_size)
    per_1000 = 1000 / len(paths)
    load, fold_view = {}, {}
    for fold in manifest["folds"]:
        tick = time.perf_counter()
        members = template.load_members(folder, {**manifest, "folds": [fold]}, device)
        load[fold["fold"]] = round(time.perf_counter() - tick, 4)
        fold_view[fold["fold"]] = {v: round(_fold_on_view(members, batches, v, device)
                                            * per_1000, 4) for v in decisions["tta"]["views"]}
        del members
    record = {"measured_on": machine(device), "images": len(paths), "batch_size": batch_size,
              "decode_per_1000": round(decode_seconds * per_1000, 4), "load": load, "fold_view_per_1000": fold_view,
              "note": "measured at build time on this machine with the bundle's own code; another machine, "
                      "device or load takes another time"}
    total = record["decode_per_1000"] + sum(sum(v.values()) for v in fold_view.values())
    log(f"[bundle] timed on {len(paths)} images on {device}: about {total:.1f} s per 1,000 images for every fold "
        f"and view (load average {record['measured_on']['load_average']})")
    return record
