"""When a pipeline stops reading. Past its buffer bounds (``delivery.max_buffered_records`` and
``max_buffered_bytes``) the loop *holds*: it reads nothing, except every ``HOLD_POLL_INTERVAL_S`` to
serve rebalance callbacks, and what librdkafka prefetched waits in its bounded queue. Past
``PAUSE_FACTOR`` × the bounds (what those reads brought in during a long inlet outage), or while the
credentials are rejected, it *pauses* the assignment; below the bounds again, it resumes."""

from __future__ import annotations

import logging
from typing import Any

from connector.config import DeliveryConfig
from connector.delivery.batch import Batcher
from connector.pipeline.offsets import OffsetTracker
from connector.pipeline.rebalance import Membership
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

HOLD_POLL_INTERVAL_S = 0.5
PAUSE_FACTOR = 1.5


class Backpressure:
    def __init__(self, tracker: OffsetTracker, batcher: Batcher, bounds: DeliveryConfig, membership: Membership) -> None:
        self._tracker = tracker
        self._batcher = batcher
        self._bounds = bounds
        self._membership = membership  # holds the paused flag: a new assignment is paused too

    def over(self, factor: float = 1.0) -> bool:
        """More than ``factor`` times the buffer bounds is pending (records or bytes)."""
        b = self._bounds
        return (self._tracker.pending >= b.max_buffered_records * factor
                or self._batcher.queued_bytes() >= b.max_buffered_bytes * factor)

    def update(self, source: Any, credentials_rejected: bool, stopping: bool) -> None:
        m, assigned = self._membership, self._tracker.assigned()
        if (credentials_rejected or self.over(PAUSE_FACTOR)) and not m.paused:
            m.paused = True
            source.pause(assigned)
            METRICS.paused_partitions.set(len(assigned))
            log.info("pausing consumption: %d records buffered%s", self._tracker.pending,
                     " (credentials rejected)" if credentials_rejected else "")
        elif m.paused and not credentials_rejected and not stopping and not self.over(1):
            m.paused = False
            source.resume(assigned)
            METRICS.paused_partitions.set(0)
            log.info("resuming consumption")
