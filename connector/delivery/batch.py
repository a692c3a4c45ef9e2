"""Batch stage: accumulate encoded XDM messages into request-sized batches. Pure (no I/O).

Records are spread over ``lanes`` by partition: a partition always maps to the same lane (the lane
with the fewest partitions when it is first seen). A lane
keeps up to ``batch.max_inflight_per_lane`` requests in flight, and a request sent while others of
its lane are in flight holds no profile update of a customer whose profile updates they hold from
the same partition (:func:`order_key`: the partition and the Kafka key, by which Capillary
partitions): a customer's profile updates in a partition reach AEP in order, retries included (as
before, records of different partitions have no order between them), while the lane's
other records need not wait for a slow answer (issue 35). ExperienceEvents are immutable,
time-stamped facts: they need no order (the sink re-sends them out of order too).

A batch is cut when a lane holds ``max_records`` records or ``max_bytes`` of request body, or when
its oldest record has waited ``linger`` seconds. All messages of one Kafka record travel in the
same request, so a record is acknowledged as a unit. A batch may span many ``consume()`` calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from connector.pipeline.offsets import TopicPartition

BATCH_PREFIX = b'{"messages":['
BATCH_SUFFIX = b"]}"
WRAPPER_BYTES = len(BATCH_PREFIX) + len(BATCH_SUFFIX)


@dataclass(slots=True)
class PendingRecord:
    """One consumed Kafka record on its way to AEP."""

    tp: TopicPartition
    offset: int
    epoch: int
    timestamp_ms: int  # Kafka record timestamp, for end-to-end latency
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    messages: list[bytes]  # encoded envelopes
    labels: list[tuple[str, str]]  # (kind, event_type) per message, for metrics
    size: int  # bytes the messages add to a request body, commas included

    @staticmethod
    def body_size(messages: list[bytes]) -> int:
        return sum(len(m) for m in messages) + len(messages)


def order_key(record: PendingRecord) -> object:
    """What a record must stay in order with: None when it carries no profile update (nothing),
    else its customer in its partition (partition and Kafka key; without a key, every keyless
    record of the partition)."""
    for kind, _ in record.labels:
        if kind == "profile":
            return (record.tp, record.key)
    return None


def encode_body(messages: Iterable[bytes]) -> bytes:
    """The request body, copied once: ``prefix + join + suffix`` copied a ~1 MB body three times."""
    parts = list(messages)
    if not parts:
        return BATCH_PREFIX + BATCH_SUFFIX
    parts[0] = BATCH_PREFIX + parts[0]  # small copies at the ends, one big copy in the join
    parts[-1] = parts[-1] + BATCH_SUFFIX
    return b",".join(parts)


class Lane:
    __slots__ = ("queue", "bytes", "oldest")

    def __init__(self) -> None:
        self.queue: deque[PendingRecord] = deque()
        self.bytes = 0
        self.oldest = 0.0  # monotonic time the head record was enqueued

    def __len__(self) -> int:
        return len(self.queue)


class Batcher:
    def __init__(self, lanes: int, max_records: int, max_bytes: int, linger_s: float) -> None:
        self.lanes = [Lane() for _ in range(lanes)]
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self._lane_of: dict[TopicPartition, int] = {}
        self._partitions = [0] * lanes  # partitions mapped to each lane

    @property
    def max_record_size(self) -> int:
        """A record larger than this can never fit in a request (dead-lettered as too large)."""
        return self.max_bytes - WRAPPER_BYTES

    def lane_of(self, tp: TopicPartition) -> int:
        """A partition's lane, for the life of the process: the lane with the fewest partitions when
        it is first seen (a hash of the partition left some lanes empty and gave others three or
        four partitions: 60 % of the records on two of eight lanes in a bench run)."""
        lane = self._lane_of.get(tp)
        if lane is None:
            lane = self._lane_of[tp] = min(range(len(self.lanes)), key=self._partitions.__getitem__)
            self._partitions[lane] += 1
        return lane

    def add(self, record: PendingRecord, now: float) -> int:
        lane_no = self.lane_of(record.tp)
        lane = self.lanes[lane_no]
        if not lane.queue:
            lane.oldest = now
        lane.queue.append(record)
        lane.bytes += record.size
        return lane_no

    def ready(self, lane_no: int, now: float, flush: bool = False) -> bool:
        lane = self.lanes[lane_no]
        if not lane.queue:
            return False
        return (
            flush
            or len(lane.queue) >= self.max_records
            or lane.bytes + WRAPPER_BYTES >= self.max_bytes
            or now - lane.oldest >= self.linger_s
        )

    def full(self, lane_no: int) -> bool:
        """The lane holds at least a full request (by records or bytes), whatever its keys."""
        lane = self.lanes[lane_no]
        return len(lane.queue) >= self.max_records or lane.bytes + WRAPPER_BYTES >= self.max_bytes

    def take(self, lane_no: int, now: float, busy: set[object] | None = None,
             full_only: bool = False) -> list[PendingRecord]:
        """Cut the next batch from the head of a lane, within the record and byte limits.

        ``busy``: order keys (:func:`order_key`) of the lane's requests in flight; their records
        are passed over and stay queued, in order, for a later batch. ``full_only``: cut nothing
        unless the batch is full (what is worth a request of its own beside those in flight)."""
        if busy:
            return self._take_around(lane_no, now, busy, full_only)
        if full_only and not self.full(lane_no):
            return []
        lane = self.lanes[lane_no]
        out: list[PendingRecord] = []
        size = WRAPPER_BYTES - 1  # n records need n-1 commas; each record.size counts one
        queue = lane.queue
        while queue and len(out) < self.max_records:
            rec = queue[0]
            if out and size + rec.size > self.max_bytes:
                break
            queue.popleft()
            out.append(rec)
            size += rec.size
            lane.bytes -= rec.size
        lane.oldest = now if queue else 0.0
        return out

    def _take_around(self, lane_no: int, now: float, busy: set[object], full_only: bool) -> list[PendingRecord]:
        lane = self.lanes[lane_no]
        out: list[PendingRecord] = []
        keep: deque[PendingRecord] = deque()
        size = WRAPPER_BYTES - 1
        full = False
        for rec in lane.queue:
            if full or ((key := order_key(rec)) is not None and key in busy):
                keep.append(rec)
            elif len(out) >= self.max_records or (out and size + rec.size > self.max_bytes):
                full = True  # nothing after this record may overtake it: the rest stays, in order
                keep.append(rec)
            else:
                out.append(rec)
                size += rec.size
        if not out or (full_only and not full and len(out) < self.max_records):
            return []
        lane.queue = keep
        lane.bytes -= size - (WRAPPER_BYTES - 1)
        lane.oldest = now if keep else 0.0
        return out

    def requeue_front(self, lane_no: int, records: list[PendingRecord], now: float) -> None:
        """Put records of an abandoned batch back at the head of their lane, in order."""
        lane = self.lanes[lane_no]
        if not lane.queue:
            lane.oldest = now
        for rec in reversed(records):
            lane.queue.appendleft(rec)
            lane.bytes += rec.size

    def drop_partitions(self, tps: set[TopicPartition]) -> int:
        """Remove queued records of revoked partitions; returns how many were dropped."""
        dropped = 0
        for lane in self.lanes:
            if not lane.queue:
                continue
            keep = deque(r for r in lane.queue if r.tp not in tps)
            dropped += len(lane.queue) - len(keep)
            lane.queue = keep
            lane.bytes = sum(r.size for r in keep)
        return dropped

    def queued(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes)

    def queued_bytes(self) -> int:
        return sum(lane.bytes for lane in self.lanes)
