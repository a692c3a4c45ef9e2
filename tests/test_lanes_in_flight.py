"""A slow inlet answer holds back only the customers it carries (issue 35): while a lane's request is
in flight, full batches of its other customers go out beside it (up to batch.max_inflight_per_lane),
and a customer's records never overtake each other. Counted with a sink that answers only when told
to (no sleeps, no timing); the lane accounting is checked with an injected clock."""

from __future__ import annotations

import threading
from typing import Any

from connector.delivery.batch import Batcher, PendingRecord
from connector.delivery.lanes import Delivery
from connector.delivery.sink import BatchResult
from connector.pipeline.offsets import OffsetTracker

TP = ("t", 0)


def rec(offset: int, key: bytes | None, profile: bool = True, size: int = 50) -> PendingRecord:
    """A record with an ExperienceEvent and, unless ``profile`` is False, a profile update."""
    body = b'{"x":"' + b"a" * (size - 8) + b'"}'
    labels = [("event", "t"), ("profile", "t")] if profile else [("event", "t")]
    return PendingRecord(TP, offset, 1, 0, key, None, None, [body] * len(labels), labels, (len(body) + 1) * len(labels))


class HeldSink:
    """Answers a batch only once ``release`` is called: requests stay in flight for as long as a
    test wants."""

    def __init__(self) -> None:
        self.auth_failed = False
        self._gates: dict[int, threading.Event] = {}  # by the batch's identity
        self._lock = threading.Lock()

    def _gate(self, records: list[PendingRecord]) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(id(records), threading.Event())

    def deliver(self, records: list[PendingRecord], cancel: threading.Event) -> BatchResult:
        self._gate(records).wait(30)
        return BatchResult(records, requests=1)

    def release(self, records: list[PendingRecord]) -> None:
        self._gate(records).set()


def delivery(lanes: int, per_lane: int, max_records: int, acked: list[PendingRecord]) -> tuple[Delivery, HeldSink]:
    tracker = OffsetTracker()
    tracker.assign(TP)
    sink = HeldSink()
    d = Delivery(Batcher(lanes, max_records, 1_000_000, linger_s=0.0), sink, tracker,  # type: ignore[arg-type]
                 delivered=acked.extend, rejected=lambda *_: None, sender_failing=lambda _why: None,
                 per_lane=per_lane)
    for i in range(lanes * per_lane * 4):  # receive every offset used below, so acknowledgements count
        tracker.received(TP, i)
    return d, sink


def starts(d: Delivery) -> list[list[int]]:
    """The offsets of every batch the delivery starts, in the order it starts them (on this thread:
    the sink's own list fills on the sender threads, in any order)."""
    out: list[list[int]] = []
    start = d._start

    def recording(lane_no: int, records: list[PendingRecord]) -> None:
        out.append([r.offset for r in records])
        start(lane_no, records)

    d._start = recording  # type: ignore[method-assign]
    return out


def finish(d: Delivery, sink: HeldSink) -> None:
    for fl in list(d.inflight.values()):
        sink.release(fl.records)
    for fl in list(d.inflight.values()):
        fl.future.result(10)
    d.collect()
    d.close()


def test_a_lane_keeps_full_batches_of_other_customers_in_flight_while_its_first_is_unanswered() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=1, per_lane=4, max_records=5, acked=acked)
    started = starts(d)
    for i in range(25):  # 25 customers, one record each: five full batches
        d.batcher.add(rec(i, f"c{i}".encode()), now=0)
    for _ in range(6):
        d.dispatch(now=1.0)  # no request is answered meanwhile
    assert len(d.inflight) == 4  # one lane, four requests: the bound, not one
    assert started == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert d.batcher.queued() == 5
    finish(d, sink)
    assert sorted(r.offset for r in acked) == list(range(20))


