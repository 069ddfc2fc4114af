"""Decode once: every image decoded and resized a single time, kept as one memory-mapped uint8 array.

Without a cache every epoch of every fold decodes each PNG/JPEG again and resizes it again,
on the same CPU cores that run the network. `build_cache(paths, size, crop, cache_dir)`
does the deterministic part of the transform once:

    PIL decode → RGB → [CenterCrop(crop, pad_if_needed)] → Resize(size, size)  (cv2 INTER_LINEAR)

with the very albumentations transforms `data.build_transform` uses, so the stored pixels
are identical to what the uncached pipeline feeds its augmentations. Everything is stored
in ONE `.npy` file, uint8 `[N, size, size, 3]`, read back with
`np.load(mmap_mode="r", allow_pickle=False)`: memory-mapped (pages are shared between
DataLoader workers and parallel folds, and the OS may drop them under pressure), never pickled.

Cache files live in `<output_dir>/cache/` (config `data.cache_dir` overrides) and are named

    img-<list>-<size>px[-c<h>x<w>]-<key>.npy

    <list>  hash of the ordered image paths (which data set)
    <key>   hash of: the ordered paths, each file's size and mtime_ns, size, crop,
            the resize method (albumentations/cv2/Pillow versions) and CACHE_FORMAT

A changed image (size or mtime), another resolution or crop, or another library version
gives another key, hence a rebuild. Staleness policy: after a build, files of the SAME
image list and the SAME geometry with another key are deleted (they can never be valid
again); caches of other resolutions/crops are kept (switching back costs nothing), at
N x size^2 x 3 bytes each: 6.5 MB for the demo at 32 px, 2.8 GB for the mask competition's
18,900 photos at 224 px. Delete the folder to reclaim all of it (`make clean` does).

Builds are atomic (temporary file + `os.replace`) and serialised by a lock file, so folds
trained in parallel build a cache once and the others reuse it; a killed build leaves
only a hidden temporary file, removed by the next build of the same key.

The remaining, random part of the transform (training augmentations, normalisation,
to-tensor) runs per item in `CachedImageDataset` (`cached_transform`). With
`normalize=False` items stay uint8 through the DataLoader and `BatchNormalize` converts
a whole batch on the device, bit-identical to albumentations' `Normalize`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import PIL
import torch

from pipeline.config import AugmentConfig
from pipeline.data.batches import StackedSamples
from pipeline.data.bit_depth import REFUSE, Scaling, scaling_for
from pipeline.data.transforms import ImageDataset, build_transform, finishing_steps, geometry_steps, load_rgb
from pipeline.device import usable_cpus
from pipeline.fileio import atomic_path, locked

__all__ = [
    "CACHE_FORMAT",
    "DecodedImages",
    "build_cache",
    "cache_key",
    "geometry_transform",
    "resize_method",
    "CachedImageDataset",
    "cached_transform",
    "BatchNormalize",
    "DeviceFlip",
    "cache_enabled",
    "cache_dir_for",
    "decoded_for",
    "make_dataset",
]

CACHE_FORMAT = 1          # bump when the file layout or the geometry code changes
_PREFIX = "img-"
_CHUNK = 32               # images per joblib task


# ---- the deterministic geometry -------------------------------------------------------------

def resize_method(crop: Sequence[int] | None = None) -> str:
    """Names the code that makes the pixels; part of the key, so a library upgrade rebuilds."""
    steps = (f"CenterCrop({crop[0]},{crop[1]},pad_if_needed)+" if crop else "") + "Resize(INTER_LINEAR)"
    return (f"{steps};albumentations-{A.__version__};cv2-{cv2.__version__};"
            f"Pillow-{PIL.__version__};format-{CACHE_FORMAT}")


def geometry_transform(size: int, crop: Sequence[int] | None = None) -> A.Compose:
    """The first, deterministic steps of `data.build_transform`: [centre crop] → resize to size x size."""
    return A.Compose(geometry_steps(size, crop))


def _check_geometry(size, crop) -> tuple[int, tuple[int, int] | None]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"cache size must be a positive integer, got {size!r}")
    if crop is not None:
        if len(crop) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in crop):
            raise ValueError(f"cache crop must be [height, width] in pixels, got {crop!r}")
        crop = (int(crop[0]), int(crop[1]))
    return int(size), crop


# ---- keys and names -------------------------------------------------------------------------

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def cache_key(paths: Sequence[str], size: int, crop: Sequence[int] | None = None,
              scaling: Scaling = REFUSE) -> tuple[str, str]:
    """(list tag, content key) of a cache: see the module docstring. Stats every file once. A high-bit
    `scaling` (data.high_bit_depth) is part of the key; the default refusal leaves keys as they were."""
    size, crop = _check_geometry(size, crop)
    paths = [str(p) for p in paths]
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {p} (check data.image_root and the CSV)") from None
        stats.append((st.st_size, st.st_mtime_ns))
    list_tag = _digest(paths)[:12]
    scaled = {} if scaling == REFUSE else {"scaling": [scaling.method, scaling.window]}
    key = _digest({"paths": paths, "stats": stats, "size": size, "crop": crop,
                   "method": resize_method(crop), "format": CACHE_FORMAT, **scaled})[:16]
    return list_tag, key


def _geometry_tag(size: int, crop) -> str:
    return f"{size}px" + (f"-c{crop[0]}x{crop[1]}" if crop else "")


# ---- the cache --------------------------------------------------------------------------------

@dataclass
class DecodedImages:
    """A built cache: `array` is the read-only memory map uint8 [N, size, size, 3], row i = paths[i].

    Pickles as its path (a DataLoader worker started with `spawn` re-opens the map instead of
    receiving a copy of the pixels).
    """

    path: Path
    key: str
    size: int
    crop: tuple[int, int] | None
    built: bool = False                 # True when this call decoded the images
    seconds: float = 0.0                # time the build took (0 when reused)
    array: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if self.array is None:
            self.array = _open(self.path)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i) -> np.ndarray:
        return self.array[i]

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = _open(self.path)


def _open(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _open_valid(path: Path, n: int, size: int) -> np.ndarray | None:
    """The memory map of `path` if it exists with the expected header, else None (then it is rebuilt)."""
    try:
        arr = _open(path)
    except (OSError, ValueError):
        return None
    return arr if arr.dtype == np.uint8 and arr.shape == (n, size, size, 3) else None


def _decode_chunk(out: np.ndarray, start: int, paths: Sequence[str], geom: A.Compose, scaling: Scaling) -> None:
    for j, p in enumerate(paths):
        try:
            out[start + j] = geom(image=load_rgb(p, scaling))["image"]
        except (OSError, ValueError) as exc:   # PIL: UnidentifiedImageError is an OSError
            raise ValueError(f"cannot decode image {p}: {exc}") from exc


def _fill(out: np.ndarray, paths: Sequence[str], size: int, crop, n_jobs: int | None, scaling: Scaling) -> None:
    """Decode + crop + resize every image into `out` (threads: PIL and cv2 release the GIL)."""
    from joblib import Parallel, delayed

    starts = range(0, len(paths), _CHUNK)
    n_jobs = n_jobs or usable_cpus()
    if n_jobs == 1 or len(paths) <= _CHUNK:
        geom = geometry_transform(size, crop)
        for s in starts:
            _decode_chunk(out, s, paths[s:s + _CHUNK], geom, scaling)
        return
    # One Compose per task: albumentations transforms keep per-call state, so threads must not share one.
    Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(_decode_chunk)(out, s, paths[s:s + _CHUNK], geometry_transform(size, crop), scaling) for s in starts)


def _reserve(path: Path) -> None:
    """Allocate the whole (sparse) cache file now: a full disk is then an error here, not a SIGBUS
    that kills the process when a page of the memory map cannot be written."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # file systems without fallocate
                raise
        except AttributeError:   # pragma: no cover - no posix_fallocate (macOS)
            pass


