"""`make bench`: how much of the machine the pipeline's data path leaves to the network.

`run_bench(out_json, ...)` measures, with ONE model, batch size and resolution for every line:

1. training throughput of the real data path (images from disk or the decode cache, the
   oversampling + shuffling sampler, the demo's augmentations, `train.train_one_epoch`:
   forward, backward, optimizer step) against bare forward + backward + step on random
   tensors already in memory. pipeline / bare = training efficiency.
2. TTA prediction throughput (images x views per second through `tta.predict_tta`)
   against bare forward passes of the same V x B batches in memory: prediction efficiency.
3. the data loader alone (images/s): cold (PIL decode + the whole albumentations
   transform, what `data.ImageDataset` does) and warm (decode cache).
4. the peak resident memory of each phase (see `PeakRSS`).
5. a large-image case like the mask competition: 384x512 JPEGs resized to 224: the decode
   and resize cost per image and what the cache saves.

Load from other processes: every efficiency is PAIRED. Before each pipeline batch, one bare
step runs on in-memory tensors (its own copy of the model and optimizer) and is timed apart,
so pipeline and bare steps alternate within a second of each other and see the same load;
efficiency = sum(bare) / sum(pipeline) per run, median over `repeats` runs. Variants with
DataLoader workers cannot be paired (the workers would prefetch during the bare steps): they
are compared with a whole bare run of the same repeat. Variant order rotates between repeats.
The 1-minute load average before and after is recorded with the result.

    python -m pipeline.tools.bench [--device cuda] [--out outputs/bench.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.config import AugmentConfig
from pipeline.data.cache import BatchNormalize, build_cache
from pipeline.data.transforms import load_rgb
from pipeline.fileio import write_json_atomic
from pipeline.tools.measure import (SPREAD_TOLERANCE, Paired, PeakRSS, judge_efficiency, load1, measure, median_of,
                                    reset_hwm, rotated, summary, torch_threads)
from pipeline.tools.workloads import (bare_predict, bare_train, bench_dataset, demo_augment, demo_table,
                                      loader_only, make_loader, pipeline_predict, pipeline_train, training_rows,
                                      write_large_images)

__all__ = ["run_bench", "judge_efficiency", "PeakRSS", "main", "SPREAD_TOLERANCE"]

DEMO_VIEWS = ["identity", "scale_0.9", "scale_1.1"]
MASK_COMPETITION_IMAGES = 18_900   # 2700 people x 7 photos: for the per-epoch extrapolation

TRAIN_VARIANTS = {
    # name: (dataset kind, DataLoader workers, torch threads during the run (None: unchanged))
    "disk": ("disk", 0, None),             # data.cache: false (decode + transform every epoch)
    "cache": ("cache", 0, None),           # decode cache, albumentations normalises per image
    "cache_u8": ("u8", 0, None),           # train.py's default: cache, uint8 batches normalised as one op
    "cache_u8_w1": ("u8", 1, None),        # ... with one worker process beside torch's threads
    "cache_u8_w1_t1": ("u8", 1, 1),        # ... one worker, torch on the other core only
}
PREDICT_VARIANTS = {"memory": "memory", "disk": "disk", "cache": "cache", "cache_u8": "u8"}
LOADER_VARIANTS = {  # name: (kind, train transform?)
    "cold_train": ("disk", True), "warm_train": ("cache", True), "warm_train_u8": ("u8", True),
    "cold_eval": ("disk", False), "warm_eval_u8": ("u8", False),
}


# ---- the phases ---------------------------------------------------------------------------------

def _train_phase(ctx, repeats: int, log) -> dict:
    import copy

    from pipeline.config import Config, ModelConfig
    from pipeline.train.models import create_model
    from pipeline.train.optim import build_optimizer

    device, bs, steps, size = ctx["device"], ctx["batch_size"], ctx["steps"], ctx["image_size"]
    n = steps * bs
    torch.manual_seed(0)
    net = create_model(ModelConfig(name=ctx["model"]), ctx["n_classes"]).to(device)
    cfg = Config()
    cfg.train.batch_size = bs
    optimizer = build_optimizer(cfg, net)                         # timm AdamW, as the demo trains
    twin = copy.deepcopy(net)                                # the bare steps' own model and optimizer
    twin_opt = build_optimizer(cfg, twin)
    loss_fn = torch.nn.CrossEntropyLoss().to(device)
    normalize = BatchNormalize(ctx["aug"].mean, ctx["aug"].std).to(device)
    x = torch.randn(bs, 3, size, size, device=device)
    y = torch.randint(0, ctx["n_classes"], (bs,), device=device)
    rows = training_rows(ctx["labels"], n)
    targets = ctx["labels"][rows]
    bare_train(net, optimizer, loss_fn, x, y, 3, device)   # warm-up: allocator, kernels, optimizer state
    bare_train(twin, twin_opt, loss_fn, x, y, 3, device)
    twin_step = lambda: bare_train(twin, twin_opt, loss_fn, x, y, 1, device)  # noqa: E731
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = measure(lambda: bare_train(net, optimizer, loss_fn, x, y, steps, device))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in rotated(TRAIN_VARIANTS, r):
            kind, workers, threads = TRAIN_VARIANTS[name]
            ds = bench_dataset(kind, ctx["paths"], rows, targets, ctx["aug"], True, ctx["decoded"])
            loader = make_loader(ds, bs, device, workers, shuffle=True, seed=r)
            if workers == 0:
                loader = Paired(loader, twin_step, device)
            with torch_threads(threads):
                s, m = measure(lambda: pipeline_train(net, optimizer, loss_fn, loader, device,
                                                        normalize if kind == "u8" else None),
                                children=workers > 0)
            if workers == 0:
                s -= loader.bare_seconds
                effs.setdefault(name, []).append(loader.bare_seconds / s)
            else:
                effs.setdefault(name, []).append(times["bare"][-1] / s)
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
        log(f"[bench] train repeat {r + 1}/{repeats} (load {load1()}): " + ", ".join(
            f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()))
    out = {"bare": summary(times["bare"], mems["bare"], n)}
    for name, (kind, workers, threads) in TRAIN_VARIANTS.items():
        out[name] = summary(times[name], mems[name], n, {
            "efficiency": round(median_of(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
            "paired": workers == 0, "workers": workers, "torch_threads": threads or torch.get_num_threads()})
    ctx["net"] = net
    return out


def _predict_phase(ctx, repeats: int, log) -> dict:
    from pipeline.predict.tta import parse_views

    device, bs, size = ctx["device"], ctx["batch_size"], ctx["image_size"]
    net = ctx["net"]
    views = parse_views(ctx["views"])
    n_batches = ctx["steps"]
    n = n_batches * bs
    rows = np.arange(n) % len(ctx["paths"])
    x = torch.randn(len(views) * bs, 3, size, size, device=device)     # bare: the same V*B batches
    images = torch.randn(bs, 3, size, size, device=device)
    norm = BatchNormalize(ctx["aug"].mean, ctx["aug"].std).to(device)
    bare_predict(net, x, 2, device)
    bare_step = lambda: bare_predict(net, x, 1, device)  # noqa: E731
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = measure(lambda: bare_predict(net, x, n_batches, device))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in rotated(PREDICT_VARIANTS, r):
            kind = PREDICT_VARIANTS[name]
            if kind == "memory":   # TTA on batches already in memory: the views' own cost, no loader
                loader = [(images, None)] * n_batches
            else:
                ds = bench_dataset(kind, ctx["paths"], rows, None, ctx["aug"], False, ctx["decoded"])
                loader = make_loader(ds, bs, device, 0, shuffle=False)
            loader = Paired(loader, bare_step, device)
            s, m = measure(lambda: pipeline_predict(net, loader, views, device, norm))
            s -= loader.bare_seconds
            effs.setdefault(name, []).append(loader.bare_seconds / s)
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
        log(f"[bench] predict repeat {r + 1}/{repeats} (load {load1()}): " + ", ".join(
            f"{k} {n * len(views) / v[-1]:.0f} views/s" for k, v in times.items()))
    nv = n * len(views)     # forward passes: images x views
    out = {"views": [v.name for v in views], "bare": summary(times["bare"], mems["bare"], nv)}
    for name in PREDICT_VARIANTS:
        out[name] = summary(times[name], mems[name], nv, {
            "efficiency": round(median_of(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
            "paired": True, "images_only_per_s": round(median_of([n / s for s in times[name]]), 1)})
    return out


def _loader_phase(ctx, repeats: int, log) -> dict:
    device, bs = ctx["device"], ctx["batch_size"]
    n = ctx["steps"] * bs
    rows = training_rows(ctx["labels"], n)
    norm = BatchNormalize(ctx["aug"].mean, ctx["aug"].std).to(device)
    times: dict[str, list] = {}
    mems: dict[str, list] = {}
    for r in range(repeats):
        for name, (kind, train) in LOADER_VARIANTS.items():
            ds = bench_dataset(kind, ctx["paths"], rows, ctx["labels"][rows], ctx["aug"], train, ctx["decoded"])
            loader = make_loader(ds, bs, device, 0, shuffle=train, seed=r)
            s, m = measure(lambda: loader_only(loader, device, norm))
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
    out = {name: summary(times[name], mems[name], n) for name in LOADER_VARIANTS}
    out["cache_build"] = ctx["cache_build"]
    return out


def _large_phase(ctx, tmp: Path, n_images: int, size: int, repeats: int, log) -> dict:
    from pipeline.data.cache import geometry_transform

    device, bs = ctx["device"], ctx["batch_size"]
    paths = write_large_images(tmp / "large", n_images)
    aug = AugmentConfig(image_size=size, train=[])
    geom = geometry_transform(size)
    decode_ms, resize_ms = [], []
    for _ in range(repeats):
        tick = time.perf_counter()
        images = [load_rgb(p) for p in paths]
        decode_ms.append((time.perf_counter() - tick) / n_images * 1e3)
        tick = time.perf_counter()
        for im in images:
            geom(image=im)
        resize_ms.append((time.perf_counter() - tick) / n_images * 1e3)
        del images
    with PeakRSS() as mem_build:
        decoded = build_cache(paths, size, None, tmp / "large_cache")
    build_s = decoded.seconds
    single = build_cache(paths, size, None, tmp / "large_cache_1thread", n_jobs=1)
    times: dict[str, list] = {}
    mems: dict[str, list] = {}
    rows = np.arange(n_images)
    norm = BatchNormalize(aug.mean, aug.std).to(device)
    for _ in range(repeats):
        for name, kind in (("cold", "disk"), ("warm", "cache"), ("warm_u8", "u8")):
            ds = bench_dataset(kind, paths, rows, None, aug, False, decoded)
            loader = make_loader(ds, bs, device, 0, shuffle=False)
            s, m = measure(lambda: loader_only(loader, device, norm))
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
    loaders = {name: summary(times[name], mems[name], n_images) for name in times}
    cold_ms = 1e3 / loaders["cold"]["images_per_s"]
    # On a CPU device at 224 px the batch normalisation is memory-bound torch work and per-image
    # Normalize (cv2 LUT) can be faster; count the cache's saving with the better of the two.
    warm_ms = 1e3 / max(loaders["warm_u8"]["images_per_s"], loaders["warm"]["images_per_s"])
    saved_ms = cold_ms - warm_ms
    out = {
        "images": n_images, "source": "384x512 (w x h) JPEG, quality 90, smooth colour fields + noise",
        "file_kb_mean": round(sum(os.path.getsize(p) for p in paths) / n_images / 1024, 1),
        "size": size,
        "decode_ms_per_image": round(median_of(decode_ms), 3),
        "resize_ms_per_image": round(median_of(resize_ms), 3),
        "cache_build_s": round(build_s, 3),
        "cache_build_s_1thread": round(single.seconds, 3),
        "cache_build_peak_rss_delta_mb": round(mem_build.delta_mb, 1),
        "cache_mb": round(decoded.path.stat().st_size / 2**20, 2),
        "loader": loaders,
        "cold_ms_per_image": round(cold_ms, 3),
        "warm_ms_per_image": round(warm_ms, 3),
        "saved_ms_per_image": round(saved_ms, 3),
        "saved_s_per_epoch_at_18900_images": round(saved_ms * MASK_COMPETITION_IMAGES / 1e3, 1),
        "cache_gb_at_18900_images": round(MASK_COMPETITION_IMAGES * size * size * 3 / 1e9, 2),
    }
    del decoded, single
    return out


def _expected_efficiency(result: dict) -> None:
    """Cross-check, robust to load bursts: with the loader in the main process, a step costs the
    bare step plus the loader's time for one batch, so efficiency ~ t_bare / (t_bare + t_loader)."""
    bare = 1 / result["train"]["bare"]["images_per_s"]
    for variant, loader in (("disk", "cold_train"), ("cache", "warm_train"), ("cache_u8", "warm_train_u8")):
        data = 1 / result["loader"][loader]["images_per_s"]
        result["train"][variant]["efficiency_expected_from_loader"] = round(bare / (bare + data), 3)


