"""Memory freed by one step is reused by the next, not handed back and faulted in again (pipeline/allocator.py)."""

import os
import platform
import subprocess
import sys

import pytest

from pipeline.allocator import USER_SETTINGS

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

# A training step in miniature: 128 blocks of 1 MB (activations, gradients) taken from malloc, touched and
# freed together, five times. Prints whether the thresholds were fixed and the most MB the process handed back
# to the OS when a step's blocks were freed: what is handed back is faulted in again, page by page, at the
# next step. Both runs start from glibc's documented thresholds. (Page faults are not counted: transparent huge pages make their number depend on the kernel's
# state; torch tensors are not used: their small bookkeeping allocations pin the heap's top at random.)
STEPS = """
import ctypes, os, sys
from pipeline.allocator import keep_freed_memory
libc = ctypes.CDLL(None)
# glibc's documented starting values (its adaptive rule moves them with the process's history: start known)
libc.mallopt(-1, 128 << 10), libc.mallopt(-3, 128 << 10)
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

returned, blocks = [], (ctypes.c_void_p * 128)()    # allocated once, below the blocks: nothing pins the top
for _ in range(5):
    for i in range(128):
        blocks[i] = libc.malloc(1 << 20)
        ctypes.memset(blocks[i], 1, 1 << 20)
    held = rss_mb()
    for b in blocks:
        libc.free(b)
    returned.append(held - rss_mb())
print(kept, max(returned))
"""


def _steps(mode: str, **env) -> tuple[str, float]:
    """(whether the thresholds were fixed, MB handed back per step)."""
    clean = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


def test_a_steps_freed_memory_stays_in_the_process_for_the_next_step():
    _, returned_by_default = _steps("default")
    assert returned_by_default > 100        # what glibc does from its starting values: the whole step back
    kept, returned = _steps("keep")
    assert kept == "True"
    assert returned < 4, (returned, returned_by_default)


def test_a_users_own_allocator_settings_are_left_alone():
    kept, _ = _steps("keep", MALLOC_TOP_PAD_="0")
    assert kept == "False"