def _matching(folder: Path, pattern: str) -> list[Path]:
    return [p for p in folder.iterdir() if re.fullmatch(pattern, p.name)]


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # in use elsewhere (Windows) or already gone


def build_cache(paths: Sequence[str], size: int, crop: Sequence[int] | None, cache_dir: str | Path,
                n_jobs: int | None = None, log: Callable[[str], None] | None = None,
                scaling: Scaling = REFUSE) -> DecodedImages:
    """Decode every image of `paths` once (in order) at size x size; reuse the cache when up to date.

    Returns a `DecodedImages` whose row i is `paths[i]` after the pre-resize crop (if any) and
    the resize. `built` tells whether this call decoded the images. Raises FileNotFoundError
    for a missing image and ValueError naming an undecodable one; either leaves no cache file.
    """
    size, crop = _check_geometry(size, crop)
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("build_cache: no images given")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    list_tag, key = cache_key(paths, size, crop, scaling)
    stem = f"{_PREFIX}{list_tag}-{_geometry_tag(size, crop)}"
    final = cache_dir / f"{stem}-{key}.npy"
    arr = _open_valid(final, len(paths), size)
    if arr is not None:                      # fast path: no lock needed to read a finished file
        return DecodedImages(final, key, size, crop, array=arr)
    with locked(cache_dir / f".{stem}.lock", f"the decode cache {stem}", log):
        arr = _open_valid(final, len(paths), size)
        if arr is not None:                  # another process built it while we waited
            return DecodedImages(final, key, size, crop, array=arr)
        for leftover in _matching(cache_dir, rf"\.{re.escape(stem)}-[0-9a-f]{{16}}\.npy\..+\.tmp"):
            _remove_quietly(leftover)   # a killed build's temporary file (we hold the lock)
        tick = time.perf_counter()
        with atomic_path(final, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
            _reserve(tmp)
            try:
                _fill(out, paths, size, crop, n_jobs, scaling)
                out.flush()
            finally:
                del out
        seconds = time.perf_counter() - tick
        for stale in _matching(cache_dir, rf"{re.escape(stem)}-[0-9a-f]{{16}}\.npy"):
            if stale != final:          # same images, same geometry, another key: never valid again
                _remove_quietly(stale)
    if log is not None:
        log(f"[cache] decoded {len(paths)} images at {size}x{size} in {seconds:.1f}s "
            f"({len(paths) / max(seconds, 1e-9):.0f} images/s) → {final} "
            f"({final.stat().st_size / 2**20:.1f} MiB)")
    return DecodedImages(final, key, size, crop, built=True, seconds=seconds)


# ---- datasets and the remaining transform -----------------------------------------------------

def cached_transform(aug: AugmentConfig, train: bool, normalize: bool = True) -> A.Compose:
    """`data.build_transform` without its crop and resize (the cache did them).

    normalize=True: items are float32 CHW tensors, exactly as `data.ImageDataset` gives them.
    normalize=False: no Normalize and no ToTensorV2: items stay uint8 HWC arrays, the DataLoader
    stacks them into a contiguous uint8 (B, H, W, 3) batch (4x fewer bytes than float, and no
    strided copy: ToTensorV2's CHW *view* makes `torch.stack` ~10x slower at 224 px), and
    `BatchNormalize` converts the whole batch on the device in one tensor op.
    """
    return A.Compose(finishing_steps(aug, train, normalize))


class CachedImageDataset(torch.utils.data.Dataset):
    """Like `data.ImageDataset`, reading pre-resized pixels from a cache.

    Item i is row `indices[i]` of `decoded` with target `targets[i]` (-1 where unknown),
    passed through `transform` (see `cached_transform`).
    """

    def __init__(self, decoded: DecodedImages, indices=None, targets=None, transform=None):
        self.decoded = decoded
        self.indices = np.arange(len(decoded)) if indices is None else np.asarray(indices, dtype=np.int64)
        n = len(self.indices)
        self.targets = np.asarray(targets if targets is not None else [-1] * n, dtype=np.int64)
        if len(self.targets) != n:
            raise ValueError(f"CachedImageDataset: {n} indices but {len(self.targets)} targets")
        if n and (self.indices.min() < 0 or self.indices.max() >= len(decoded)):
            raise IndexError(f"CachedImageDataset: indices outside the cache's {len(decoded)} images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def _transforms_items(self) -> bool:
        # Prediction's uint8 items need nothing done (an empty Compose): skip its per-image call (~8 us a call,
        # a tenth of a bf16 forward pass per image at 32 px).
        t = self.transform
        return t is not None and not (isinstance(t, A.Compose) and not t.transforms)

    def __getitem__(self, i: int):
        image = np.array(self.decoded.array[self.indices[i]])   # a writable copy out of the map
        if self._transforms_items():
            image = self.transform(image=image)["image"]
        return image, int(self.targets[i])

    def __getitems__(self, items: list[int]) -> Sequence[tuple]:
        """A batch's items (the DataLoader asks for them together): one read of the map for all of them,
        then each image's transform in the batch's order, as item-by-item reads would do. Arrays come back
        already stacked (`StackedSamples`, for `collate_samples`)."""
        items = np.asarray(items, dtype=np.int64)
        images = self.decoded.array[self.indices[items]]       # fancy indexing: a writable copy
        targets = self.targets[items]
        if not self._transforms_items():
            return StackedSamples(images, targets)
        images = [self.transform(image=image)["image"] for image in images]
        if all(isinstance(image, np.ndarray) for image in images):    # uint8 items (no per-image Normalize)
            return StackedSamples(np.stack(images), targets)
        return list(zip(images, targets.tolist()))


class BatchNormalize(torch.nn.Module):
    """A uint8 batch → float32 normalised (B, 3, H, W), bit-identical to albumentations' Normalize.

    Takes the uint8 (B, H, W, 3) batches of a `normalize=False` loader (or uint8 (B, 3, H, W)),
    on any device. The values are A.Normalize's own: on the CPU its lookup table (one cv2.LUT
    over the whole batch, about 2x faster than the equivalent torch ops there), elsewhere its
    float32 constants and operations ((x - mean*255) * 1/(std*255)), which give the same numbers.
    The result is contiguous NCHW, or channels_last when `channels_last=True` (then a HWC batch
    needs no transposing copy: use it with `train.channels_last`). Float batches pass through.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        ref = A.Normalize(mean=mean, std=std)
        self.register_buffer("mean", torch.as_tensor(np.asarray(ref.mean_np, np.float32)).reshape(-1),
                             persistent=False)
        self.register_buffer("den", torch.as_tensor(np.asarray(ref.denominator, np.float32)).reshape(-1),
                             persistent=False)
        every_value = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)   # (256, 1, 3)
        self.lut = np.ascontiguousarray(ref(image=every_value)["image"], dtype=np.float32).reshape(1, 256, 3)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
            raise ValueError(f"BatchNormalize expects a uint8 (B, H, W, 3) or (B, 3, H, W) batch, "
                             f"got {tuple(x.shape)}")
        if x.shape[3] == 3 and x.device.type == "cpu":
            b, h, w, c = x.shape
            flat = np.ascontiguousarray(x.numpy()).reshape(b * h, w, c)
            out = torch.from_numpy(cv2.LUT(flat, self.lut).reshape(b, h, w, c)).permute(0, 3, 1, 2)
        elif x.shape[3] == 3:    # HWC: normalise in the contiguous layout, then a CHW view
            mean, den = self.mean.to(x.device), self.den.to(x.device)
            out = (x.float() - mean).mul_(den).permute(0, 3, 1, 2)
        else:
            mean, den = self.mean.to(x.device), self.den.to(x.device)
            out = (x.float() - mean.view(1, -1, 1, 1)).mul_(den.view(1, -1, 1, 1))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)


class DeviceFlip(torch.nn.Module):
    """Random horizontal/vertical flips of a whole (B, C, H, W) batch on its device.

    Each image is flipped with probability `p_h` (left-right) and `p_v` (top-bottom), drawn
    from `generator` (seed it per epoch for reproducible runs). Equivalent in distribution
    to albumentations' HorizontalFlip/VerticalFlip when they are the LAST spatial steps of
    augment.train (flips commute with pixel-wise colour transforms, not with Affine).
    """

    def __init__(self, p_h: float = 0.5, p_v: float = 0.0):
        super().__init__()
        self.p_h, self.p_v = float(p_h), float(p_v)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for p, dim in ((self.p_h, 3), (self.p_v, 2)):
            if p > 0:
                pick = torch.rand(x.shape[0], generator=generator) < p
                pick = pick.to(x.device).view(-1, 1, 1, 1)
                x = torch.where(pick, x.flip(dim), x)
        return x


# ---- config glue (keys `data.cache`, `data.cache_dir`) --------------------------------------------

def cache_enabled(cfg) -> bool:
    return cfg.data.cache


def cache_dir_for(cfg) -> Path:
    return Path(cfg.data.cache_dir or Path(cfg.output_dir) / "cache")


def decoded_for(cfg, paths: Sequence[str], log: Callable[[str], None] | None = print) -> DecodedImages | None:
    """The cache of `paths` at the config's resolution and crop, built if needed; None when disabled."""
    if not cache_enabled(cfg):
        return None
    return build_cache(list(paths), cfg.augment.image_size, cfg.augment.pre_resize_crop, cache_dir_for(cfg),
                       log=log, scaling=scaling_for(cfg))


def make_dataset(aug: AugmentConfig, paths, rows=None, targets=None, train: bool = False,
                 decoded: DecodedImages | None = None, scaling: Scaling = REFUSE) -> torch.utils.data.Dataset:
    """The images `paths[rows]` (all when rows is None) with `targets`, for a DataLoader.

    With a cache (`decoded` built over the whole `paths`): a CachedImageDataset whose items are
    uint8 HWC arrays; pass every batch through `BatchNormalize` on the device. Without: the
    plain `data.ImageDataset` (decode + the full transform, float CHW items; BatchNormalize
    passes them through; high-bit images decoded by `scaling`). Both give the same normalised values for the same seed. The
    dataset's `transform` is an albumentations Compose (seed it with `set_random_seed`).
    """
    if decoded is not None:
        if len(decoded) != len(paths):
            raise ValueError(f"make_dataset: the cache holds {len(decoded)} images, paths has {len(paths)}")
        return CachedImageDataset(decoded, rows, targets, cached_transform(aug, train, normalize=False))
    paths = np.asarray(paths)
    return ImageDataset(paths if rows is None else paths[np.asarray(rows)], targets, build_transform(aug, train=train),
                        scaling)