# ---- the report ---------------------------------------------------------------------------------

def _table(result: dict) -> str:
    """The result as the table `make bench` prints: one line per measured variant, then the headlines."""
    m = result["meta"]
    lines = [f"bench: {m['model']} {m['image_size']}x{m['image_size']}, batch {m['batch_size']}, "
             f"{m['steps']} batches ({m['images']} images) per run, on {m['device']} "
             f"({m['torch_threads']} torch threads, {m['cpus']} CPUs, OMP_WAIT_POLICY {m['omp_wait_policy']}), "
             f"median of {m['repeats']}; "
             f"load average (1 min) {m['load_before']} → {m['load_after']}",
             f"{'phase':<52}{'images/s':>10}{'efficiency':>12}{'expected':>10}{'peak RSS MB':>13}{'+MB':>8}"]

    def row(label, d, rate_key="images_per_s"):
        eff = f"{d['efficiency']:.3f}" if "efficiency" in d else ""
        expected = d.get("efficiency_expected_from_loader")
        expected = f"{expected:.3f}" if expected is not None else ""
        workers = f"  (+workers {d['workers_rss_mb']:.0f})" if "workers_rss_mb" in d else ""
        lines.append(f"{label:<52}{d[rate_key]:>10.1f}{eff:>12}{expected:>10}{d['peak_rss_mb']:>13.0f}"
                     f"{d['peak_rss_delta_mb']:>8.0f}{workers}")

    t = result["train"]
    row("train  bare fwd+bwd+step, in-memory", t["bare"])
    row("train  disk: decode+albumentations (cache off)", t["disk"])
    row("train  cache warm, per-image Normalize", t["cache"])
    row("train  cache warm, uint8 + batch Normalize (default)", t["cache_u8"])
    row("train  cache warm, uint8, 1 worker", t["cache_u8_w1"])
    row("train  cache warm, uint8, 1 worker, 1 thread", t["cache_u8_w1_t1"])
    p = result["predict"]
    views = "+".join(p["views"])
    row(f"TTA    bare forward ({len(p['views'])} views), in-memory", p["bare"])
    lines.append(f"TTA views: {views}; images/s below counts every view (images x views)")
    row("TTA    in-memory batches (the views' own cost)", p["memory"])
    row("TTA    disk: decode + transform (cache off)", p["disk"])
    row("TTA    cache warm, per-image Normalize", p["cache"])
    row("TTA    cache warm, uint8 + batch Normalize (default)", p["cache_u8"])
    lo = result["loader"]
    for name, label in (("cold_train", "loader cold (decode + aug + normalise)"),
                        ("warm_train", "loader warm (cache + aug + normalise)"),
                        ("warm_train_u8", "loader warm (cache + aug, uint8, batch norm.)"),
                        ("cold_eval", "loader cold, eval transform"),
                        ("warm_eval_u8", "loader warm, eval, uint8 + batch norm.")):
        row(label, lo[name])
    cb = lo["cache_build"]
    lines.append(f"cache build (demo, {cb['images']} images at {m['image_size']}px): {cb['seconds']:.2f}s, "
                 f"{cb['mb']:.1f} MB on disk; reuse check {cb['reuse_ms']:.1f} ms")
    lines.extend(_large_lines(result.get("large")))
    lines.append("expected = bare / (bare + the loader's own time per batch): the efficiency the loader "
                 "alone allows, less sensitive to load bursts than the measured ratio")
    for phase, target in (("training", 0.85), ("prediction", 0.90)):
        judged = result[f"{phase}_headline"]
        if judged["reliable"]:
            lines.append(f"headline: {phase} efficiency {judged['headline']} (target >= {target:.2f}), cache warm")
        else:
            lines.append(f"headline: {phase} efficiency UNRELIABLE, {judged['why']}")
    return "\n".join(lines)


