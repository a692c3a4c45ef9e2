"""Batch stage: accumulate encoded XDM messages into request-sized batches. Pure (no I/O).

Records are spread over ``lanes`` by partition: a partition always maps to the same lane, and the
pipeline keeps at most one request in flight per lane. That gives parallel requests across
partitions while records of one partition (and so all updates of one customer, since Capillary
keys by customer) reach AEP in order, retries included.

A batch is cut when a lane holds ``max_records`` records or ``max_bytes`` of request body, or when
its oldest record has waited ``linger`` seconds. All messages of one Kafka record travel in the
same request, so a record is acknowledged as a unit. A batch may span many ``consume()`` calls.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from connector.offsets import TopicPartition

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

    @property
    def max_record_size(self) -> int:
        """A record larger than this can never fit in a request (dead-lettered as too large)."""
        return self.max_bytes - WRAPPER_BYTES

    def lane_of(self, tp: TopicPartition) -> int:
        lane = self._lane_of.get(tp)
        if lane is None:
            lane = self._lane_of[tp] = zlib.crc32(f"{tp[0]}\0{tp[1]}".encode()) % len(self.lanes)
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

    def take(self, lane_no: int, now: float) -> list[PendingRecord]:
        """Cut the next batch from the head of a lane, within the record and byte limits."""
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
