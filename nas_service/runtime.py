"""Process-wide tuning for CPU inference, applied by every ``nas-service`` command.

A GHN prediction writes every parameter of the target network into fresh memory (23.5 M floats,
94 MB, for a ResNet-50). glibc's allocator serves blocks over its mmap threshold with fresh pages
from the kernel and hands freed memory back at once, so every prediction pays a page fault per
4 KiB it writes: half of a ResNet-50's prediction time on a 2-core machine
(``bench/ghn_bench.py`` measures both ways). :func:`retain_freed_memory` raises both thresholds
so that freed blocks are reused, as jemalloc or tcmalloc would (PyTorch's CPU performance guide
recommends those; this needs no preloaded library). The process then keeps its peak memory
instead of returning it, which is what a long-running server does anyway.

Where several such processes share one machine (``serve``'s scoring processes and its worker),
each keeping the high-water mark of every network it scored adds up: kept, the fragments of
different networks' peaks stay resident until the process ends. :func:`release_freed_memory`
hands the freed memory back when the process goes idle, between batches: a scoring still reuses
its blocks across its own forward passes and pays the page faults of one pass, and an idle
process holds its base, not its history (``bench/latency_bench.py`` reads the memory at rest).

``NAS_RETAIN_FREED_MEMORY=0`` turns retaining off; neither does anything where the C library is
not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size come from the reusable heap (glibc's maximum for this setting)."""
TRIM_THRESHOLD = 1 << 30
"""Free memory kept at the top of the heap before glibc returns it to the kernel."""

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Makes glibc keep and reuse freed blocks up to :data:`MMAP_THRESHOLD` (see the module
    docstring). Returns whether the setting is in effect; safe to call more than once."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("NAS_RETAIN_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def release_freed_memory() -> bool:
    """Returns the memory this process's allocator holds free to the kernel (glibc's
    ``malloc_trim(0)``: every arena, the free pages inside the heaps too); whether any was
    returned. Milliseconds: call it when the process goes idle, not between the batches of one
    piece of work."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim
