"""The OS sees our threads by name: ``top -H``, ``ps -L`` and /proc/<pid>/task/*/comm then tell the
pipeline loop, the sender threads and librdkafka's threads (it names its own, ``rdk:…``) apart,
and the bench splits each pipeline process's CPU by them. CPython (before
3.14) leaves every thread named after the executable. Linux with glibc; elsewhere a no-op."""

from __future__ import annotations

import ctypes
import threading

from connector.runtime.heap import load_libc

_PR_SET_NAME = 15
_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL
_PRCTL = getattr(load_libc(), "prctl", None)


def name_os_thread(name: str | None = None) -> None:
    """Name the calling OS thread (default: its Python thread's name), cut to 15 bytes."""
    if _PRCTL is None:
        return
    raw = (name if name is not None else threading.current_thread().name).encode()[:_NAME_BYTES]
    _PRCTL(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
