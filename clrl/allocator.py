"""glibc malloc settings for training processes: keep large tensor buffers in the heap.

Why: glibc serves an allocation above ``M_MMAP_THRESHOLD`` (128 KiB at start) with a fresh
``mmap`` and unmaps it on free, and trims freed memory at the top of the heap back to the kernel.
A CNN training step on the CPU allocates and frees the same large buffers every step (one
256 x 32 x 20 x 20 float activation of the Nature CNN is 13 MiB), so each of them comes back as
new pages that fault in on first touch. Raising the mmap threshold to glibc's largest accepted
value (32 MiB) and the trim threshold to 1 GiB keeps those buffers in the heap to be reused
(``tests/test_allocator.py`` counts the page faults). What it is worth end to end is measured by
``clrl bench ppo``: its "sb3 stock" and "sb3 stock + clrl malloc" rows differ only in these
settings (387 vs 437 env steps/s on a 2-core machine); clrl's own PPO gains less (629 steps/s,
610 under ``CLRL_MALLOC=default clrl bench ppo``). The cost:
the process keeps freed memory up to its peak instead of returning it. This is what the
jemalloc/tcmalloc ``LD_PRELOAD`` of PyTorch's CPU tuning guide is for, with nothing to install.

Not glibc (macOS, musl) or ``CLRL_MALLOC=default`` in the environment: nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_malloc", "malloc_mode", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENV_VAR"]

ENV_VAR = "CLRL_MALLOC"
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3

_mode: str | None = None  # "tuned" or "default" once decided for this process


def tune_malloc() -> str:
    """Apply the settings once per process; returns ``"tuned"`` or ``"default"``.

    Safe to call any number of times and from any front end (``clrl run``, sweeps' trials,
    ``clrl bench``); the first call decides.
    """
    global _mode
    if _mode is not None:
        return _mode
    _mode = "default"
    if os.environ.get(ENV_VAR, "").strip().lower() == "default" or platform.libc_ver()[0] != "glibc":
        return _mode
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _mode
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both must hold for the heap to be reused
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        _mode = "tuned"
    return _mode


def malloc_mode() -> str | None:
    """What :func:`tune_malloc` decided in this process (None if it was not called)."""
    return _mode
