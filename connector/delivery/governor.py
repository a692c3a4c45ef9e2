"""Stay inside the org's AEP capacity: a token bucket on what is *sent*, shared by the replicas.

AEP does not reject traffic above an org's licensed Profile streaming capacity (1,500 records/s by
default over 15-minute windows): it slows down every source of the org. ``delivery.max_messages_per_s``
(and ``max_profile_messages_per_s`` for profile records alone) is a budget for the whole consumer
group. Without any coordination service, each replica takes the share of the budget that matches
its share of the partitions (recomputed on every rebalance): ``budget × assigned / total``. While
the assignment covers every partition once, the shares add up to the budget; during a rebalance a
partition may be briefly counted by two members (or none), and a partition's traffic is not its
share of the partitions — both are the documented approximation. The bucket holds one second of
budget, so a window of any length sees at most ``budget × (seconds + 1)``.

Consumption is never throttled here: when sending waits, buffers fill and backpressure pauses the
partitions, as for a slow inlet. Pure apart from the clock and the wait, both injectable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from connector.telemetry.metrics import METRICS


def share(budget: float, assigned: int, total: int) -> float:
    """This replica's part of a group budget: proportional to its partitions (0 when it has none)."""
    if budget <= 0 or total <= 0 or assigned <= 0:
        return 0.0
    return budget * min(assigned, total) / total


class TokenBucket:
    """``rate`` tokens per second, at most ``rate`` (one second) banked. ``rate`` 0: unlimited."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = 0.0
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill()
            self._rate = max(0.0, rate)
            self._tokens = min(self._tokens, self._rate)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate:
            self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, n: int) -> float:
        """Take ``n`` tokens (going into debt if need be); return how long to wait before sending
        so that the debt is paid off: 0 when there were enough."""
        with self._lock:
            if not self._rate:
                return 0.0
            self._refill()
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class Governor:
    """The replica's message budgets (all messages, profile records) and the waits they impose."""

    def __init__(self, budget: float, profile_budget: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.profile_budget = profile_budget
        # Until the first assignment says otherwise (or when the partition count cannot be read),
        # the replica counts as the group's only member: the budget never goes unapplied.
        self._all = TokenBucket(budget, clock)
        self._profiles = TokenBucket(profile_budget, clock)
        METRICS.rate_budget.labels("all").set(budget)
        METRICS.rate_budget.labels("profile").set(profile_budget)
        METRICS.rate_share.labels("all").set(budget)
        METRICS.rate_share.labels("profile").set(profile_budget)

    @property
    def enabled(self) -> bool:
        return self.budget > 0 or self.profile_budget > 0

    def rebalanced(self, assigned: int, total: int) -> None:
        """Recompute this replica's shares from its part of the partitions."""
        mine = share(self.budget, assigned, total)
        mine_profiles = share(self.profile_budget, assigned, total)
        # A replica with no partitions sends nothing; one with a budget never gets a zero rate
        # while it has work (a rate of 0 would mean unlimited).
        self._all.set_rate(mine if self.budget <= 0 or mine > 0 else 1e-3)
        self._profiles.set_rate(mine_profiles if self.profile_budget <= 0 or mine_profiles > 0 else 1e-3)
        METRICS.rate_share.labels("all").set(mine)
        METRICS.rate_share.labels("profile").set(mine_profiles)

    def wait_for(self, messages: int, profiles: int, cancel: threading.Event) -> bool:
        """Block until ``messages`` (of which ``profiles`` profile records) may be sent; False if
        cancelled meanwhile (the tokens are spent anyway: a re-send is new traffic)."""
        delay = max(self._all.take(messages), self._profiles.take(profiles) if profiles else 0.0)
        if delay <= 0:
            return True
        METRICS.governor_wait.inc(delay)
        return not cancel.wait(delay)
