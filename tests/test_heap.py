"""connector.runtime.heap: the glibc heap is trimmed at most once per interval, on both sides of the hand-off."""

from __future__ import annotations

import pytest

from connector.runtime import heap


def test_the_heap_is_trimmed_once_per_interval_and_not_more(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    trimmer = heap.HeapTrimmer(interval_s=2.0)
    monkeypatch.setattr(trimmer, "_trim", calls.append)
    start = trimmer._next - 2.0  # the time it was made
    for t in (0.0, 1.0, 1.9):  # not yet due
        trimmer(start + t)
    assert calls == []
    trimmer(start + 2.0)
    trimmer(start + 3.0)  # within the next interval
    assert calls == [0]
    trimmer(start + 4.1)
    assert calls == [0, 0]


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_LIBC", None)
    heap.tune_malloc()  # no mallopt to call: returns quietly
    trimmer = heap.HeapTrimmer(interval_s=0.0)
    assert trimmer._trim is None
    trimmer(1e12)  # nothing to call, nothing raised


@pytest.mark.skipif(heap._LIBC is None or not hasattr(heap._LIBC, "malloc_trim"), reason="needs glibc")
def test_on_glibc_the_trim_really_runs() -> None:
    trimmer = heap.HeapTrimmer(interval_s=0.0)
    assert trimmer._trim is not None
    trimmer(1e12)  # malloc_trim(0) itself: returns 0 or 1, never raises
