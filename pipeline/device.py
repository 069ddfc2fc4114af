"""Where the work runs: the device, its number formats and memory layout, DataLoader workers and their
seeding, the usable cores."""

from __future__ import annotations

import os
import re

import torch

__all__ = ["resolve_device", "resolve_amp", "amp_name", "resolve_channels_last", "bf16_supported", "loader_workers",
           "seed_worker", "usable_cpus", "make_jobs", "share_cores_with_make_jobs"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (an emulated bf16 is slower than float32).

    CUDA: compute capability 8.0 (Ampere) or newer. CPU: AVX512-BF16 or AMX instructions, which
    oneDNN's bf16 convolutions need to beat float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """`train.amp` as the autocast dtype (None: float32). 'auto': bf16 where `bf16_supported`, else off.

    fp16 is for CUDA only (it needs a GradScaler against underflowing gradients, and the CPU has no
    fast float16 convolutions).
    """
    if setting == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise RuntimeError("train.amp: fp16 needs CUDA; use bf16, auto or off on the CPU")
        return torch.float16
    raise ValueError(f"train.amp: '{setting}' is not one of: auto, off, bf16, fp16")


def amp_name(dtype: torch.dtype | None) -> str:
    """The `train.amp` value an autocast dtype stands for: 'off', 'bf16' or 'fp16'."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """`train.channels_last` as a bool. 'auto': on where the convolutions prefer NHWC: CUDA (cuDNN's
    tensor-core kernels) and a CPU with oneDNN (`make bench`: 860 → 1,003 images/s for resnet10t)."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.channels_last: {setting!r} is not one of: auto, true, false")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_jobs(environ=None) -> int:
    """How many jobs the `make -jN` that started this process runs at once (1 outside Make or with -j
    without a number)."""
    flags = (os.environ if environ is None else environ).get("MAKEFLAGS", "")
    jobs = re.search(r"(?:^|\s)-j\s*(\d+)", flags)
    return max(1, int(jobs.group(1))) if jobs else 1


def loader_workers(setting: int | str, device: torch.device) -> int:
    """`train.num_workers` as a number. 'auto': 0 on the CPU, where the same cores run the model
    (`make bench`: one worker there cut training throughput by 25% on 2 cores); on a GPU one
    worker per spare core, up to 8, so decoding and augmenting overlap the GPU's work.

    Not divided among `make -jN` jobs: each worker draws its own augmentations (`seed_worker`), so
    the worker count is part of what a fold learns, and `make -j2 train` must train the same
    weights as `make train FOLD=k` on the same machine.
    """
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(0, min(8, usable_cpus() - 1))


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: give each loader worker its own augmentation seed."""
    # albumentations' Compose keeps its own RNG, copied as-is into every worker:
    # reseed it per worker or all workers would draw the same augmentations.
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def share_cores_with_make_jobs() -> None:
    """Under `make -jN`, N training processes share the machine: give each its share of the cores.

    Without this each process starts one thread per core and N of them thrash the CPU.
    """
    jobs = make_jobs()
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cpus() // jobs))
