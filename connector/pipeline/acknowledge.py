"""Acknowledgements: the only ways a record's offset is released for commit.

A record is acknowledged when AEP accepted every message made from it (:meth:`Ledger.delivered`),
when it maps to nothing (an ``Empty`` outcome), or once the dead-letter topic confirmed its letter
(:meth:`Ledger.dead_letter`). Everything else — outcomes of revoked partitions, records still in
batches — stays pending, so its offset is never committed. Counts the records on their way through
(decoded, transformed, delivered, acknowledged) once per batch, not per record.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from typing import Any, cast

from connector.delivery.batch import Batcher, PendingRecord
from connector.delivery.sink import MessageFailure
from connector.errors import Stage
from connector.kafka.dlq import DeadLetter, DeadLetterWriter
from connector.pipeline.offsets import OffsetTracker, TopicPartition
from connector.processing.record import Empty, Encoded, Outcome, Rejected
from connector.processing.stage import Entry
from connector.telemetry.metrics import METRICS, observe_many
from connector.transform.events import SPECS

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, tracker: OffsetTracker, batcher: Batcher, dlq: DeadLetterWriter) -> None:
        self.tracker = tracker
        self.batcher = batcher
        self.dlq = dlq
        self._dropped_logged: set[str] = set()
        self._topic_counters: dict[str, Any] = {}
        self._decoded_counters: dict[tuple[str, str], Any] = {}

    def integrate(self, entries: list[Entry], outcomes: list[Outcome]) -> None:
        # The hot loop: per record only what must be per record. Metric labels are collected in
        # lists and counted once per chunk (Counter counts a list in C).
        now = time.monotonic()
        current = self.tracker.current
        add = self.batcher.add
        decoded: list[tuple[str, str]] = []
        transformed: list[tuple[str, str]] = []
        for (m, tp, epoch), o in zip(entries, outcomes):
            if not current(tp, epoch):
                continue  # revoked while a worker had it: the next owner reads it again
            if type(o) is Encoded:
                decoded.append((tp[0], o.format))
                transformed += o.labels
                add(PendingRecord(tp, m.offset(), epoch, m.timestamp()[1], m.key(), m.value(), m.headers(),
                                  o.bodies, o.labels, o.size), now)
                if o.dropped:
                    self._identities_dropped(tp, m.offset(), o.dropped)
                if o.declined:  # the records went out all the same: counted, not logged
                    for name in o.declined:
                        METRICS.transform_fast_declined.labels(name).inc()
            elif type(o) is Empty:
                decoded.append((tp[0], o.format))
                self.ack(tp, epoch, m.offset())  # nothing to send for this record (e.g. filtered)
            else:
                o = cast(Rejected, o)
                if o.format is not None:
                    decoded.append((tp[0], o.format))
                self.dead_letter(DeadLetter(tp[0], tp[1], m.offset(), m.key(), m.value(), m.headers(),
                                                  o.stage, o.error_class, o.reason, o.detail, o.http_status), epoch)
        for key, n in Tally(decoded).items():
            child = self._decoded_counters.get(key)
            if child is None:
                child = self._decoded_counters[key] = METRICS.records_decoded.labels(*key)
            child.inc(n)
        for (kind_label, etype), n in Tally(transformed).items():
            METRICS.records_transformed.labels(kind_label, _event_type_label(etype)).inc(n)

    def _identities_dropped(self, tp: TopicPartition, offset: int, reasons: tuple[str, ...]) -> None:
        """Identities AEP would skip, left out of a record: counted, logged once per reason."""
        for reason, n in Tally(reasons).items():
            METRICS.identities_dropped.labels(reason).inc(n)
            if reason not in self._dropped_logged:
                self._dropped_logged.add(reason)
                log.warning("left an identity AEP would skip (%s) out of %s[%d]@%d; counted in "
                            "capillary_aep_identities_dropped_total, not logged again", reason, tp[0], tp[1], offset)

    def delivered(self, records: list[PendingRecord]) -> None:
        """AEP accepted every message of these records."""
        ack = self.tracker.ack
        labels: list[tuple[str, str]] = []
        born: list[int] = []
        acked: list[str] = []
        for rec in records:
            labels += rec.labels
            born.append(rec.timestamp_ms)
            if ack(rec.tp, rec.epoch, rec.offset):
                acked.append(rec.tp[0])
        now_ms = time.time() * 1000
        observe_many(METRICS.delivery_latency, [max(0.0, (now_ms - ts) / 1000) for ts in born])
        for topic, n in Tally(acked).items():
            self._topic_counter(topic).inc(n)
        for (kind, etype), n in Tally(labels).items():
            METRICS.records_delivered.labels(kind, _event_type_label(etype)).inc(n)

    def rejected(self, rec: PendingRecord, failure: MessageFailure) -> None:
        """AEP refused a message of this record for good: dead-letter the record."""
        self.dead_letter(DeadLetter(rec.tp[0], rec.tp[1], rec.offset, rec.key, rec.value, rec.headers,
                                          Stage.DELIVER, "AepRejected", f"aep_{failure.status}", "", failure.status,
                                          failure.message, failure.xaction_id), rec.epoch)

    def dead_letter(self, letter: DeadLetter, epoch: int) -> None:
        tp = (letter.topic, letter.partition)
        log.warning("dead-lettering %s[%d]@%d at %s: %s %s", tp[0], tp[1], letter.offset, letter.stage,
                    letter.reason, letter.detail[:200])
        self.dlq.send(letter, lambda dl: self.ack(tp, epoch, dl.offset))

    def ack(self, tp: TopicPartition, epoch: int, offset: int) -> None:
        if self.tracker.ack(tp, epoch, offset):
            self._topic_counter(tp[0]).inc()

    def _topic_counter(self, topic: str) -> Any:
        c = self._topic_counters.get(topic)
        if c is None:
            c = self._topic_counters[topic] = METRICS.records_acknowledged.labels(topic)
        return c


# Label values must stay bounded: passthrough events (any name) share "other".
_EVENT_TYPES = frozenset(spec.event_type for spec in SPECS.values()) | {"profile"}


def _event_type_label(event_type: str) -> str:
    return event_type if event_type in _EVENT_TYPES else "other"
