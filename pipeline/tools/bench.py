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
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.data.cache import BatchNormalize, CachedImageDataset, build_cache, cached_transform, make_dataset
from pipeline.config import AugmentConfig, load_config
from pipeline.data.transforms import load_rgb
from pipeline.data.tables import read_train_table
from pipeline.fileio import write_json_atomic

__all__ = ["run_bench", "judge_efficiency", "PeakRSS", "main", "SPREAD_TOLERANCE"]

REPO = Path(__file__).resolve().parents[2]
DEMO_AUGMENT = [  # configs/demo.yaml's augment.train, used when that file is not at hand
    {"Affine": {"translate_px": [-2, 2], "scale": [0.9, 1.1], "rotate": [-10, 10], "p": 0.7}},
    {"RandomBrightnessContrast": {"p": 0.3}},
]
DEMO_VIEWS = ["identity", "scale_0.9", "scale_1.1"]
MASK_COMPETITION_IMAGES = 18_900   # 2700 people x 7 photos: for the per-epoch extrapolation


# ---- measuring ----------------------------------------------------------------------------------

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


def _reset_hwm() -> bool:
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
        self._exact = _reset_hwm()
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
                    total = 0
                    for child in self._proc.children(recursive=True):
                        try:
                            total += child.memory_info().rss
                        except psutil.Error:
                            pass
                    self._child_peak = max(self._child_peak, total)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _threads(n: int | None):
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


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---- data ---------------------------------------------------------------------------------------

def _demo_augment(image_size: int) -> AugmentConfig:
    demo = REPO / "configs" / "demo.yaml"
    if demo.is_file():
        aug = load_config(demo).augment
        aug.image_size = image_size
        return aug
    return AugmentConfig(image_size=image_size, train=DEMO_AUGMENT)


def _demo_table(data_dir: Path | None, tmp: Path, log) -> tuple[list[str], np.ndarray]:
    """(image paths, integer labels) of the demo's training set (data/demo, else a fresh copy)."""
    import pandas as pd
    from pipeline.competitions.demo import make_demo_dataset

    if data_dir is None:
        data_dir = REPO / "data" / "demo"
        if not (data_dir / "train.csv").is_file():
            log(f"[bench] writing the demo dataset to {tmp / 'demo'}")
            data_dir = make_demo_dataset(tmp / "demo", seed=0)["root"]
    demo_yaml = REPO / "configs" / "demo.yaml"
    cfg = load_config(demo_yaml if demo_yaml.is_file() else None,
                      {"data": {"train_csv": str(Path(data_dir) / "train.csv"), "image_root": str(data_dir)}})
    table = read_train_table(cfg)
    labels = pd.factorize(table["label"], sort=True)[0]
    return table["image"].tolist(), labels


def _training_rows(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows drawn like a fold's training loader: oversampled (ratio 0.5, as the demo), then shuffled."""
    from pipeline.data.sampling import oversample_indices

    rows = oversample_indices(labels, 0.5, seed)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(rows)
    if len(rows) < n:
        rows = np.resize(rows, n)
    return rows[:n]


def _make_loader(dataset, batch_size: int, device, workers: int, shuffle: bool, seed: int = 0):
    from pipeline.device import seed_worker

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker if workers else None, persistent_workers=False)


def _dataset(kind: str, paths, rows, targets, aug, train: bool, decoded):
    """kind: 'disk' and 'u8' are what training builds with `data.cache` off and on (`cache.make_dataset`);
    'cache' is the cache with albumentations' per-image Normalize (float items), for comparison."""
    if kind == "cache":
        ds = CachedImageDataset(decoded, rows, targets, cached_transform(aug, train, normalize=True))
    else:
        ds = make_dataset(aug, paths, rows, targets, train=train, decoded=decoded if kind == "u8" else None)
    ds.transform.set_random_seed(0)
    return ds


# ---- the phases ---------------------------------------------------------------------------------

def _bare_train(model, optimizer, loss_fn, x, y, steps: int, device) -> float:
    """Seconds for `steps` forward+backward+step on in-memory tensors."""
    model.train()
    _sync(device)
    tick = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()
    _sync(device)
    return time.perf_counter() - tick


