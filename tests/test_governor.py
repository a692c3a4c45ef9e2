"""The send budget (connector.delivery.governor): token bucket with a fake clock, shares that add up."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from connector.delivery.governor import Governor, TokenBucket, share
from connector.telemetry.metrics import METRICS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(st.floats(1, 100_000), st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_shares_of_any_split_add_up_to_the_budget(budget: float, split: list[int]) -> None:
    total = sum(split)
    shares = [share(budget, n, total) for n in split]
    if total:
        assert abs(sum(shares) - budget) <= 1e-9 * budget
    assert all(s >= 0 for s in shares)
    assert all((s == 0) == (n == 0) for s, n in zip(shares, split)) or not total


def test_a_bucket_holds_one_second_and_debt_is_waited_off() -> None:
    clock = Clock()
    b = TokenBucket(100, clock)
    assert b.take(100) == 1.0  # starts empty (no burst at start): one second's debt
    clock.now += 2.0  # the debt is paid after 1 s, the next second refills
    assert b.take(100) == 0.0
    clock.now += 10.0
    assert b.take(100) == 0.0 and b.take(50) == 0.5  # 10 s idle still banks only 100
    b.set_rate(0)
    assert b.take(10_000) == 0.0  # 0 = unlimited


def test_whatever_the_request_sizes_a_window_never_sees_more_than_its_budget_plus_one_second() -> None:
    clock = Clock()
    b = TokenBucket(200, clock)
    sent: list[tuple[float, int]] = []
    for n in [1, 500, 30, 1000, 7, 200, 200, 900, 3] * 5:
        clock.now += b.take(n)  # wait the debt off, then send
        sent.append((clock.now, n))
    for start, _ in sent:
        for width in (1.0, 5.0, 20.0):
            in_window = sum(n for t, n in sent if start <= t < start + width)
            assert in_window <= 200 * (width + 1) + 1000  # + the request that paid its debt first


def test_the_governor_follows_the_partition_share_and_waits_for_profiles_too() -> None:
    clock = Clock()
    g = Governor(1000.0, 300.0, clock)
    g.rebalanced(3, 12)  # a quarter of the partitions
    assert METRICS.rate_share.labels("all")._value.get() == 250
    assert METRICS.rate_share.labels("profile")._value.get() == 75
    waits: list[float] = []

    class Cancel(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            clock.now += timeout or 0.0
            return False

    assert g.wait_for(250, 150, Cancel())
    assert waits == [2.0]  # the profile budget (75/s) holds: 150 profile records take 2 s
    g.rebalanced(0, 12)  # no partitions: nothing to send, and never "unlimited"
    assert not g.wait_for(1, 0, _cancelled())


def test_the_whole_budget_applies_before_the_first_share_is_known() -> None:
    clock = Clock()
    g = Governor(100.0, 0.0, clock)  # no rebalanced() yet (or the partition count was unreadable)
    waits: list[float] = []

    class Cancel(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            return False

    assert g.wait_for(300, 0, Cancel())
    assert waits == [3.0]  # 300 messages at 100/s: never unlimited


def _cancelled() -> threading.Event:
    e = threading.Event()
    e.set()
    return e