def _large_lines(lg: dict | None) -> list[str]:
    """The table's two lines on the large-image case (none when it was skipped)."""
    if not lg:
        return []
    return [f"large: {lg['images']} JPEGs 384x512 → {lg['size']}: decode {lg['decode_ms_per_image']:.2f} ms + "
            f"resize {lg['resize_ms_per_image']:.2f} ms per image; loader cold "
            f"{lg['loader']['cold']['images_per_s']:.0f}/s, warm {lg['loader']['warm_u8']['images_per_s']:.0f}/s "
            f"(uint8) / {lg['loader']['warm']['images_per_s']:.0f}/s (normalised); cache build "
            f"{lg['cache_build_s']:.2f}s ({lg['cache_build_s_1thread']:.2f}s on 1 thread), {lg['cache_mb']:.0f} MB",
            f"large: the cache saves {lg['saved_ms_per_image']:.2f} ms per image per epoch = "
            f"{lg['saved_s_per_epoch_at_18900_images']:.0f} s per epoch at 18,900 images "
            f"(cache {lg['cache_gb_at_18900_images']:.2f} GB)"]


def run_bench(out_json: str | Path = "outputs/bench.json", device: str = "cpu", model: str = "resnet10t",
              image_size: int = 32, batch_size: int = 64, n_images: int | None = None, steps: int | None = None,
              repeats: int = 5, large_images: int = 200, large_size: int = 224, data_dir: str | Path | None = None,
              threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark, print its table, write `out_json` atomically; return the result dict.

    `steps` batches of `batch_size` per timed run (default 10, or n_images // batch_size when
    only n_images is given). `large_images=0` skips the large-image case. `threads` sets
    torch's intra-op threads for the whole run (default: torch's own choice, one per core).
    OpenMP's wait policy cannot change after torch is imported: set OMP_WAIT_POLICY in the
    environment to compare (it is recorded in the result).
    """
    with torch_threads(threads):   # restored afterwards: the caller's thread count is left as it was
        return _run_bench(Path(out_json), device, model, image_size, batch_size, n_images, steps, repeats,
                          large_images, large_size, data_dir, log)


def _run_bench(out_json, device, model, image_size, batch_size, n_images, steps, repeats, large_images,
               large_size, data_dir, log) -> dict:
    if steps is None:
        steps = max(1, (n_images or 10 * batch_size) // batch_size)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench: device 'cuda' requested but CUDA is not available")
    load_before = load1()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths, labels = demo_table(Path(data_dir) if data_dir else None, tmp, log)
        aug = demo_augment(image_size)
        tick = time.perf_counter()
        decoded = build_cache(paths, image_size, aug.pre_resize_crop, tmp / "cache")
        build_s = time.perf_counter() - tick
        tick = time.perf_counter()
        build_cache(paths, image_size, aug.pre_resize_crop, tmp / "cache")
        reuse_ms = (time.perf_counter() - tick) * 1e3
        ctx = {"device": dev, "model": model, "image_size": image_size, "batch_size": batch_size,
               "steps": steps, "paths": paths, "labels": labels, "n_classes": int(labels.max()) + 1,
               "aug": aug, "views": DEMO_VIEWS, "decoded": decoded,
               "cache_build": {"images": len(paths), "seconds": round(build_s, 3), "reuse_ms": round(reuse_ms, 2),
                               "mb": round(decoded.path.stat().st_size / 2**20, 2)}}
        result = {"meta": {
            "model": model, "image_size": image_size, "batch_size": batch_size, "steps": steps,
            "images": steps * batch_size, "repeats": repeats, "device": str(dev),
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP default)"),
            "torch": torch.__version__, "augment_train": aug.train, "load_before": load_before,
            "peak_rss_method": "VmHWM reset per phase" if reset_hwm() else "sampled RSS"}}
        result["train"] = _train_phase(ctx, repeats, log)
        result["predict"] = _predict_phase(ctx, repeats, log)
        result["loader"] = _loader_phase(ctx, repeats, log)
        _expected_efficiency(result)
        if large_images:
            result["large"] = _large_phase(ctx, tmp, large_images, large_size, repeats, log)
        del ctx, decoded
    result["meta"]["load_after"] = load1()
    for phase, part in (("training", "train"), ("prediction", "predict")):
        judged = judge_efficiency(result[part]["cache_u8"]["efficiency_all"], result["meta"]["load_before"],
                                  result["meta"]["load_after"], result["meta"]["cpus"])
        result[f"{phase}_headline"] = judged
        result[f"{phase}_efficiency"] = judged["median"] if judged["reliable"] else None
    result["meta"]["seconds"] = round(time.time() - started, 1)
    log(_table(result))
    write_json_atomic(out_json, result)
    log(f"[bench] → {out_json}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench.json", help="result JSON (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="resnet10t", help="timm model name (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="batches per timed run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per line; medians are reported")
    p.add_argument("--large-images", type=int, default=200, help="384x512 JPEGs for the large case; 0 skips it")
    p.add_argument("--large-size", type=int, default=224)
    p.add_argument("--data-dir", default=None, help="demo dataset folder (default data/demo, else a fresh one)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")

    a = p.parse_args(argv)
    run_bench(a.out, device=a.device, model=a.model, image_size=a.image_size, batch_size=a.batch_size,
              steps=a.steps, repeats=a.repeats, large_images=a.large_images, large_size=a.large_size,
              data_dir=a.data_dir, threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