def test_a_customer_in_flight_waits_and_its_records_stay_in_order() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=1, per_lane=4, max_records=4, acked=acked)
    started = starts(d)
    keys = [b"a", b"b", b"c", b"d",  # the first request
            b"a", b"e", b"f", b"a", b"g", b"h",  # a's later records must wait for the first to be answered
            b"b", b"i", b"j", b"k", b"l"]
    for i, key in enumerate(keys):
        d.batcher.add(rec(i, key), now=0)
    d.dispatch(now=1.0)
    d.dispatch(now=1.0)
    d.dispatch(now=1.0)
    first, second, third = started
    assert first == [0, 1, 2, 3]
    assert second == [5, 6, 8, 9]  # e f g h: around a (4, 7) and without b (10), in flight in the first
    assert third == [11, 12, 13, 14]  # i j k l
    assert [r.offset for r in d.batcher.lanes[0].queue] == [4, 7, 10]  # a, a, b: in order, waiting
    assert len(d.inflight) == 3
    d.dispatch(now=1.0)
    assert len(d.inflight) == 3  # nothing full left beside them: no small request
    first_batch = d.lane_flights[0][0]
    sink.release(first_batch.records)
    first_batch.future.result(10)
    d.collect()
    d.dispatch(now=1.0, flush=True)
    assert started[3] == [4, 7, 10]  # a and b go once their first is answered
    finish(d, sink)
    assert sorted(r.offset for r in acked) == list(range(len(keys)))


def test_experience_events_of_a_customer_in_flight_need_not_wait() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=1, per_lane=2, max_records=3, acked=acked)
    started = starts(d)
    for i in range(3):
        d.batcher.add(rec(i, b"a"), now=0)
    for i in range(3, 6):  # the same customer's events without a profile update: no order to keep
        d.batcher.add(rec(i, b"a", profile=False), now=0)
    d.dispatch(now=1.0)
    d.dispatch(now=1.0)
    assert started == [[0, 1, 2], [3, 4, 5]]
    finish(d, sink)


def test_a_customer_in_flight_from_one_partition_does_not_hold_its_records_of_another() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=1, per_lane=2, max_records=2, acked=acked)
    started = starts(d)
    other = ("u", 0)
    d.tracker.assign(other)
    d.tracker.received(other, 0)
    d.tracker.received(other, 1)
    d.batcher.add(rec(0, b"a"), now=0)
    d.batcher.add(rec(1, b"a"), now=0)
    for i in range(2):
        r = rec(i, b"a")
        r.tp = other  # the same customer in another partition (topic) of the lane: no order between them
        d.batcher.add(r, now=0)
    d.dispatch(now=1.0)
    d.dispatch(now=1.0)
    assert len(started) == 2 and len(d.inflight) == 2
    finish(d, sink)
    assert len(acked) == 4


def test_records_without_a_key_keep_their_partition_in_order() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=1, per_lane=4, max_records=3, acked=acked)
    for i in range(9):
        d.batcher.add(rec(i, None), now=0)
    d.dispatch(now=1.0)
    d.dispatch(now=1.0)
    assert len(d.inflight) == 1  # the partition itself is the order key
    finish(d, sink)


def test_one_request_per_lane_when_so_configured_and_the_lane_counts_as_blocked() -> None:
    acked: list[PendingRecord] = []
    d, sink = delivery(lanes=2, per_lane=1, max_records=5, acked=acked)
    t0 = d._accounted
    for i in range(15):
        d.batcher.add(rec(i, f"c{i}".encode()), now=t0)
    d.dispatch(now=t0 + 1)
    d.dispatch(now=t0 + 3)  # two seconds with its request in flight and full batches behind it
    assert len(d.inflight) == 1
    lane = d.batcher.lane_of(TP)
    other = 1 - lane
    assert d.lane_seconds[lane][4] == 2.0  # blocked
    assert d.lane_seconds[other][0] == 3.0  # idle: nothing queued on the other lane
    assert d.inflight_seconds[1] == 2.0
    finish(d, sink)


def test_what_the_bench_reports_from_the_lane_series() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from common import lane_report

    deltas: dict[str, Any] = {"0:idle": 3.0, "0:blocked": 1.0, "1:sending": 4.0, "0:records": 30.0,
                              "1:records": 10.0, "0": 1.0, "2": 3.0}
    out = lane_report(deltas, 4.0)
    assert out["lane_states"]["idle"] == 0.375 and out["lane_states"]["sending"] == 0.5
    assert out["lane_blocked"] == {"0": 0.25, "1": 0.0}
    assert out["lane_records_share"] == {"0": 0.75, "1": 0.25}
    assert out["inflight_mean"] == 1.5 and out["inflight_dist"] == {0: 0.25, 2: 0.75}
