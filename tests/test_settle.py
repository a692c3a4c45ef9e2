"""What becomes of a finished batch's records (Delivery._settle) and of processed records
(Ledger.integrate) once their partition was revoked meanwhile: OffsetTracker.current decides, and a
record of a partition no longer ours is never re-queued, dead-lettered or acknowledged."""

from __future__ import annotations

import threading
from typing import Any

from support import FakeMessage

from connector.delivery.batch import Batcher, PendingRecord
from connector.delivery.lanes import Delivery
from connector.delivery.sink import BatchResult, MessageFailure
from connector.errors import Stage
from connector.pipeline.acknowledge import Ledger
from connector.pipeline.offsets import OffsetTracker
from connector.processing.record import Encoded, Rejected

A, B = ("t", 0), ("t", 1)


def rec(tp: tuple[str, int], offset: int, epoch: int) -> PendingRecord:
    return PendingRecord(tp, offset, epoch, 0, None, b"v", None, [b"{}"], [("event", "e")], 3)


class AnsweringSink:
    """Answers every batch with ``answer(records)`` (or raises what it raises)."""

    auth_failed = False

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def deliver(self, records: list[PendingRecord], cancel: threading.Event) -> BatchResult:
        return self.answer(records)  # type: ignore[no-any-return]


class Letters:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, letter: Any, on_done: Any) -> None:
        self.sent.append(letter)
        on_done(letter)


def settle_after_revoking_b(answer: Any) -> tuple[Delivery, OffsetTracker, list[Any], list[Any]]:
    """Send A0 B0 A1 B1 in one batch, revoke B while it is in flight, then collect the answer."""
    tracker = OffsetTracker()
    epochs = {A: tracker.assign(A), B: tracker.assign(B)}
    records = [rec(tp, off, epochs[tp]) for off in (0, 1) for tp in (A, B)]
    for r in records:
        tracker.received(r.tp, r.offset)
    delivered: list[Any] = []
    rejected: list[Any] = []
    batcher = Batcher(1, 10, 1_000_000, linger_s=0.0)
    ledger = Ledger(tracker, batcher, Letters())  # type: ignore[arg-type]

    def deliver(rs: list[PendingRecord]) -> None:
        delivered.extend(rs)
        ledger.delivered(rs)

    def reject(r: PendingRecord, failure: MessageFailure) -> None:
        rejected.append(r)
        ledger.rejected(r, failure)

    d = Delivery(batcher, AnsweringSink(answer), tracker, delivered=deliver, rejected=reject,  # type: ignore[arg-type]
                 sender_failing=lambda _why: None)
    for r in records:
        d.batcher.add(r, now=0)
    d.dispatch(now=1.0, flush=True)
    tracker.revoke(B)
    for fl in d.inflight.values():
        fl.future.exception(10)
    d.collect()
    d.close()
    return d, tracker, delivered, rejected


def queued(d: Delivery) -> list[tuple[tuple[str, int], int]]:
    return [(r.tp, r.offset) for r in d.batcher.lanes[0].queue]


def test_an_abandoned_batch_goes_back_without_the_revoked_partitions_records() -> None:
    d, _, delivered, rejected = settle_after_revoking_b(lambda rs: BatchResult(rs, abandoned=True))
    assert queued(d) == [(A, 0), (A, 1)] and delivered == [] and rejected == []


def test_a_batch_whose_sender_raised_goes_back_without_the_revoked_partitions_records() -> None:
    def boom(records: list[PendingRecord]) -> BatchResult:
        raise RuntimeError("a bug in the sender")

    d, _, delivered, rejected = settle_after_revoking_b(boom)
    assert queued(d) == [(A, 0), (A, 1)] and delivered == [] and rejected == []
    assert d.sender_errors == 1


def test_refused_records_of_a_revoked_partition_are_not_dead_lettered_and_its_accepted_ones_not_acked() -> None:
    failure = MessageFailure(400, "bad")
    d, tracker, delivered, rejected = settle_after_revoking_b(lambda rs: BatchResult(rs, failures={2: failure,
                                                                                                   3: failure}))
    assert [(r.tp, r.offset) for r in rejected] == [(A, 1)]
    # AEP has B0 (counted delivered), but its acknowledgement belongs to an assignment that is gone.
    assert [(r.tp, r.offset) for r in delivered] == [(A, 0), (B, 0)]
    assert queued(d) == []
    assert tracker.committable(A) == 2 and tracker.committable(B) is None  # A1 dead-lettered
    assert tracker.pending == 0


def test_outcomes_of_a_partition_revoked_while_processing_are_dropped() -> None:
    tracker = OffsetTracker()
    old_b = tracker.assign(B)
    a = tracker.assign(A)
    tracker.revoke(B)
    new_b = tracker.assign(B)  # B came back: what was read under the old assignment is read again
    for tp, off in ((A, 0), (A, 1), (B, 0), (B, 1)):
        tracker.received(tp, off)
    batcher = Batcher(1, 10, 1_000_000, linger_s=0.0)
    letters = Letters()
    ledger = Ledger(tracker, batcher, letters)  # type: ignore[arg-type]
    encoded = Encoded("json", [b"{}"], [("event", "e")], 3)
    refused = Rejected(Stage.DECODE, "ValueError", "bad_json", "")
    entries = [(FakeMessage(A[0], A[1], 0, None, b"v"), A, a), (FakeMessage(A[0], A[1], 1, None, b"v"), A, a),
               (FakeMessage(B[0], B[1], 0, None, b"v"), B, old_b), (FakeMessage(B[0], B[1], 1, None, b"v"), B, old_b)]
    ledger.integrate(entries, [encoded, refused, encoded, refused])
    assert [(r.tp, r.offset) for r in batcher.lanes[0].queue] == [(A, 0)]
    assert [(dl.topic, dl.partition, dl.offset) for dl in letters.sent] == [("t", 0, 1)]
    assert tracker.current(B, new_b) and not tracker.current(B, old_b)
