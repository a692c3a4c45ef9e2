"""How many inlet requests may be in flight at once: an AIMD limit shared by the sender threads.

The limit starts at what the lanes may have in flight (``batch.lanes × max_inflight_per_lane``). A 429
(the inlet says "slow down") halves it — once per ``cooldown_s``, so a burst of 429s answering
requests sent together counts as one signal — and every accepted request adds ``1 / limit``
(about +1 per round trip of the whole window), as TCP's congestion control does. Senders wait in
:meth:`acquire` while the limit is reached; the wait ends early when their batch is cancelled.

``capillary_aep_inflight_limit`` shows the current limit beside ``capillary_aep_inflight_batches``,
so an operator sees whether the inlet's throttling holds the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

_WAIT_SLICE_S = 0.05  # how often a waiting sender looks at its cancel flag


class AdaptiveLimit:
    def __init__(self, maximum: int, *, minimum: int = 1, decrease: float = 0.5, cooldown_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum = maximum
        self.minimum = minimum
        self._decrease = decrease
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._limit = float(maximum)
        self._inflight = 0
        self._last_decrease = float("-inf")
        self._cond = threading.Condition()
        METRICS.inflight_limit.set(maximum)

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def inflight(self) -> int:
        return self._inflight

    def acquire(self, cancel: threading.Event) -> bool:
        """Take a slot; False if ``cancel`` was set while waiting for one."""
        with self._cond:
            while self._inflight >= int(self._limit):
                if cancel.is_set():
                    return False
                self._cond.wait(_WAIT_SLICE_S)
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify()

    def throttled(self) -> None:
        """The inlet answered 429: multiplicative decrease (at most once per cooldown)."""
        with self._cond:
            now = self._clock()
            if now - self._last_decrease < self._cooldown_s or self._limit <= self.minimum:
                return
            self._last_decrease = now
            old = int(self._limit)
            self._limit = max(float(self.minimum), self._limit * self._decrease)
            METRICS.inflight_limit.set(int(self._limit))
        if int(self._limit) != old:
            log.warning("inlet throttles (429): at most %d requests in flight (was %d)", int(self._limit), old)

    def accepted(self) -> None:
        """A request was accepted: additive increase, about one slot per window of requests."""
        with self._cond:
            if self._limit >= self.maximum:
                return
            old = int(self._limit)
            self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
            if int(self._limit) != old:
                METRICS.inflight_limit.set(int(self._limit))
                self._cond.notify_all()
