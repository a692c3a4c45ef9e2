"""The pipeline: source → processing → batch → delivery, with offsets stored only after delivery.
One pipeline is one process (connector.runtime.supervisor runs N per replica); this module composes
the stages and owns the loop that joins them (docs/architecture.md traces one record):

* the **source** (connector.kafka.source): the Kafka consumer, on this thread, as librdkafka requires for
  store, pause, resume and the rebalance callbacks (connector.pipeline.rebalance: one lifecycle for all stages);
* **processing** (connector.processing.stage): decode → transform → encode, on this thread;
* the **batcher** (connector.delivery.batch) and **delivery** (connector.delivery.lanes): per-lane batches, sent by
  sender threads through the sink;
* the **offset tracker** (connector.pipeline.offsets), the **ledger** (connector.pipeline.acknowledge) and the
  **dead-letter writer** (connector.kafka.dlq).

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

from connector.config import Settings
from connector.delivery.batch import Batcher
from connector.delivery.governor import Governor
from connector.delivery.lanes import Delivery
from connector.errors import ExitCode, RegistryUnavailable
from connector.kafka.dlq import DeadLetterWriter
from connector.kafka.source import Source, fatal_consumer_error, producer_config
from connector.pipeline import assembly
from connector.pipeline.acknowledge import Ledger
from connector.pipeline.backpressure import HOLD_POLL_INTERVAL_S, Backpressure
from connector.pipeline.housekeeping import AuthProbe, Housekeeping
from connector.pipeline.offsets import OffsetTracker
from connector.pipeline.rebalance import Membership
from connector.processing.stage import Entry, Processing
from connector.runtime.crash_marker import CrashMarker, SuspectBoard
from connector.runtime.heap import tune_malloc
from connector.telemetry.metrics import METRICS
from connector.telemetry.progress import ProgressLog

log = logging.getLogger(__name__)

_SWITCH_INTERVAL_S = 0.001
_CLOSE_TIMEOUT_S = 5.0  # consumer close (leave the group, final commit): part of the shutdown bound
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
        self.ledger = Ledger(self.tracker, self.batcher, DeadLetterWriter(s.kafka.dlq_topic, producer_config(s.kafka)))
        self.processing = Processing(assembly.record_processor(s), self.ledger.integrate, marker, suspects)
        self.client = assembly.aep_http(s, connections=s.batch.max_inflight + 1)
        self.tokens = assembly.token_provider(s, self.client)
        self.governor = Governor(s.delivery.max_messages_per_s, s.delivery.max_profile_messages_per_s)
        self.sink = assembly.sink(s, self.client, self.tokens, lanes=s.batch.max_inflight, governor=self.governor)
        self.delivery = Delivery(self.batcher, self.sink, self.tracker, delivered=self.ledger.delivered,
                                 rejected=self.ledger.rejected, sender_failing=lambda why: self._stop(ExitCode.SENDER, why),
                                 per_lane=s.batch.max_inflight_per_lane)
        self.membership = Membership(self.tracker, self.batcher, self.delivery, self.governor, lambda: self.source,
                                     lambda: self.dlq,
                                     s.delivery.revoke_timeout_s)
        self.backpressure = Backpressure(self.tracker, self.batcher, s.delivery, self.membership)
        self._on_assign, self._on_revoke, self._on_lost = (self.membership.assigned, self.membership.revoked,
                                                           self.membership.lost)
        self.housekeeping = Housekeeping(self.tracker, s.delivery, s.log.progress_interval_s)
        self.auth_probe = AuthProbe(self.tokens, self.sink, time.monotonic)
        self._source_factory = source_factory
        self.source: Any = None
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
    def paused(self) -> bool:
        return self.membership.paused

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
        # wants the GIL back, several times per request. 1 ms keeps requests short and lanes moving.
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self.source = self._source_factory(
            self.settings.kafka, self._on_assign, self._on_revoke, self._on_lost)
        METRICS.up.set(1)
        self.auth_probe(idle=True, force=True)
        # What was built so far lives as long as the process: keep it out of the cyclic GC's full
        # collections, which otherwise walk it all (pauses of ~100 ms, seen as p99.9 latency).
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
        if self.backpressure.over() and now - self._last_consume < HOLD_POLL_INTERVAL_S:
            # Buffers full: read nothing this turn. What librdkafka prefetched stays in its queue
            # (bounded by queued.max.messages.kbytes; it stops fetching when that is full), where a
            # pause would throw it away to fetch it again on resume.
            self._step([], draining=False)
            self.delivery.wait(0.005)  # else the loop would spin, taking the GIL from the senders
            METRICS.input_held.inc(time.monotonic() - now)
            return
        self._last_consume = now
        paused = self.paused
        msgs = self.source.consume(None)
        self._step(msgs, draining=False)
        if not msgs and not paused:  # nothing fetched while there was room: the input limits the rate
            METRICS.input_wait.inc(time.monotonic() - now)

    def _step(self, msgs: list[Any], *, draining: bool) -> None:
        """One turn of the loop, running or draining: process what was consumed, complete and start
        requests, store what is acknowledged."""
        now = self.last_loop = time.monotonic()
        if msgs:
            self._ingest(msgs)
        self.delivery.collect()
        self.delivery.dispatch(now, flush=draining)
        self.dlq.poll(0)
        self._check_dlq()
        self._store()
        if draining:
            return
        self.backpressure.update(self.source, self.sink.auth_failed, self.stop_event.is_set())
        self.housekeeping(now)
        if self.auth_probe.due(idle=not self.delivery.inflight):
            self.auth_probe(idle=not self.delivery.inflight)

    def _fatal(self, exc: Exception) -> None:
        code = next(code for cls, code in _FATAL_CODES.items() if isinstance(exc, cls))
        log.error("%s: stopping; what is not acknowledged is not committed", exc)
        self._stop(code, str(exc))

    def _stop(self, code: int, reason: str) -> None:
        """Stop on our own: the drain is skipped, what was acknowledged is committed."""
        if self.exit_code == ExitCode.OK:
            self.exit_code, self.stop_reason = code, reason
        self.stop_event.set()

    # == ingest: consumed records → processing → ledger → batch ==============================
    def _ingest(self, msgs: list[Any]) -> None:
        received = self.tracker.received
        consumed: list[str] = []
        entries: list[Entry] = []
        for m in msgs:
            if (err := m.error()) is not None:
                if (fatal := fatal_consumer_error(err)) is not None:
                    self._stop(ExitCode.CONSUMER, fatal)
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

    # == shutdown =============================================================================
    def _shutdown(self) -> None:
        """Drain: stop reading, keep serving callbacks (the member stays in the group) and run the
        loop body with every batch flushed until nothing is pending or the drain time is up; then
        commit what is acknowledged and close, within drain_timeout_s + 5 s."""
        deadline = time.monotonic() + self.settings.delivery.drain_timeout_s
        if self.source is not None:
            self.source.pause(self.tracker.assigned())
            self.membership.paused = True
            while (self.tracker.pending or self.dlq.outstanding) and time.monotonic() < deadline \
                    and self.exit_code == ExitCode.OK and not self.sink.auth_failed:
                msgs = self.source.poll_callbacks(0.02)
                try:
                    self._step(msgs, draining=True)
                except _FATAL as exc:
                    self._fatal(exc)
            self.delivery.cancel(None)
            self._store()
            if left := self.tracker.pending:
                log.warning("stopping with %d records not acknowledged; they will be re-delivered", left)
            self.source.commit()
            closer = threading.Thread(target=self.source.close, daemon=True)
            closer.start()
            closer.join(_CLOSE_TIMEOUT_S)
        self.delivery.close()
        self.client.close()
        log.info("stopped: %s", ProgressLog.totals())
