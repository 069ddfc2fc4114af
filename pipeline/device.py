"""Where the work runs: the device, DataLoader workers and their seeding, the usable cores."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device", "loader_workers", "seed_worker", "usable_cpus", "share_cores_with_make_jobs"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_workers(setting: int | str, device: torch.device) -> int:
    """`train.num_workers` as a number. 'auto': 0 on the CPU, where the same cores run the model
    (`make bench`: one worker there cut training throughput by 25% on 2 cores); on a GPU one
    worker per spare core, up to 8, so decoding and augmenting overlap the GPU's work."""
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
    import re

    jobs = re.search(r"(?:^|\s)-j\s*(\d+)", os.environ.get("MAKEFLAGS", ""))
    if jobs and int(jobs.group(1)) > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(jobs.group(1))))
