"""`make bench`: how much of the machine the pipeline's data path leaves to the network.

`run_bench(out_json, ...)` measures, with ONE model and resolution for every line, training at the training
batch size (`--batch-size`, train.batch_size's default 64) and prediction at the prediction batch size
(`--predict-batch-size`, tta.batch_size's default 256), as the stages run them:

1. training throughput of the real data path (images from disk or the decode cache, the
   oversampling + shuffling sampler, the demo's augmentations, `train.train_one_epoch`:
   forward, backward, optimizer step) against bare forward + backward + step on random
   tensors already in memory. pipeline / bare = training efficiency. The same loop without the
   augmentations (`augment.train` emptied) shows what they cost and what the loop itself costs;
   each augmentation's own time per image, alone, says which of them it is.
2. TTA prediction throughput (images x views per second through `tta.predict_tta`)
   against bare forward passes of the same V x B batches in memory: prediction efficiency. In float32
   and contiguous memory, as the predict stage runs (`predict.fold`: whatever `train.amp` says, out-of-fold
   and test probabilities are computed in float32).
3. the data loader alone (images/s): cold (PIL decode + the whole albumentations
   transform, what `data.ImageDataset` does) and warm (decode cache).
4. the peak resident memory of each phase (see `PeakRSS`).
5. a large-image case like the mask competition: 384x512 JPEGs resized to 224: the decode
   and resize cost per image and what the cache saves.

Every training line runs at the precision training uses (`--amp`, `--channels-last`; by default the
config's defaults, resolved for the device). `--data photos` replaces the demo's digits with generated 384x512
JPEGs, the mask competition's crop, augmentations and TTA views (the realistic GPU case: e.g.
`--device cuda --data photos --model resnet50 --image-size 224 --batch-size 128 --amp bf16`). Beside a
GPU the default variant has `train.num_workers: auto` loader workers (`bench_report`).

Load from other processes: every efficiency is PAIRED. Before each pipeline batch, one bare
step runs on in-memory tensors (its own copy of the model and optimizer) and is timed apart,
so pipeline and bare steps alternate within a second of each other and see the same load;
efficiency = sum(bare) / sum(pipeline) per run, median over `repeats` runs. Variants with
DataLoader workers cannot be paired (the workers would prefetch during the bare steps): they
are compared with a whole bare run of the same repeat. Variant order rotates between repeats.
The 1-minute load average before and after is recorded with the result.

    python -m pipeline bench [--device cuda] [--data photos] [--out outputs/bench.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import albumentations as A
import numpy as np
import torch

from pipeline.allocator import keep_freed_memory
from pipeline.config import AugmentConfig, TrainConfig, TTAConfig
from pipeline.data.cache import BatchNormalize, build_cache
from pipeline.data.transforms import load_rgb
from pipeline.device import amp_name, loader_workers, resolve_amp, resolve_channels_last
from pipeline.fileio import write_json_atomic
from pipeline.tools.bench_report import (TARGETS, bound, expected_efficiency, headline_variant, loader_variants,
                                         predict_variants, table, train_variants)
from pipeline.tools.measure import (SPREAD_TOLERANCE, Paired, PeakRSS, judge_efficiency, load1, measure, median_of,
                                    reset_hwm, rotated, summary, torch_threads)
from pipeline.tools.workloads import (PHOTO_VIEWS, bare_predict, bare_train, bench_dataset, demo_augment, demo_table,
                                      loader_only, make_loader, photo_augment, photo_table, pipeline_predict,
                                      pipeline_train, training_rows, write_large_images)

__all__ = ["run_bench", "judge_efficiency", "PeakRSS", "main", "SPREAD_TOLERANCE", "TARGETS"]

DEMO_VIEWS = ["identity", "scale_0.9", "scale_1.1"]
MASK_COMPETITION_IMAGES = 18_900   # 2700 people x 7 photos: for the per-epoch extrapolation
PREDICT_STAGE = {"amp_dtype": None, "channels_last": False}   # how predict.fold runs TTA: float32, contiguous


# ---- the phases ---------------------------------------------------------------------------------

def _step_tools(ctx, normalize: bool = True):
    """The StepTools `train.fit` would build for this run's precision: autocast dtype, GradScaler (fp16),
    channels_last, the device-side batch normalisation."""
    from pipeline.train.loop import StepTools

    dev, dtype = ctx["device"], ctx["amp_dtype"]
    return StepTools(amp_dtype=dtype, channels_last=ctx["channels_last"],
                     scaler=torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None,
                     normalize=BatchNormalize(ctx["aug"].mean, ctx["aug"].std, ctx["channels_last"]).to(dev)
                     if normalize else None)


def _model(ctx) -> torch.nn.Module:
    from pipeline.config import ModelConfig
    from pipeline.train.models import create_model

    net = create_model(ModelConfig(name=ctx["model"]), ctx["n_classes"]).to(ctx["device"])
    return net.to(memory_format=torch.channels_last) if ctx["channels_last"] else net


def _random_batch(ctx, n: int) -> torch.Tensor:
    size, dev = ctx["image_size"], ctx["device"]
    x = torch.randn(n, 3, size, size, device=dev)
    return x.contiguous(memory_format=torch.channels_last) if ctx["channels_last"] else x


def _train_phase(ctx, repeats: int, log) -> dict:
    from pipeline.config import Config
    from pipeline.train.optim import build_optimizer

    device, bs, steps = ctx["device"], ctx["batch_size"], ctx["steps"]
    n = steps * bs
    torch.manual_seed(0)
    net = _model(ctx)
    cfg = Config()
    cfg.train.batch_size = bs
    optimizer = build_optimizer(cfg, net)                         # timm AdamW, as the demo trains
    twin = copy.deepcopy(net)                                # the bare steps' own model and optimizer
    twin_opt = build_optimizer(cfg, twin)
    tools, twin_tools = _step_tools(ctx), _step_tools(ctx, normalize=False)
    loss_fn = torch.nn.CrossEntropyLoss().to(device)
    x = _random_batch(ctx, bs)
    y = torch.randint(0, ctx["n_classes"], (bs,), device=device)
    rows = training_rows(ctx["labels"], n)
    targets = ctx["labels"][rows]
    bare_train(net, optimizer, loss_fn, x, y, 3, device, tools)   # warm-up: allocator, kernels, optimizer state
    bare_train(twin, twin_opt, loss_fn, x, y, 3, device, twin_tools)
    twin_step = lambda: bare_train(twin, twin_opt, loss_fn, x, y, 1, device, twin_tools)  # noqa: E731
    variants = train_variants(device.type, ctx["workers"])
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = measure(lambda: bare_train(net, optimizer, loss_fn, x, y, steps, device, tools))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in rotated(variants, r):
            v = variants[name]
            aug = ctx["aug"] if v.augment else ctx["aug"].model_copy(update={"train": []})
            ds = bench_dataset(v.kind, ctx["paths"], rows, targets, aug, True, ctx["decoded"])
            loader = make_loader(ds, bs, device, v.workers, shuffle=True, seed=r)
            if v.workers == 0:
                loader = Paired(loader, twin_step, device)
            with torch_threads(v.threads):
                s, m = measure(lambda: pipeline_train(net, optimizer, loss_fn, loader, device, tools),
                               children=v.workers > 0)
            _record(name, s, m, loader, times, mems, effs)
        log(f"[bench] train repeat {r + 1}/{repeats} (load {load1()}): " + ", ".join(
            f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()))
    out = {"bare": summary(times["bare"], mems["bare"], n)}
    for name, v in variants.items():
        out[name] = summary(times[name], mems[name], n, {
            "efficiency": round(median_of(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
            "paired": v.workers == 0, "kind": v.kind, "workers": v.workers, "threads_set": v.threads,
            "torch_threads": v.threads or torch.get_num_threads(), "augment": v.augment})
    ctx["net"] = net
    return out


def _record(name: str, seconds: float, mem, loader, times: dict, mems: dict, effs: dict) -> None:
    """One variant's run: its time less the paired bare steps' and its efficiency against them (a
    `Paired` loader), or against the whole bare run of the same repeat (workers: unpaired)."""
    if isinstance(loader, Paired):
        seconds -= loader.bare_seconds
        effs.setdefault(name, []).append(loader.bare_seconds / seconds)
    else:
        effs.setdefault(name, []).append(times["bare"][-1] / seconds)
    times.setdefault(name, []).append(seconds)
    mems.setdefault(name, []).append(mem)


def _predict_phase(ctx, repeats: int, log) -> dict:
    from pipeline.predict.tta import parse_views

    ctx = {**ctx, **PREDICT_STAGE}
    device, bs = ctx["device"], ctx["predict_batch_size"]
    net, tools = copy.deepcopy(ctx["net"]).to(memory_format=torch.contiguous_format), _step_tools(ctx)
    views = parse_views(ctx["views"])
    n_batches = ctx["steps"]                    # as many batches as training's: as many paired steps
    n = n_batches * bs
    rows = np.arange(n) % len(ctx["paths"])
    x = _random_batch(ctx, len(views) * bs)     # bare: the same V*B batches
    images = _random_batch(ctx, bs)
    bare_predict(net, x, 2, device, tools)
    bare_step = lambda: bare_predict(net, x, 1, device, tools)  # noqa: E731
    variants = predict_variants(device.type, ctx["workers"])
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = measure(lambda: bare_predict(net, x, n_batches, device, tools))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in rotated(variants, r):
            v = variants[name]
            if v.kind == "memory":   # TTA on batches already in memory: the views' own cost, no loader
                loader = [(images, None)] * n_batches
            else:
                ds = bench_dataset(v.kind, ctx["paths"], rows, None, ctx["aug"], False, ctx["decoded"])
                loader = make_loader(ds, bs, device, v.workers, shuffle=False)
            if v.workers == 0:
                loader = Paired(loader, bare_step, device)
            s, m = measure(lambda: pipeline_predict(net, loader, views, device, tools), children=v.workers > 0)
            _record(name, s, m, loader, times, mems, effs)
        log(f"[bench] predict repeat {r + 1}/{repeats} (load {load1()}): " + ", ".join(
            f"{k} {n * len(views) / v[-1]:.0f} views/s" for k, v in times.items()))
    nv = n * len(views)     # forward passes: images x views
    out = {"views": [v.name for v in views], "bare": summary(times["bare"], mems["bare"], nv)}
    for name, v in variants.items():
        out[name] = summary(times[name], mems[name], nv, {
            "efficiency": round(median_of(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
            "paired": v.workers == 0, "kind": v.kind, "workers": v.workers,
            "images_only_per_s": round(median_of([n / s for s in times[name]]), 1)})
    return out


def _loader_phase(ctx, repeats: int, log) -> dict:
    device, bs = ctx["device"], ctx["batch_size"]
    n = ctx["steps"] * bs
    rows = training_rows(ctx["labels"], n)
    norm = BatchNormalize(ctx["aug"].mean, ctx["aug"].std).to(device)
    variants = loader_variants(device.type, ctx["workers"])
    times: dict[str, list] = {}
    mems: dict[str, list] = {}
    for r in range(repeats):
        for name, v in variants.items():
            ds = bench_dataset(v.kind, ctx["paths"], rows, ctx["labels"][rows], ctx["aug"], v.train, ctx["decoded"])
            loader = make_loader(ds, bs, device, v.workers, shuffle=v.train, seed=r)
            s, m = measure(lambda: loader_only(loader, device, norm), children=v.workers > 0)
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
    return {name: summary(times[name], mems[name], n, {"kind": v.kind, "workers": v.workers, "train": v.train})
            for name, v in variants.items()}


def _augment_phase(ctx, repeats: int, n_images: int = 256) -> dict:
    """Each `augment.train` step's own time per image, alone and at its configured p (best of `repeats`), on
    the decode cache's images: which augmentation costs what, beside the bare model's time per image."""
    from pipeline.data.transforms import finishing_steps, transform_name

    images = np.array(ctx["decoded"].array[:n_images])
    steps = finishing_steps(ctx["aug"], train=True, normalize=False)     # what follows the cache: augment.train

    def per_image_us(transform) -> float:
        transform.set_random_seed(0)
        best = float("inf")
        for _ in range(repeats):
            tick = time.perf_counter()
            for image in images:
                transform(image=image)
            best = min(best, time.perf_counter() - tick)
        return round(best / len(images) * 1e6, 1)

    return {"images": len(images), "size": ctx["image_size"],
            "steps": [{"name": transform_name(t), "p": t.p, "us_per_image": per_image_us(A.Compose([t]))}
                      for t in steps],
            "all_us_per_image": per_image_us(A.Compose(steps))}


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



def run_bench(out_json: str | Path = "outputs/bench.json", device: str = "cpu", model: str = "resnet10t",
              image_size: int = 32, batch_size: int = 64, n_images: int | None = None, steps: int | None = None,
              repeats: int = 5, large_images: int = 200, large_size: int = 224, data_dir: str | Path | None = None,
              threads: int | None = None, log: Callable[[str], None] = print, amp: str | None = None,
              channels_last: bool | str | None = None, workers: int | str = "auto", data: str = "demo",
              photos: int = 256, keep_memory: bool = True, predict_batch_size: int | None = None) -> dict:
    """Run the benchmark, print its table, write `out_json` atomically; return the result dict.

    `steps` batches of `batch_size` per timed run (default 10, or n_images // batch_size when
    only n_images is given); prediction runs as many batches of `predict_batch_size` (default
    `tta.batch_size`'s). `large_images=0` skips the large-image case. `threads` sets
    torch's intra-op threads for the whole run (default: torch's own choice, one per core).
    `amp` / `channels_last` (default: `train.amp` / `train.channels_last`'s defaults) and `workers`
    (`train.num_workers`) as in the config. `data`: 'demo' (the demo's digits) or 'photos'
    (`photos` generated 384x512 JPEGs with the mask competition's transforms).
    OpenMP's wait policy cannot change after torch is imported: set OMP_WAIT_POLICY in the
    environment to compare (it is recorded in the result). `keep_memory`: fix the C allocator's thresholds as
    training and prediction do (`pipeline.allocator`); False measures the C library's defaults (it cannot be
    undone in a process: compare in two).
    """
    if data not in ("demo", "photos"):
        raise ValueError(f"bench: data '{data}' is not one of: demo, photos")
    if predict_batch_size is not None and predict_batch_size < 1:
        raise ValueError(f"bench: predict_batch_size must be a positive number of images, got {predict_batch_size}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench: device 'cuda' requested but CUDA is not available")
    defaults = TrainConfig()
    settings = {"amp": defaults.amp if amp is None else amp,
                "channels_last": defaults.channels_last if channels_last is None else channels_last,
                "workers": workers, "data": data, "photos": photos,
                "predict_batch_size": TTAConfig().batch_size if predict_batch_size is None else predict_batch_size,
                "allocator": "thresholds fixed" if keep_memory and keep_freed_memory() else "C library defaults"}
    with torch_threads(threads):   # restored afterwards: the caller's thread count is left as it was
        return _run_bench(Path(out_json), dev, model, image_size, batch_size, n_images, steps, repeats,
                          large_images, large_size, data_dir, log, settings)


def _inputs(ctx, tmp: Path, data_dir, settings: dict, log) -> None:
    """The images, labels, transforms and views of the run, and its decode cache (built, then reused)."""
    size = ctx["image_size"]
    if settings["data"] == "photos":
        ctx["paths"], ctx["labels"] = photo_table(tmp / "photos", settings["photos"])
        ctx["aug"], ctx["views"] = photo_augment(size), PHOTO_VIEWS
    else:
        ctx["paths"], ctx["labels"] = demo_table(Path(data_dir) if data_dir else None, tmp, log)
        ctx["aug"], ctx["views"] = demo_augment(size), DEMO_VIEWS
    ctx["n_classes"] = int(ctx["labels"].max()) + 1
    crop = ctx["aug"].pre_resize_crop
    tick = time.perf_counter()
    ctx["decoded"] = build_cache(ctx["paths"], size, crop, tmp / "cache")
    build_s = time.perf_counter() - tick
    tick = time.perf_counter()
    build_cache(ctx["paths"], size, crop, tmp / "cache")
    ctx["cache_build"] = {"images": len(ctx["paths"]), "seconds": round(build_s, 3),
                          "reuse_ms": round((time.perf_counter() - tick) * 1e3, 2),
                          "mb": round(ctx["decoded"].path.stat().st_size / 2**20, 2)}


def _run_bench(out_json, dev, model, image_size, batch_size, n_images, steps, repeats, large_images,
               large_size, data_dir, log, settings) -> dict:
    if steps is None:
        steps = max(1, (n_images or 10 * batch_size) // batch_size)
    amp_dtype = resolve_amp(settings["amp"], dev)
    ctx = {"device": dev, "model": model, "image_size": image_size, "batch_size": batch_size, "steps": steps,
           "predict_batch_size": settings["predict_batch_size"],
           "amp_dtype": amp_dtype, "channels_last": resolve_channels_last(settings["channels_last"], dev),
           "workers": loader_workers(settings["workers"], dev)}
    load_before = load1()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        _inputs(ctx, tmp, data_dir, settings, log)
        headlines = {"train": headline_variant(dev.type, ctx["workers"]),
                     "predict": headline_variant(dev.type, ctx["workers"])}
        result = {"meta": {
            "model": model, "image_size": image_size, "batch_size": batch_size, "steps": steps,
            "images": steps * batch_size, "repeats": repeats,
            "predict": {"batch_size": settings["predict_batch_size"], "amp": amp_name(PREDICT_STAGE["amp_dtype"]),
                        "channels_last": PREDICT_STAGE["channels_last"]}, "device": str(dev), "data": settings["data"],
            "amp": amp_name(amp_dtype),
            "channels_last": ctx["channels_last"], "loader_workers": ctx["workers"],
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP default)"),
            "allocator": settings["allocator"],
            "torch": torch.__version__, "augment_train": ctx["aug"].train, "load_before": load_before,
            "peak_rss_method": "VmHWM reset per phase" if reset_hwm() else "sampled RSS"},
            "headline_variants": headlines}
        result["train"] = _train_phase(ctx, repeats, log)
        result["predict"] = _predict_phase(ctx, repeats, log)
        result["loader"] = _loader_phase(ctx, repeats, log)
        result["loader"]["cache_build"] = ctx["cache_build"]
        result["augment"] = _augment_phase(ctx, repeats)
        expected_efficiency(result)
        result["bound"] = bound(result)
        if large_images:
            result["large"] = _large_phase(ctx, tmp, large_images, large_size, repeats, log)
        ctx.clear()
    result["meta"]["load_after"] = load1()
    for phase, part in (("training", "train"), ("prediction", "predict")):
        judged = judge_efficiency(result[part][headlines[part]]["efficiency_all"], result["meta"]["load_before"],
                                  result["meta"]["load_after"], result["meta"]["cpus"])
        result[f"{phase}_headline"] = judged
        result[f"{phase}_efficiency"] = judged["median"] if judged["reliable"] else None
    if dev.type == "cuda":
        result["gpu_peak_mb"] = max(d.get("gpu_peak_mb", 0) for d in result["train"].values())
    result["meta"]["seconds"] = round(time.time() - started, 1)
    log(table(result))
    write_json_atomic(out_json, result)
    log(f"[bench] → {out_json}")
    return result


def _on_off(text: str) -> bool | str:
    choices = {"auto": "auto", "true": True, "on": True, "false": False, "off": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"'{text}' is not one of: auto, on, off")
    return choices[text]


def _workers(text: str) -> int | str:
    if text == "auto" or (text.isdigit()):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"'{text}' is not 'auto' or a number of loader workers")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench.json", help="result JSON (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", default="demo", choices=["demo", "photos"],
                   help="demo: the demo's digits; photos: generated 384x512 JPEGs like the mask photos")
    p.add_argument("--photos", type=int, default=256, help="how many JPEGs --data photos generates (cycled)")
    p.add_argument("--model", default="resnet10t", help="timm model name (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--predict-batch-size", type=int, default=None,
                   help="images per TTA batch (default: tta.batch_size's default)")
    p.add_argument("--steps", type=int, default=10, help="training batches per timed run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per line; medians are reported")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default=None,
                   help="autocast dtype (default: train.amp's default)")
    p.add_argument("--channels-last", type=_on_off, default=None, help="auto, on or off (default: train.channels_last's)")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="loader workers of the default variant beside a GPU (default: auto, as train.num_workers)")
    p.add_argument("--large-images", type=int, default=200, help="384x512 JPEGs for the large case; 0 skips it")
    p.add_argument("--large-size", type=int, default=224)
    p.add_argument("--data-dir", default=None, help="demo dataset folder (default data/demo, else a fresh one)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    p.add_argument("--allocator-defaults", action="store_true",
                   help="leave the C allocator's thresholds at the library's defaults (training fixes them)")

    a = p.parse_args(argv)
    run_bench(a.out, device=a.device, model=a.model, image_size=a.image_size, batch_size=a.batch_size,
              steps=a.steps, repeats=a.repeats, large_images=a.large_images, large_size=a.large_size,
              data_dir=a.data_dir, threads=a.threads, amp=a.amp, channels_last=a.channels_last, workers=a.workers,
              data=a.data, photos=a.photos, keep_memory=not a.allocator_defaults,
              predict_batch_size=a.predict_batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
