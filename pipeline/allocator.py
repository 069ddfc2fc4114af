"""Memory a training or prediction loop frees is kept for its next batch, not handed back to the OS.

glibc's malloc returns freed memory at the top of its heap to the OS once more than a trim threshold
is free there, and serves large blocks with fresh mappings; both thresholds adapt to the largest block
freed so far. A training step frees and re-allocates its activations and gradients every step, so
with those defaults part of them is handed back and faulted in again, page by page, at every step:
on the demo's model (resnet10t, 32 px, batch 64) thousands of minor page faults a step, about 6 % of
the step on a 2-core AMD EPYC (docs/speed.md). Fixing the thresholds keeps the memory in the process;
its peak is unchanged, since a loop reaches it at every step anyway.

A user's own choice wins: with MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, MALLOC_TOP_PAD_ or
GLIBC_TUNABLES set, or a library preloaded (LD_PRELOAD: jemalloc, tcmalloc), nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "USER_SETTINGS"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20    # blocks below this come from the heap: glibc's own ceiling for its adaptive one
TRIM_THRESHOLD = 1 << 30     # free memory kept at the heap's top before any is handed back
# The environment through which a user chose the allocator's settings: any of them set, nothing is changed.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds for this process (and the loader workers it forks).

    True when they were set; False on another C library or OS, or where the user chose the allocator's
    settings (see the module docstring). Called once per process; later calls return the first answer.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
