"""The pipeline: source → processing → batch → delivery, with offsets stored only after delivery.

It composes the stages and owns what joins them (docs/architecture.md traces one record):

* the **source** (connector.source): the Kafka consumer, on this thread, as librdkafka requires for
  store, pause, resume and the rebalance callbacks;
* **processing** (connector.processing): decode → transform → encode, on the same thread;
* the **batcher** (connector.batch) and **delivery** (connector.delivery): per-lane batches, sent by
  sender threads through the sink;
* the **offset tracker** (connector.offsets) and the **dead-letter writer** (connector.dlq).

Delivery guarantee (at least once): a record's offset is released for commit only when every XDM
message made from it was accepted by AEP, or the record was confirmed written to the dead-letter
topic. Duplicates happen after a crash, a revoke whose in-flight batch outlived its deadline, or a
partial 207 retry; they carry the same deterministic ``_id``. Running and draining share one loop
body (:meth:`Pipeline._step`); the drain only stops reading and flushes.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections import Counter as Tally
from typing import Any

import httpx
from confluent_kafka import KafkaError

from connector.acknowledge import Ledger
from connector.auth import TokenProvider
from connector.batch import Batcher
from connector.config import Settings
from connector.delivery import Delivery
from connector.dlq import DeadLetterWriter
from connector.egress import aep_client
from connector.errors import ExitCode, RegistryUnavailable
from connector.governor import Governor
from connector.heap import tune_malloc
from connector.housekeeping import AuthProbe, Housekeeping
from connector.metrics import METRICS
from connector.offsets import OffsetTracker
from connector.process import ProcessorSpec
from connector.processing import Entry, Processing
from connector.progress import ProgressLog
from connector.registry import RegistryLookup
from connector.runtime.crash_marker import CrashMarker, SuspectBoard
from connector.sink import Sink
from connector.source import Source, producer_config

log = logging.getLogger(__name__)

_SWITCH_INTERVAL_S = 0.001
_CLOSE_TIMEOUT_S = 5.0  # consumer close (leave the group, final commit): part of the shutdown bound
# Buffers full (delivery.max_buffered_*): the loop stops reading, but still consumes this often so
# that rebalance callbacks are served; what that brings in is ingested. Past this many times the
# bounds (a long inlet outage), the assignment is paused.
HOLD_POLL_INTERVAL_S = 0.5
PAUSE_FACTOR = 1.5
# What stops the pipeline on its own, by the exception that says so.
_FATAL_CODES: dict[type[Exception], ExitCode] = {RegistryUnavailable: ExitCode.REGISTRY}
_FATAL = tuple(_FATAL_CODES)


class Pipeline:
    def __init__(self, settings: Settings, *, source_factory: Any = Source, marker: CrashMarker | None = None,
                 suspects: SuspectBoard | None = None) -> None:
        tune_malloc()
        self.settings = s = settings
        self.tracker = OffsetTracker()
        self.batcher = Batcher(s.batch.lanes, s.batch.max_records, s.batch.max_bytes, s.batch.linger_ms / 1000)
        self.spec = ProcessorSpec.from_settings(s)
        self.registry_lookup = RegistryLookup.from_config(s.decode) if s.decode.schema_registry_url else None
        self.ledger = Ledger(self.tracker, self.batcher, DeadLetterWriter(s.kafka.dlq_topic, producer_config(s.kafka)))
        self.processing = Processing(self.spec, self.registry_lookup, self.ledger.integrate, marker, suspects)
        self.client = aep_client(
            s.aep.http,
            timeout=httpx.Timeout(s.delivery.request_timeout_s, connect=s.delivery.connect_timeout_s),
            limits=httpx.Limits(max_connections=s.batch.max_inflight + 1, max_keepalive_connections=s.batch.max_inflight + 1,
                                keepalive_expiry=60),
        )
        self.tokens = TokenProvider(s.aep.ims, self.client) if s.aep.authentication_required else None
        self.governor = Governor(s.delivery.max_messages_per_s, s.delivery.max_profile_messages_per_s)
        self.sink = Sink(s.aep, s.delivery, self.client, self.tokens, s.batch.max_inflight,
                         coalesce_profiles=s.batch.coalesce_profiles, max_bytes=s.batch.max_bytes,
                         governor=self.governor)
        self.delivery = Delivery(self.batcher, self.sink, self.tracker, delivered=self.ledger.delivered,
                                 rejected=self.ledger.rejected, sender_failing=lambda why: self._stop(ExitCode.SENDER, why),
                                 per_lane=s.batch.max_inflight_per_lane)
        self.housekeeping = Housekeeping(self.tracker, s.delivery, lambda: [],
                                         s.log.progress_interval_s)
        self.auth_probe = AuthProbe(self.tokens, self.sink, time.monotonic)
        self._source_factory = source_factory
        self.source: Any = None
        self.paused = False
        self._last_consume = 0.0  # monotonic time of the last consume (the hold still serves callbacks)
        self.stop_event = threading.Event()
        self.last_loop = time.monotonic()
        self.exit_code: int = ExitCode.OK
        self.stop_reason = ""  # why the pipeline stopped on its own (for /readyz and the log)

    @property
    def dlq(self) -> DeadLetterWriter:
        return self.ledger.dlq

    @dlq.setter
    def dlq(self, writer: DeadLetterWriter) -> None:  # tests put a writer with a fake producer here
        self.ledger.dlq = writer

    @property
    def inflight(self) -> dict[int, Any]:
        return self.delivery.inflight

    @property
    def sender_errors(self) -> int:
        return self.delivery.sender_errors

    # == lifecycle ===========================================================================
    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s: draining and stopping", signal.Signals(signum).name)
            self.stop_event.set()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills at once

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        # This thread holds the GIL almost all the time (decode, transform); a sender thread that
        # blocked on its socket waits up to the switch interval (5 ms by default) every time it
        # wants the GIL back, several times per request. 1 ms keeps requests short and lanes
        # moving (bench/run.py --mode steady: p50 2.5 s -> 0.8 s at 3k records/s on 2 cores).
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self.source = self._source_factory(self.settings.kafka, self._on_assign, self._on_revoke, self._on_lost)
        METRICS.up.set(1)
        self.auth_probe(idle=True, force=True)
        # Everything built so far (modules, compiled validator, schemas, clients) lives as long as the
        # process: keep it out of the cyclic GC's full collections, which otherwise walk it all
        # (pauses of ~100 ms on this kind of box, seen as p99.9 latency).
        gc.freeze()
        log.info("consuming %s as group %s", self.settings.kafka.topics, self.settings.kafka.group_id)
        try:
            while not self.stop_event.is_set():
                self.run_once()
        except _FATAL as exc:
            self._fatal(exc)
        finally:
            self._shutdown()
            METRICS.up.set(0)
        return self.exit_code

    def run_once(self) -> None:
        now = time.monotonic()
        if self._over(1) and now - self._last_consume < HOLD_POLL_INTERVAL_S:
            # Buffers full: read nothing this turn. What librdkafka prefetched stays in its queue
            # (bounded by queued.max.messages.kbytes, and it stops fetching when that is full),
            # where a pause would throw it away to fetch it again on resume.
            self._step([], draining=False)
            self.delivery.wait(0.005)  # else the loop would spin, taking the GIL from the senders
            METRICS.input_held.inc(time.monotonic() - now)
            return
        self._last_consume = now
        paused = self.paused
        msgs = self.source.consume(None)
        self._step(msgs, draining=False)
        if not msgs and not paused:
            # Nothing fetched while the pipeline had room: time it waited for input (bench/run.py
            # reads this to tell an input-bound pipeline from a CPU-bound one).
            METRICS.input_wait.inc(time.monotonic() - now)

    def _over(self, factor: float) -> bool:
        """More than ``factor`` times the buffer bounds is pending (records or bytes)."""
        d = self.settings.delivery
        return (self.tracker.pending >= d.max_buffered_records * factor
                or self.batcher.queued_bytes() >= d.max_buffered_bytes * factor)

    def _step(self, msgs: list[Any], *, draining: bool) -> None:
        """One turn of the loop, running or draining: process what was consumed, complete and start
        requests, store what is acknowledged."""
        now = time.monotonic()
        self.last_loop = now
        if msgs:
            self._ingest(msgs)
        self.delivery.collect()
        self.delivery.dispatch(now, flush=draining)
        self.dlq.poll(0)
        self._check_dlq()
        self._store()
        if draining:
            return
        self._backpressure()
        self.housekeeping(now)
        if self.auth_probe.due(idle=not self.inflight):
            self.auth_probe(idle=not self.inflight)

    def _fatal(self, exc: Exception) -> None:
        code = next(code for cls, code in _FATAL_CODES.items() if isinstance(exc, cls))
        log.error("%s: stopping; what is not acknowledged is not committed", exc)
        self._stop(code, str(exc))

    def _stop(self, code: int, reason: str) -> None:
        """Stop on our own: the drain is skipped, what was acknowledged is committed."""
        if self.exit_code == ExitCode.OK:
            self.exit_code = code
            self.stop_reason = reason
        self.stop_event.set()

    # == ingest: consumed records → processing → batch ========================================
    def _ingest(self, msgs: list[Any]) -> None:
        """Track what was consumed, then hand it to processing (outcomes go to the ledger)."""
        received = self.tracker.received
        consumed: list[str] = []
        entries: list[Entry] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                self._consumer_error(err)
                continue
            topic = m.topic()
            tp = (topic, m.partition())
            epoch = received(tp, m.offset())
            if epoch is None:
                continue
            consumed.append(topic)
            entries.append((m, tp, epoch))
        for topic, n in Tally(consumed).items():
            METRICS.records_consumed.labels(topic).inc(n)
        if entries:
            self.processing.submit(entries)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            return  # EOF is not an error; a regex subscription may match no topic yet
        if err.fatal() or err.code() == KafkaError._MAX_POLL_EXCEEDED:
            log.error("fatal consumer error: %s; stopping", err)
            self._stop(ExitCode.CONSUMER, f"fatal consumer error: {err.name()}")
            return
        log.warning("consumer error: %s", err)

    def _store(self) -> None:
        offsets = self.tracker.take_committable()
        if offsets:
            self.source.store(offsets)
        METRICS.buffered_records.set(self.tracker.pending)

    def _check_dlq(self) -> None:
        if self.dlq.unusable and self.exit_code == ExitCode.OK:
            log.error("%s: stopping (exit code %d); the records it could not take are not committed",
                      self.dlq.unusable, ExitCode.DLQ)
            self._stop(ExitCode.DLQ, self.dlq.unusable)

    def _update_shares(self) -> None:
        """This replica's part of the send budget follows its part of the partitions."""
        if self.governor.enabled and self.source is not None:
            total = self.source.partition_count()
            if total:
                self.governor.rebalanced(len(self.tracker.assigned()), total)

    # == backpressure and auth ================================================================
    def _backpressure(self) -> None:
        """Pause the assignment when the hold is not enough: the credentials are rejected, or the
        records read while holding (to serve callbacks, ``HOLD_POLL_INTERVAL_S``) have taken the buffer
        past ``PAUSE_FACTOR`` × its bounds, as they do during a long inlet outage. Resume below the bounds."""
        over = self._over(PAUSE_FACTOR) or self.sink.auth_failed
        if over and not self.paused:
            self.paused = True
            self.source.pause(self.tracker.assigned())
            METRICS.paused_partitions.set(len(self.tracker.assigned()))
            log.info("pausing consumption: %d records buffered%s", self.tracker.pending,
                     " (credentials rejected)" if self.sink.auth_failed else "")
        elif self.paused and not self.sink.auth_failed and not self.stop_event.is_set() and not self._over(1):
            self.paused = False
            self.source.resume(self.tracker.assigned())
            METRICS.paused_partitions.set(0)
            log.info("resuming consumption")

    # == rebalance ============================================================================
    def _on_assign(self, parts: list[Any]) -> None:
        tps = [(p.topic, p.partition) for p in parts]
        for tp in tps:
            self.tracker.assign(tp)
        # librdkafka keeps an application pause across re-assignment: clear it, then re-apply ours.
        self.source.resume(tps)
        if self.paused:
            self.source.pause(tps)
        self._partition_gauges()
        self._update_shares()
        log.info("assigned %s", tps)

    def _on_revoke(self, parts: list[Any]) -> None:
        tps = {(p.topic, p.partition) for p in parts}
        tps &= set(self.tracker.assigned())
        if not tps:
            return
        self.batcher.drop_partitions(tps)
        deadline = time.monotonic() + self.settings.delivery.revoke_timeout_s
        self.delivery.finish(tps, deadline, self._between)
        while self.dlq.outstanding and time.monotonic() < deadline:
            self.dlq.poll(0.02)
        self.batcher.drop_partitions(tps)  # abandoned batches may have put some back meanwhile
        offsets = {tp: off for tp in tps if (off := self.tracker.committable(tp)) is not None}
        self.source.store(offsets)
        for tp in tps:
            self.tracker.revoke(tp)
        METRICS.forget_partitions(tps)
        self._partition_gauges()
        self._update_shares()
        log.info("revoked %s; stored %s", sorted(tps), offsets)

    def _between(self) -> None:
        """While waiting for in-flight batches: dead letters of completed ones get confirmed."""
        self.dlq.poll(0)

    def _on_lost(self, parts: list[Any]) -> None:
        tps = {(p.topic, p.partition) for p in parts}
        self.batcher.drop_partitions(tps)
        self.delivery.cancel(tps)
        for tp in tps:
            self.tracker.revoke(tp)
        METRICS.forget_partitions(tps)
        self._partition_gauges()
        self._update_shares()
        log.warning("lost %s: their uncommitted records will be re-delivered by the new owner", sorted(tps))

    def _partition_gauges(self) -> None:
        assigned = len(self.tracker.assigned())
        METRICS.assigned_partitions.set(assigned)
        METRICS.paused_partitions.set(assigned if self.paused else 0)

    # == shutdown =============================================================================
    def _shutdown(self) -> None:
        """Drain: stop reading, keep serving callbacks (the member stays in the group) and run the
        loop body with every batch flushed until nothing is pending or the drain time is up; then
        commit what is acknowledged and close, within drain_timeout_s + 5 s."""
        deadline = time.monotonic() + self.settings.delivery.drain_timeout_s
        if self.source is not None:
            self.source.pause(self.tracker.assigned())
            self.paused = True
            while (self.tracker.pending or self.dlq.outstanding) and time.monotonic() < deadline \
                    and self.exit_code == ExitCode.OK and not self.sink.auth_failed:
                msgs = self.source.poll_callbacks(0.02)
                try:
                    self._step(msgs, draining=True)
                except _FATAL as exc:
                    self._fatal(exc)
            self.delivery.cancel(None)
            self._store()
            left = self.tracker.pending
            if left:
                log.warning("stopping with %d records not acknowledged; they will be re-delivered", left)
            self.source.commit()
            closer = threading.Thread(target=self.source.close, daemon=True)
            closer.start()
            closer.join(_CLOSE_TIMEOUT_S)
        self.delivery.close()
        self.client.close()
        log.info("stopped: %s", ProgressLog.totals())
