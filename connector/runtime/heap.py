"""glibc's heap, for both sides of the hand-off: how it is set up, and giving freed pages back.

Not glibc (musl, macOS): both do nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any

_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3  # glibc mallopt parameters
_MMAP_THRESHOLD = 256 * 1024
TRIM_INTERVAL_S = 2.0


def load_libc() -> Any | None:
    """glibc, for calls Python does not wrap (here; connector.runtime.thread_names); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = load_libc()


def tune_malloc() -> None:
    """For both sides of the hand-off (bench/run.py --mode rate: 267 → 243 MB PSS for the
    tree, no throughput cost). Each thread that allocates gets its own arena (up to 8 per core):
    with sender, receiver and librdkafka threads, freed memory stays spread over them; two arenas
    are enough. Blocks of 100 KB–1 MB (request bodies, chunks) are freed and allocated all the
    time, and glibc's sliding mmap threshold soon serves them from the heap, where they fragment:
    a fixed threshold keeps them mmapped, returned to the system when freed. MALLOC_* variables win."""
    libc = _LIBC
    if libc is None:
        return
    try:
        if not os.environ.get("MALLOC_ARENA_MAX"):
            libc.mallopt(_M_ARENA_MAX, 2)
        if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except AttributeError:  # not glibc
        pass


class HeapTrimmer:
    """Every ``TRIM_INTERVAL_S`` at most, ``malloc_trim(0)``: under a backlog the heap's free pages
    (chunks, decoded records, request bodies that came and went) stay resident until glibc is asked
    to return them (bench: −5 MB per worker, more in the consumer process; a few ms per call)."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self._interval = interval_s
        self._next = time.monotonic() + interval_s
        self._trim = getattr(_LIBC, "malloc_trim", None)

    def __call__(self, now: float) -> None:
        if self._trim is None or now < self._next:
            return
        self._next = now + self._interval
        self._trim(0)