def _pipeline_train(model, optimizer, loss_fn, loader, device, normalize=None) -> float:
    """Seconds for one `train.train_one_epoch` over `loader` (the real training loop; uint8
    batches are normalised by `StepTools.normalize`, as `train.fit` does with the cache)."""
    from pipeline.train.loop import StepTools, train_one_epoch

    _sync(device)
    tick = time.perf_counter()
    train_one_epoch(model, loader, optimizer, loss_fn, device, 0, StepTools(normalize=normalize))
    _sync(device)
    return time.perf_counter() - tick


def _bare_predict(model, x, n_batches: int, device) -> float:
    model.eval()
    _sync(device)
    tick = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            model(x)
    _sync(device)
    return time.perf_counter() - tick


def _pipeline_predict(model, loader, views, device, normalize) -> float:
    from pipeline.predict.tta import predict_tta

    model.eval()
    _sync(device)
    tick = time.perf_counter()
    out = [predict_tta(model, normalize(images.to(device, non_blocking=True)), views, "mean").float().cpu()
           for images, _ in loader]
    torch.cat(out)
    _sync(device)
    return time.perf_counter() - tick


def _loader_only(loader, device, normalize) -> float:
    """Seconds to get every batch of `loader` onto `device`, normalised (uint8 batches: by `normalize`)."""
    tick = time.perf_counter()
    for images, _ in loader:
        normalize(images.to(device, non_blocking=True))
    _sync(device)
    return time.perf_counter() - tick


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _measure(fn: Callable[[], float], children: bool = False) -> tuple[float, PeakRSS]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS(children=children) as mem:
        seconds = fn()
    mem.gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return seconds, mem


def _summary(seconds: list[float], mems: list[PeakRSS], n: int, extra: dict | None = None) -> dict:
    rates = [n / s for s in seconds]
    out = {"images_per_s": round(_median(rates), 1), "images_per_s_all": [round(r, 1) for r in rates],
           "seconds_median": round(_median(seconds), 4),
           "peak_rss_mb": round(max(m.peak_mb for m in mems), 1),
           "peak_rss_delta_mb": round(max(m.delta_mb for m in mems), 1)}
    if any(m.workers_mb for m in mems):
        out["workers_rss_mb"] = round(max(m.workers_mb for m in mems), 1)
    if any(m.gpu_mb for m in mems):
        out["gpu_peak_mb"] = round(max(m.gpu_mb for m in mems), 1)
    out.update(extra or {})
    return out


class _Paired:
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
            _sync(self.device)
            tick = time.perf_counter()
            self.bare_step()
            _sync(self.device)
            self.bare_seconds += time.perf_counter() - tick
            yield batch


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


def _rotated(names, r: int) -> list:
    names = list(names)
    return names[r % len(names):] + names[:r % len(names)]


