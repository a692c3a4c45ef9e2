"""The pipeline's delivery bookkeeping in-process (no Kafka, no HTTP): a failing sender never
loses a batch nor stalls silently, a stuck record is named, an unusable dead-letter topic stops
the process with exit code 6 (connector.pipeline.loop)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError
from harness import write_config
from support import FakeMessage
from support import FakeSource as Source

from connector.config import load_settings
from connector.delivery.sink import BatchResult
from connector.dev.samples import generate_events
from connector.errors import ExitCode
from connector.kafka.dlq import DeadLetterWriter
from connector.pipeline.loop import Pipeline
from connector.telemetry.metrics import METRICS

TP = ("w.points", 0)


def Msg(tp: tuple[str, int], off: int, value: bytes, key: bytes | None = None) -> FakeMessage:
    return FakeMessage(tp[0], tp[1], off, key, value, int(time.time() * 1000))


def events(n: int) -> list[FakeMessage]:
    return [Msg(TP, i, orjson.dumps(ev), f"c{i % 3}".encode()) for i, ev in enumerate(generate_events(n, seed=5))]


def pipeline(tmp_path: Path, source: Source, extra: str = "") -> Pipeline:
    path = write_config(tmp_path / "c.toml", bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9",
                        prefix="w.", group="g", metrics_port=9, extra=extra + "[processing]\nworkers = 0\n")
    p = Pipeline(load_settings(path, aep={"authentication_required": False}), source_factory=source.factory)
    p.source = source.factory(None, p._on_assign, p._on_revoke, p._on_lost)
    return p


def close(p: Pipeline) -> None:
    p.delivery.executor.shutdown(wait=True)
    p.client.close()


def run_until(p: Pipeline, done: Any, rounds: int = 2000) -> None:
    """Turn the loop until ``done()``; each turn waits for in-flight senders, so no timing is involved."""
    for _ in range(rounds):
        p.run_once()
        p.delivery.dispatch(time.monotonic(), flush=True)  # no waiting for the linger
        for fl in list(p.delivery.inflight.values()):
            fl.future.exception()  # wait for the sender thread to finish this batch
        if done():
            return
    raise AssertionError("the pipeline did not get there")


def test_a_sender_that_raises_once_loses_nothing_and_the_commit_point_moves(tmp_path: Path) -> None:
    src = Source(events(30))
    p = pipeline(tmp_path, src)
    delivered: list[int] = []
    calls = {"n": 0}

    def deliver(records: list[Any], _cancel: threading.Event) -> BatchResult:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in the sender")
        delivered.extend(r.offset for r in records)
        return BatchResult(records, requests=1)

    p.sink.deliver = deliver  # type: ignore[method-assign]
    before = METRICS.sender_errors._value.get()
    try:
        run_until(p, lambda: src.stored.get(TP) == 30)
    finally:
        close(p)
    assert calls["n"] >= 2 and METRICS.sender_errors._value.get() == before + 1
    assert sorted(delivered) == list(range(30))  # each record once, none lost
    assert delivered == sorted(delivered)  # and in order: the batch went back to the head of its lane
    assert p.delivery.sender_errors == 0 and p.exit_code == 0


def test_a_sender_that_keeps_raising_stops_the_process_without_committing(tmp_path: Path) -> None:
    src = Source(events(10))
    p = pipeline(tmp_path, src)

    def deliver(records: list[Any], _cancel: threading.Event) -> BatchResult:
        raise RuntimeError("always")

    p.sink.deliver = deliver  # type: ignore[method-assign]
    try:
        run_until(p, lambda: p.stop_event.is_set())
    finally:
        close(p)
    assert p.exit_code == ExitCode.SENDER and "3 times in a row" in p.stop_reason
    assert src.stored == {}


class NeverConfirms:
    """A dead-letter producer whose writes are never confirmed (a broker that does not answer)."""

    def __init__(self, _conf: dict[str, Any]) -> None:
        pass

    def produce(self, *_a: Any, **_k: Any) -> None:
        pass

    def poll(self, _t: float = 0) -> int:
        return 0

    def flush(self, _t: float = 0) -> int:
        return 0


def poison_among_good(n: int, poison_at: int) -> list[FakeMessage]:
    msgs = events(n)
    msgs[poison_at] = Msg(TP, poison_at, b"{not json", b"c0")
    return msgs


def test_a_record_holding_the_commit_point_is_named_and_counted(tmp_path: Path, caplog) -> None:
    src = Source(poison_among_good(20, 5))
    p = pipeline(tmp_path, src, "stall_warning_s = 30\n")
    p.dlq = DeadLetterWriter("dlq", {}, NeverConfirms)
    p.sink.deliver = lambda records, _c: BatchResult(records, requests=1)  # type: ignore[method-assign]
    try:
        # every record but the poison delivered; the commit point stays at it
        run_until(p, lambda: src.stored.get(TP) == 5 and not p.batcher.queued() and not p.delivery.inflight
                  and p.tracker.pending == 15)
        t0 = time.monotonic()
        p.housekeeping.check_stalls(t0)  # the loop calls it every second; here with a chosen clock
        p.housekeeping.check_stalls(t0 + 29)
        assert METRICS.stalled_partitions._value.get() == 0
        with caplog.at_level(logging.WARNING, logger="connector.pipeline.housekeeping"):
            p.housekeeping.check_stalls(t0 + 31)
            p.housekeeping.check_stalls(t0 + 32)  # logged once per stall_warning_s, not every check
        assert METRICS.stalled_partitions._value.get() == 1
        lines = [r.getMessage() for r in caplog.records if "has not moved" in r.getMessage()]
        assert len(lines) == 1 and "w.points[0]@5" in lines[0] and "14 later records" in lines[0]
    finally:
        close(p)


def test_an_unusable_dead_letter_topic_stops_with_exit_code_6_and_readiness_says_why(tmp_path: Path) -> None:
    class Refuses(NeverConfirms):
        def __init__(self, conf: dict[str, Any]) -> None:
            self.pending: list[Any] = []

        def produce(self, *_a: Any, on_delivery: Any, **_k: Any) -> None:
            self.pending.append(on_delivery)

        def poll(self, _t: float = 0) -> int:
            pending, self.pending = self.pending, []
            for cb in pending:
                cb(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), None)
            return len(pending)

    src = Source(poison_among_good(12, 3))
    p = pipeline(tmp_path, src)
    p.dlq = DeadLetterWriter("dlq", {}, Refuses)
    p.sink.deliver = lambda records, _c: BatchResult(records, requests=1)  # type: ignore[method-assign]
    code = p.run()
    assert code == ExitCode.DLQ
    assert "TOPIC_AUTHORIZATION_FAILED" in p.stop_reason and p.dlq.unusable
    assert src.stored.get(TP, 0) <= 3  # never past the record whose letter was refused
    assert src.committed and src.closed


@pytest.fixture(autouse=True)
def _reset_gauges() -> Any:
    yield
    METRICS.stalled_partitions.set(0)


def test_identities_aep_would_skip_are_counted_and_the_record_still_delivered(tmp_path: Path, caplog) -> None:
    msgs = events(6)
    ev = orjson.loads(msgs[2].value())
    ev.setdefault("data", {}).setdefault("customerIdentifiers", {"customerId": 1})["instore"] = {
        "cardNumbers": ["CARD-1", "7" * 5000]}
    msgs[2] = Msg(TP, 2, orjson.dumps(ev), b"c2")
    src = Source(msgs)
    p = pipeline(tmp_path, src)
    sent: list[bytes] = []

    def deliver(records: list[Any], _cancel: threading.Event) -> BatchResult:
        sent.extend(m for r in records for m in r.messages)
        return BatchResult(records, requests=1)

    p.sink.deliver = deliver  # type: ignore[method-assign]
    before = METRICS.identities_dropped.labels("too_long")._value.get()
    try:
        with caplog.at_level(logging.WARNING, logger="connector.pipeline.loop"):
            run_until(p, lambda: src.stored.get(TP) == 6)
    finally:
        close(p)
    assert METRICS.identities_dropped.labels("too_long")._value.get() == before + 1
    assert not any(b"7" * 5000 in m for m in sent)  # never sent
    assert sum("AEP would skip (too_long)" in r.getMessage() for r in caplog.records) == 1


def test_the_loop_counts_the_time_it_found_no_input_unless_it_paused_itself(tmp_path: Path) -> None:
    """capillary_aep_input_wait_seconds_total is what bench/run.py reads to say that idle workers wait
    on Kafka: it grows on turns that fetched nothing while there was room, not on turns with records,
    nor while consumption is paused by the pipeline's own buffers (that is delivery's backpressure)."""
    src = Source(events(5))
    p = pipeline(tmp_path, src)
    p.sink.deliver = lambda records, _cancel: BatchResult(records, requests=1)  # type: ignore[method-assign]
    try:
        waited = METRICS.input_wait._value.get
        before = waited()
        p.run_once()  # five records: not a wait
        assert waited() == before
        run_until(p, lambda: src.stored.get(TP) == 5)
        before = waited()
        p.run_once()
        p.run_once()
        assert waited() > before  # nothing left to fetch: each turn counted (≥ the 5 ms it waits)
        p.membership.paused = True
        before = waited()
        p.run_once()
        assert waited() == before
    finally:
        close(p)


def test_full_buffers_hold_reading_and_keep_what_was_fetched_pausing_only_past_the_slack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At delivery.max_buffered_records the loop stops reading (librdkafka keeps its prefetched queue;
    a pause would discard it); it pauses only when the reads that serve callbacks while holding have
    taken the buffer past 1.5 × the bound (a long outage)."""
    import connector.pipeline.loop as pipeline_module

    src = Source(events(300), batch=50)
    p = pipeline(tmp_path, src, extra="max_buffered_records = 100\n")  # appended to [delivery]
    release = threading.Event()

    def deliver(records: list[Any], _cancel: threading.Event) -> BatchResult:
        release.wait(30)  # the inlet does not answer until the test says so
        return BatchResult(records, requests=1)

    p.sink.deliver = deliver  # type: ignore[method-assign]
    try:
        monkeypatch.setattr(pipeline_module, "HOLD_POLL_INTERVAL_S", 3600.0)
        waits: list[float] = []
        wait = p.delivery.wait
        monkeypatch.setattr(p.delivery, "wait", lambda t: (waits.append(t), wait(t)))
        held = METRICS.input_held._value.get()
        for _ in range(6):
            p.run_once()
        assert src.pos == 100  # two batches read, then nothing: the buffer is at its bound
        assert not p.paused
        assert METRICS.input_held._value.get() > held
        assert len(waits) >= 4  # each held turn blocks on the request in flight instead of spinning
        monkeypatch.setattr(pipeline_module, "HOLD_POLL_INTERVAL_S", 0.0)  # every held turn serves callbacks
        p.run_once()
        assert p.paused and src.pos == 150  # 150 buffered = 1.5 × the bound: paused
        release.set()
        run_until(p, lambda: src.stored.get(TP) == 300)
        assert not p.paused
    finally:
        release.set()
        close(p)
