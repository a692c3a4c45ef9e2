"""The AIMD limit on requests in flight (connector.delivery.concurrency), with a fake clock."""

from __future__ import annotations

import threading

import pytest

from connector.delivery.concurrency import AdaptiveLimit
from connector.telemetry.metrics import METRICS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_halves_once_per_cooldown_down_to_the_minimum() -> None:
    clock = Clock()
    lim = AdaptiveLimit(8, cooldown_s=1.0, clock=clock)
    lim.throttled()
    lim.throttled()  # same burst: one signal
    assert lim.limit == 4
    assert METRICS.inflight_limit._value.get() == 4
    for _ in range(5):
        clock.now += 1.0
        lim.throttled()
    assert lim.limit == 1


def test_acceptance_adds_about_one_slot_per_window() -> None:
    lim = AdaptiveLimit(8, clock=Clock())
    lim.throttled()
    assert lim.limit == 4
    for _ in range(5):  # a window of ~4 accepted requests → +1
        lim.accepted()
    assert lim.limit == 5
    for _ in range(100):
        lim.accepted()
    assert lim.limit == 8  # never above the lanes


def test_acquire_waits_at_the_limit_and_gives_up_when_cancelled() -> None:
    lim = AdaptiveLimit(1)
    never = threading.Event()
    assert lim.acquire(never)
    cancel = threading.Event()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lim.acquire(cancel)))
    t.start()
    t.join(0.2)
    assert t.is_alive() and got == []  # blocked: the one slot is taken
    cancel.set()
    t.join(5)
    assert got == [False]
    lim.release()
    assert lim.acquire(never) and lim.inflight == 1


def test_release_lets_a_waiting_sender_in() -> None:
    lim = AdaptiveLimit(1)
    assert lim.acquire(threading.Event())
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lim.acquire(threading.Event())))
    t.start()
    lim.release()
    t.join(5)
    assert got == [True]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(2, minimum=3)