def _train_phase(ctx, repeats: int, log) -> dict:
    import copy

    from pipeline.config import Config, ModelConfig
    from pipeline.train.models import create_model
    from pipeline.train.loop import build_optimizer

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
    rows = _training_rows(ctx["labels"], n)
    targets = ctx["labels"][rows]
    _bare_train(net, optimizer, loss_fn, x, y, 3, device)   # warm-up: allocator, kernels, optimizer state
    _bare_train(twin, twin_opt, loss_fn, x, y, 3, device)
    twin_step = lambda: _bare_train(twin, twin_opt, loss_fn, x, y, 1, device)  # noqa: E731
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = _measure(lambda: _bare_train(net, optimizer, loss_fn, x, y, steps, device))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in _rotated(TRAIN_VARIANTS, r):
            kind, workers, threads = TRAIN_VARIANTS[name]
            ds = _dataset(kind, ctx["paths"], rows, targets, ctx["aug"], True, ctx["decoded"])
            loader = _make_loader(ds, bs, device, workers, shuffle=True, seed=r)
            if workers == 0:
                loader = _Paired(loader, twin_step, device)
            with _threads(threads):
                s, m = _measure(lambda: _pipeline_train(net, optimizer, loss_fn, loader, device,
                                                        normalize if kind == "u8" else None),
                                children=workers > 0)
            if workers == 0:
                s -= loader.bare_seconds
                effs.setdefault(name, []).append(loader.bare_seconds / s)
            else:
                effs.setdefault(name, []).append(times["bare"][-1] / s)
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
        log(f"[bench] train repeat {r + 1}/{repeats} (load {_load1()}): " + ", ".join(
            f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()))
    out = {"bare": _summary(times["bare"], mems["bare"], n)}
    for name, (kind, workers, threads) in TRAIN_VARIANTS.items():
        out[name] = _summary(times[name], mems[name], n, {
            "efficiency": round(_median(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
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
    _bare_predict(net, x, 2, device)
    bare_step = lambda: _bare_predict(net, x, 1, device)  # noqa: E731
    times: dict[str, list] = {"bare": []}
    mems: dict[str, list] = {"bare": []}
    effs: dict[str, list] = {}
    for r in range(repeats):
        s, m = _measure(lambda: _bare_predict(net, x, n_batches, device))
        times["bare"].append(s)
        mems["bare"].append(m)
        for name in _rotated(PREDICT_VARIANTS, r):
            kind = PREDICT_VARIANTS[name]
            if kind == "memory":   # TTA on batches already in memory: the views' own cost, no loader
                loader = [(images, None)] * n_batches
            else:
                ds = _dataset(kind, ctx["paths"], rows, None, ctx["aug"], False, ctx["decoded"])
                loader = _make_loader(ds, bs, device, 0, shuffle=False)
            loader = _Paired(loader, bare_step, device)
            s, m = _measure(lambda: _pipeline_predict(net, loader, views, device, norm))
            s -= loader.bare_seconds
            effs.setdefault(name, []).append(loader.bare_seconds / s)
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
        log(f"[bench] predict repeat {r + 1}/{repeats} (load {_load1()}): " + ", ".join(
            f"{k} {n * len(views) / v[-1]:.0f} views/s" for k, v in times.items()))
    nv = n * len(views)     # forward passes: images x views
    out = {"views": [v.name for v in views], "bare": _summary(times["bare"], mems["bare"], nv)}
    for name in PREDICT_VARIANTS:
        out[name] = _summary(times[name], mems[name], nv, {
            "efficiency": round(_median(effs[name]), 3), "efficiency_all": [round(e, 3) for e in effs[name]],
            "paired": True, "images_only_per_s": round(_median([n / s for s in times[name]]), 1)})
    return out


def _loader_phase(ctx, repeats: int, log) -> dict:
    device, bs = ctx["device"], ctx["batch_size"]
    n = ctx["steps"] * bs
    rows = _training_rows(ctx["labels"], n)
    norm = BatchNormalize(ctx["aug"].mean, ctx["aug"].std).to(device)
    times: dict[str, list] = {}
    mems: dict[str, list] = {}
    for r in range(repeats):
        for name, (kind, train) in LOADER_VARIANTS.items():
            ds = _dataset(kind, ctx["paths"], rows, ctx["labels"][rows], ctx["aug"], train, ctx["decoded"])
            loader = _make_loader(ds, bs, device, 0, shuffle=train, seed=r)
            s, m = _measure(lambda: _loader_only(loader, device, norm))
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
    out = {name: _summary(times[name], mems[name], n) for name in LOADER_VARIANTS}
    out["cache_build"] = ctx["cache_build"]
    return out


def _write_large_images(folder: Path, n: int, width: int = 384, height: int = 512, seed: int = 0) -> list[str]:
    """Photo-like JPEGs: smooth random colour fields plus sensor-like noise (quality 90)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8))
        smooth = np.asarray(base.resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def _large_phase(ctx, tmp: Path, n_images: int, size: int, repeats: int, log) -> dict:
    from pipeline.data.cache import geometry_transform

    device, bs = ctx["device"], ctx["batch_size"]
    paths = _write_large_images(tmp / "large", n_images)
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
            ds = _dataset(kind, paths, rows, None, aug, False, decoded)
            loader = _make_loader(ds, bs, device, 0, shuffle=False)
            s, m = _measure(lambda: _loader_only(loader, device, norm))
            times.setdefault(name, []).append(s)
            mems.setdefault(name, []).append(m)
    loaders = {name: _summary(times[name], mems[name], n_images) for name in times}
    cold_ms = 1e3 / loaders["cold"]["images_per_s"]
    # On a CPU device at 224 px the batch normalisation is memory-bound torch work and per-image
    # Normalize (cv2 LUT) can be faster; count the cache's saving with the better of the two.
    warm_ms = 1e3 / max(loaders["warm_u8"]["images_per_s"], loaders["warm"]["images_per_s"])
    saved_ms = cold_ms - warm_ms
    out = {
        "images": n_images, "source": "384x512 (w x h) JPEG, quality 90, smooth colour fields + noise",
        "file_kb_mean": round(sum(os.path.getsize(p) for p in paths) / n_images / 1024, 1),
        "size": size,
        "decode_ms_per_image": round(_median(decode_ms), 3),
        "resize_ms_per_image": round(_median(resize_ms), 3),
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


# The runs of one line may differ by this share of their median before the line is called noise.
SPREAD_TOLERANCE = 0.10


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


def _expected_efficiency(result: dict) -> None:
    """Cross-check, robust to load bursts: with the loader in the main process, a step costs the
    bare step plus the loader's time for one batch, so efficiency ~ t_bare / (t_bare + t_loader)."""
    bare = 1 / result["train"]["bare"]["images_per_s"]
    for variant, loader in (("disk", "cold_train"), ("cache", "warm_train"), ("cache_u8", "warm_train_u8")):
        data = 1 / result["loader"][loader]["images_per_s"]
        result["train"][variant]["efficiency_expected_from_loader"] = round(bare / (bare + data), 3)


# ---- the report ---------------------------------------------------------------------------------

def _table(result: dict) -> str:
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
    lg = result.get("large")
    if lg:
        lines.append(f"large: {lg['images']} JPEGs 384x512 → {lg['size']}: decode {lg['decode_ms_per_image']:.2f} ms + "
                     f"resize {lg['resize_ms_per_image']:.2f} ms per image; loader cold "
                     f"{lg['loader']['cold']['images_per_s']:.0f}/s, warm {lg['loader']['warm_u8']['images_per_s']:.0f}/s "
                     f"(uint8) / {lg['loader']['warm']['images_per_s']:.0f}/s (normalised); cache build "
                     f"{lg['cache_build_s']:.2f}s ({lg['cache_build_s_1thread']:.2f}s on 1 thread), {lg['cache_mb']:.0f} MB")
        lines.append(f"large: the cache saves {lg['saved_ms_per_image']:.2f} ms per image per epoch = "
                     f"{lg['saved_s_per_epoch_at_18900_images']:.0f} s per epoch at 18,900 images "
                     f"(cache {lg['cache_gb_at_18900_images']:.2f} GB)")
    lines.append("expected = bare / (bare + the loader's own time per batch): the efficiency the loader "
                 "alone allows, less sensitive to load bursts than the measured ratio")
    for phase, target in (("training", 0.85), ("prediction", 0.90)):
        judged = result[f"{phase}_headline"]
        if judged["reliable"]:
            lines.append(f"headline: {phase} efficiency {judged['headline']} (target >= {target:.2f}), cache warm")
        else:
            lines.append(f"headline: {phase} efficiency UNRELIABLE, {judged['why']}")
    return "\n".join(lines)


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
    with _threads(threads):   # restored afterwards: the caller's thread count is left as it was
        return _run_bench(Path(out_json), device, model, image_size, batch_size, n_images, steps, repeats,
                          large_images, large_size, data_dir, log)


def _run_bench(out_json, device, model, image_size, batch_size, n_images, steps, repeats, large_images,
               large_size, data_dir, log) -> dict:
    if steps is None:
        steps = max(1, (n_images or 10 * batch_size) // batch_size)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench: device 'cuda' requested but CUDA is not available")
    load_before = _load1()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths, labels = _demo_table(Path(data_dir) if data_dir else None, tmp, log)
        aug = _demo_augment(image_size)
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
            "peak_rss_method": "VmHWM reset per phase" if _reset_hwm() else "sampled RSS"}}
        result["train"] = _train_phase(ctx, repeats, log)
        result["predict"] = _predict_phase(ctx, repeats, log)
        result["loader"] = _loader_phase(ctx, repeats, log)
        _expected_efficiency(result)
        if large_images:
            result["large"] = _large_phase(ctx, tmp, large_images, large_size, repeats, log)
        del ctx, decoded
    result["meta"]["load_after"] = _load1()
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
