"""What this group member owns, and the one lifecycle every stage follows when that changes.

On **assign** the tracker starts the partitions at a new epoch. On **revoke** (an orderly rebalance)
the in-flight batches touching the partitions get until ``delivery.revoke_timeout_s`` to finish and
their dead letters to be confirmed, and what is acknowledged by then is stored for the final commit.
On **loss** (the session expired: another member may already own them) nothing may be committed,
so in-flight work is abandoned at once. Either way, once: queued records are dropped, the tracker
moves on (later outcomes of the old epoch are ignored: connector.pipeline.offsets), their per-partition
series go, and the send budget follows the new share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from connector.delivery.batch import Batcher
from connector.delivery.governor import Governor
from connector.delivery.lanes import Delivery
from connector.kafka.dlq import DeadLetterWriter
from connector.pipeline.offsets import OffsetTracker, TopicPartition
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, tracker: OffsetTracker, batcher: Batcher, delivery: Delivery, governor: Governor,
                 source: Callable[[], Any], dlq: Callable[[], DeadLetterWriter], revoke_timeout_s: float) -> None:
        self.tracker = tracker
        self.batcher = batcher
        self.delivery = delivery
        self.governor = governor
        self._dlq = dlq
        self._revoke_timeout_s = revoke_timeout_s
        self._source = source  # the consumer (its callbacks call us)
        self.paused = False  # the assignment is paused (connector.pipeline.loop's backpressure)

    def assigned(self, parts: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in parts]
        for tp in tps:
            self.tracker.assign(tp)
        # librdkafka keeps an application pause across re-assignment: clear it, then re-apply ours.
        self._source().resume(tps)
        if self.paused:
            self._source().pause(tps)
        self._changed()
        log.info("assigned %s", tps)

    def revoked(self, parts: list[Any]) -> None:
        self._release({(p.topic, p.partition) for p in parts}, lost=False)

    def lost(self, parts: list[Any]) -> None:
        self._release({(p.topic, p.partition) for p in parts}, lost=True)

    def _release(self, tps: set[TopicPartition], *, lost: bool) -> None:
        tps &= set(self.tracker.assigned())
        if not tps:
            return
        offsets: dict[TopicPartition, int] = {}
        if lost:
            self.delivery.cancel(tps)
        else:
            dlq = self._dlq()
            deadline = time.monotonic() + self._revoke_timeout_s
            self.delivery.finish(tps, deadline, lambda: dlq.poll(0))
            while dlq.outstanding and time.monotonic() < deadline:
                dlq.poll(0.02)
            offsets = {tp: off for tp in tps if (off := self.tracker.committable(tp)) is not None}
            self._source().store(offsets)
        # After the in-flight batches settled: records they gave back are dropped with the rest.
        self.batcher.drop_partitions(tps)
        for tp in tps:
            self.tracker.revoke(tp)
        METRICS.forget_partitions(tps)
        self._changed()
        if lost:
            log.warning("lost %s: their uncommitted records will be re-delivered by the new owner", sorted(tps))
        else:
            log.info("revoked %s; stored %s", sorted(tps), offsets)

    def _changed(self) -> None:
        assigned = len(self.tracker.assigned())
        METRICS.assigned_partitions.set(assigned)
        METRICS.paused_partitions.set(assigned if self.paused else 0)
        # This member's part of the send budget follows its part of the partitions.
        if self.governor.enabled and (source := self._source()) is not None and (total := source.partition_count()):
            self.governor.rebalanced(assigned, total)
