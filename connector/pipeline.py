"""The worker: source → decode → transform → batch → sink, with offsets stored only after delivery.

One thread polls Kafka, decodes, transforms and batches (CPU work is GIL-bound anyway); a small
pool of sender threads, one per lane, does the HTTP. Everything that touches the consumer (store,
pause, resume, rebalance callbacks) happens on the polling thread, as librdkafka requires.

Delivery guarantee (at least once): a record's offset is released for commit only when every XDM
message made from it was accepted by AEP, or the record was confirmed written to the dead-letter
topic. Duplicates happen after a crash, a revoke whose in-flight batch outlived its deadline, or a
partial 207 retry; they carry the same deterministic ``_id``.
"""

from __future__ import annotations

import gc
import os
import logging
import signal
import sys
import threading
import time
from collections import Counter as Tally
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx
from confluent_kafka import KafkaError

from connector.auth import TokenProvider
from connector.batch import Batcher, PendingRecord
from connector.config import Settings
from connector.dlq import DeadLetter, DeadLetterWriter
from connector.errors import AuthFailure, RegistryUnavailable, TransientError
from connector.metrics import METRICS, observe_many
from connector.offsets import OffsetTracker, TopicPartition
from connector.placement import HELD, Placement
from connector.egress import aep_client
from connector.registry import RegistryLookup
from connector.governor import Governor
from connector.sink import BatchResult, Sink
from connector.source import LAG, Source, producer_config
from connector.transform.events import SPECS
from connector.workers import (
    EMPTY,
    OK,
    Outcome,
    ProcessorSpec,
    RecordProcessor,
    WorkerCrashed,
    WorkerPool,
    resolve_workers,
    tune_malloc,
)

log = logging.getLogger(__name__)

_AUTH_PROBE_INTERVAL_S = 30.0
_SWITCH_INTERVAL_S = 0.001
_CLOSE_TIMEOUT_S = 5.0  # consumer close (leave the group, final commit): part of the shutdown bound
_FULL_CHUNK = 256  # records: a chunk worth queueing behind the one a worker is on
_MAX_CHUNK = 1_000  # records per chunk: bounds the memory of a hand-off on both sides
_PLACEMENT_INTERVAL_S = 1.0  # how often the workers' loads are compared (see connector.placement)
_HOUSEKEEPING_INTERVAL_S = 1.0  # stall check, catch-up ETA and worker memory, once a second
_ETA_WINDOW_S = 60.0  # the catch-up ETA divides the lag by the acknowledgement rate over this window
_MAX_SENDER_ERRORS = 3  # batches in a row whose sender raised: then stop (exit code 7), not spin

# Exit codes of ``capillary-aep run`` (README, docs/operations.md). Every one commits what was
# acknowledged before it stops, and nothing else.
EXIT_OK = 0
EXIT_REGISTRY = 3  # the Schema Registry cannot be reached
EXIT_CONSUMER = 4  # fatal consumer error (e.g. max.poll.interval.ms exceeded)
EXIT_WORKERS = 5  # transform workers crash in a loop
EXIT_DLQ = 6  # the dead-letter topic cannot take letters (authorization, unknown topic, size)
EXIT_SENDER = 7  # the sender keeps failing with an internal error


@dataclass(slots=True)
class _InFlight:
    future: Future[BatchResult]
    cancel: threading.Event
    tps: frozenset[TopicPartition]
    records: list[PendingRecord]


class Pipeline:
    def __init__(self, settings: Settings, *, source_factory: Any = Source) -> None:
        tune_malloc()
        self.settings = s = settings
        self.tracker = OffsetTracker()
        self.batcher = Batcher(s.batch.lanes, s.batch.max_records, s.batch.max_bytes, s.batch.linger_ms / 1000)
        self.spec = ProcessorSpec(s.decode, s.xdm, s.aep.org_id, s.aep.source_name, self.batcher.max_record_size,
                                  s.log.level, s.log.format)
        self.workers = resolve_workers(s.processing.workers)
        # Writer schemas are fetched here, on the consumer's side, in both modes (workers do no I/O).
        self.registry_lookup = RegistryLookup.from_config(s.decode) if s.decode.schema_registry_url else None
        # Decode → transform → encode on this thread when there are no workers; with workers the
        # consumer process keeps no transformer (its validator and schemas would be unused memory).
        self.processor = RecordProcessor(self.spec, self.registry_lookup) if self.workers == 0 else None
        self.pool: WorkerPool | None = None  # started by run()
        self.placement = Placement(max(1, self.workers))
        self._next_placement = 0.0
        self._chunks: dict[int, list[tuple[Any, TopicPartition, int]]] = {}  # seq → records at a worker
        self._waiting: dict[int, list[tuple[Any, TopicPartition, int]]] = {}  # worker → records for its next chunk
        self.client = aep_client(
            s.aep.http,
            timeout=httpx.Timeout(s.delivery.request_timeout_s, connect=s.delivery.connect_timeout_s),
            limits=httpx.Limits(max_connections=s.batch.lanes + 1, max_keepalive_connections=s.batch.lanes + 1,
                                keepalive_expiry=60),
        )
        self.tokens = TokenProvider(s.aep.ims, self.client) if s.aep.authentication_required else None
        self.governor = Governor(s.delivery.max_messages_per_s, s.delivery.max_profile_messages_per_s)
        self.sink = Sink(s.aep, s.delivery, self.client, self.tokens, s.batch.lanes,
                         coalesce_profiles=s.batch.coalesce_profiles, max_bytes=s.batch.max_bytes,
                         governor=self.governor)
        self._ack_samples: deque[tuple[float, int]] = deque()  # (time, acknowledged so far), last minute
        METRICS.catchup_objective.set(s.delivery.catchup_objective_s)
        self.executor = ThreadPoolExecutor(max_workers=s.batch.lanes, thread_name_prefix="sender")
        self.inflight: dict[int, _InFlight] = {}
        self.dlq = DeadLetterWriter(s.kafka.dlq_topic, producer_config(s.kafka))
        self._source_factory = source_factory
        self.source: Any = None
        self.paused = False
        self.stop_event = threading.Event()
        self.last_loop = time.monotonic()
        self.exit_code = 0
        self._last_auth_probe = 0.0
        self._next_housekeeping = 0.0  # stall check, catch-up ETA, worker memory
        self._stall_logged: dict[TopicPartition, float] = {}
        self._dropped_logged: set[str] = set()
        self.sender_errors = 0  # batches in a row whose sender raised
        self.stop_reason = ""  # why the pipeline stopped on its own (for /readyz and the log)
        self._topic_counters: dict[str, Any] = {}
        self._decoded_counters: dict[tuple[str, str], Any] = {}

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
        self.source = self._source_factory(
            self.settings.kafka, self._on_assign, self._on_revoke, self._on_lost
        )
        METRICS.up.set(1)
        METRICS.transform_workers.set(self.workers)
        if self.workers:
            self.pool = WorkerPool(self.workers, self.spec, self.registry_lookup)
            log.info("decoding and transforming in %d worker processes (pids %s)", self.workers, self.pool.pids)
        self._probe_auth(force=True)
        # Everything built so far (modules, compiled validator, schemas, clients) lives as long as the
        # process: keep it out of the cyclic GC's full collections, which otherwise walk it all
        # (pauses of ~100 ms on this kind of box, seen as p99.9 latency).
        gc.freeze()
        log.info("consuming %s as group %s", self.settings.kafka.topics, self.settings.kafka.group_id)
        try:
            while not self.stop_event.is_set():
                self.run_once()
        except RegistryUnavailable as exc:
            log.error("%s: stopping without committing the undecoded records", exc)
            self._stop(EXIT_REGISTRY, str(exc))
        except WorkerCrashed as exc:
            log.error("%s: stopping without committing the records they had", exc)
            self._stop(EXIT_WORKERS, str(exc))
        finally:
            self._shutdown()
            METRICS.up.set(0)
        return self.exit_code

    def run_once(self) -> None:
        pool = self.pool
        if pool is not None and sum(map(len, self._waiting.values())) >= _MAX_CHUNK * len(pool):
            msgs = []  # the workers are the bottleneck: wait for them instead of reading further ahead
            self._collect_outcomes(0.01)
        else:
            # With chunks at the workers, do not sit in the consumer's wait while answers are due.
            msgs = self.source.consume(0.0 if pool is not None and pool.outstanding else None)
        now = time.monotonic()
        self.last_loop = now
        if msgs:
            self._ingest(msgs, now)
        if pool is not None and pool.outstanding:
            self._collect_outcomes(0.0 if msgs else 0.005)
        if pool is not None and now >= self._next_placement:
            self._next_placement = now + _PLACEMENT_INTERVAL_S
            self._balance_workers()
        self._collect()
        self._dispatch(now)
        self.dlq.poll(0)
        self._check_dlq()
        self._store()
        self._backpressure()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_INTERVAL_S
            self._check_stalls(now)
            self._catchup_eta(now)
            if self.pool is not None:
                METRICS.worker_memory.set(sum(map(_rss_bytes, self.pool.pids)))
        # While idle no sender refreshes the token: renew it here so /readyz stays truthful.
        if self.sink.auth_failed or (self.tokens is not None and not self.inflight and not self.tokens.valid()):
            self._probe_auth()

    # == ingest: decode → transform → encode (here or in workers) → batch ======================
    def _ingest(self, msgs: list[Any], now: float) -> None:
        """Track what was consumed, then process it: on this thread, or in the worker owning each
        partition (its outcomes come back through ``_collect_outcomes``)."""
        received = self.tracker.received
        consumed: list[str] = []
        entries: list[tuple[Any, TopicPartition, int]] = []
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
        if not entries:
            return
        pool = self.pool
        if pool is None:
            assert self.processor is not None
            self._integrate(entries, self.processor.run([e[0].value() for e in entries]), now)
            return
        waiting = self._waiting
        owner = self.placement.owner
        for e in entries:
            waiting.setdefault(owner(e[1]), []).append(e)
        self.placement.count(e[1] for e in entries)
        self._feed_workers()

    def _feed_workers(self) -> None:
        """Send each worker the records waiting for it, as one chunk, when it is idle, or when it
        is busy with one chunk and a full one is ready. Under load, records pile up while a worker
        works, so chunks grow with the rate (fewer, cheaper hand-offs); at a trickle, each goes at
        once (latency)."""
        pool = self.pool
        assert pool is not None
        for worker_no in list(self._waiting):
            if worker_no == HELD:
                continue
            chunk = self._waiting[worker_no]
            busy = pool.busy(worker_no)
            if busy == 0 or (busy == 1 and len(chunk) >= _FULL_CHUNK):
                if len(chunk) > _MAX_CHUNK:
                    self._waiting[worker_no] = chunk[_MAX_CHUNK:]
                    chunk = chunk[:_MAX_CHUNK]
                else:
                    del self._waiting[worker_no]
                self._chunks[pool.submit(worker_no, [e[0].value() for e in chunk])] = chunk

    def _balance_workers(self) -> None:
        """Move one partition from the busiest worker to the least busy one if the load is uneven
        (``connector.placement``): hold its records until the old worker is done with it."""
        move = self.placement.plan()
        if move is None:
            return
        tp, src, dst = move
        self.placement.hold(tp, dst)
        # Records of tp waiting for the old worker are held too, ahead of any that arrive later.
        self._shift_waiting(tp, src, HELD)
        log.debug("moving %s[%d] from transform worker %d to %d", tp[0], tp[1], src, dst)
        self._release_moved()

    def _release_moved(self) -> None:
        """Partitions on the move whose old worker has answered every chunk holding them: theirs
        are the records held, in order, and every later one."""
        pool = self.pool
        assert pool is not None
        for tp, (src, _dst) in list(self.placement.moving.items()):
            if any(e[1] == tp for seq in pool.pending(src) for e in self._chunks[seq]):
                continue
            self._shift_waiting(tp, HELD, self.placement.release(tp))
            METRICS.partition_moves.inc()

    def _shift_waiting(self, tp: TopicPartition, src: int, dst: int) -> None:
        """Move tp's waiting records from one list to the end of another, in order."""
        chunk = self._waiting.get(src)
        if not chunk:
            return
        mine = [e for e in chunk if e[1] == tp]
        if not mine:
            return
        rest = [e for e in chunk if e[1] != tp]
        if rest:
            self._waiting[src] = rest
        else:
            del self._waiting[src]
        self._waiting.setdefault(dst, []).extend(mine)

    def _drop_waiting(self, tps: set[TopicPartition]) -> None:
        """Records of revoked partitions not yet sent to a worker: not worth transforming (those at
        a worker are dropped when their outcomes come back, by epoch). Their placement is forgotten
        too, a move under way included."""
        self.placement.forget(tps)
        for worker_no, chunk in list(self._waiting.items()):
            keep = [e for e in chunk if e[1] not in tps]
            if keep:
                self._waiting[worker_no] = keep
            else:
                del self._waiting[worker_no]

    def _collect_outcomes(self, timeout: float) -> None:
        if self.pool is not None:
            if self.pool.collect(timeout, self._on_outcomes) and self.placement.moving:
                self._release_moved()
            if self._waiting:
                self._feed_workers()

    def _on_outcomes(self, seq: int, outcomes: list[Outcome]) -> None:
        self._integrate(self._chunks.pop(seq), outcomes, time.monotonic())

    def _integrate(self, entries: list[tuple[Any, TopicPartition, int]], outcomes: list[Outcome],
                   now: float) -> None:
        # The hot loop: per record only what must be per record. Metric labels are collected in
        # lists and counted once per chunk (Counter counts a list in C).
        epoch_of = self.tracker.epoch
        ack = self.tracker.ack
        add = self.batcher.add
        decoded: list[tuple[str, str]] = []
        transformed: list[tuple[str, str]] = []
        for (m, tp, epoch), o in zip(entries, outcomes):
            if epoch_of(tp) != epoch:
                continue  # revoked while a worker had it: the next owner reads it again
            kind = o[0]
            if kind == OK:
                decoded.append((tp[0], o[1]))
                transformed += o[3]
                add(PendingRecord(tp, m.offset(), epoch, m.timestamp()[1], m.key(), m.value(), m.headers(), o[2],
                                  o[3], o[4]), now)
                if len(o) > 5:
                    self._identities_dropped(tp, m.offset(), o[5])
            elif kind == EMPTY:
                decoded.append((tp[0], o[1]))
                ack(tp, epoch, m.offset())  # nothing to send for this record (e.g. filtered)
            else:
                _, stage, error_class, reason, detail, http_status, fmt = o
                if fmt is not None:
                    decoded.append((tp[0], fmt))
                self._dead_letter(m, tp, epoch, stage, error_class, reason, detail, http_status)
        for key, n in Tally(decoded).items():
            child = self._decoded_counters.get(key)
            if child is None:
                child = self._decoded_counters[key] = METRICS.records_decoded.labels(*key)
            child.inc(n)
        for (kind, etype), n in Tally(transformed).items():
            METRICS.records_transformed.labels(kind, _event_type_label(etype)).inc(n)

    def _identities_dropped(self, tp: TopicPartition, offset: int, reasons: tuple[str, ...]) -> None:
        """Identities AEP would skip, left out of a record: counted, logged once per reason."""
        for reason, n in Tally(reasons).items():
            METRICS.identities_dropped.labels(reason).inc(n)
            if reason not in self._dropped_logged:
                self._dropped_logged.add(reason)
                log.warning("left an identity AEP would skip (%s) out of %s[%d]@%d; counted in "
                            "capillary_aep_identities_dropped_total, not logged again", reason, tp[0], tp[1], offset)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            return  # EOF is not an error; a regex subscription may match no topic yet
        if err.fatal() or err.code() == KafkaError._MAX_POLL_EXCEEDED:
            log.error("fatal consumer error: %s; stopping", err)
            self._stop(EXIT_CONSUMER, f"fatal consumer error: {err.name()}")
            return
        log.warning("consumer error: %s", err)

    def _dead_letter(self, m: Any, tp: TopicPartition, epoch: int, stage: str, error_class: str, reason: str,
                     detail: str, http_status: int | None = None) -> None:
        letter = DeadLetter(tp[0], tp[1], m.offset(), m.key(), m.value(), m.headers(), stage, error_class, reason,
                            detail, http_status)
        self._send_dead_letter(letter, epoch)

    def _send_dead_letter(self, letter: DeadLetter, epoch: int) -> None:
        tp = (letter.topic, letter.partition)
        log.warning("dead-lettering %s[%d]@%d at %s: %s %s", tp[0], tp[1], letter.offset, letter.stage,
                    letter.reason, letter.detail[:200])
        self.dlq.send(letter, lambda dl: self._ack(tp, epoch, dl.offset))

    def _ack(self, tp: TopicPartition, epoch: int, offset: int) -> None:
        if self.tracker.ack(tp, epoch, offset):
            self._topic_counter(tp[0]).inc()

    def _topic_counter(self, topic: str) -> Any:
        c = self._topic_counters.get(topic)
        if c is None:
            c = self._topic_counters[topic] = METRICS.records_acknowledged.labels(topic)
        return c

    # == dispatch and completion ==============================================================
    def _dispatch(self, now: float, flush: bool = False) -> None:
        if self.sink.auth_failed and self.inflight:
            return
        for lane_no in range(len(self.batcher.lanes)):
            if lane_no in self.inflight or not self.batcher.ready(lane_no, now, flush):
                continue
            records = self.batcher.take(lane_no, now)
            cancel = threading.Event()
            future = self.executor.submit(self.sink.deliver, records, cancel)
            self.inflight[lane_no] = _InFlight(future, cancel, frozenset(r.tp for r in records), records)
        METRICS.inflight_batches.set(len(self.inflight))

    def _collect(self) -> None:
        for lane_no, fl in list(self.inflight.items()):
            if fl.future.done():
                del self.inflight[lane_no]
                self._complete(lane_no, fl)

    def _complete(self, lane_no: int, fl: _InFlight) -> None:
        try:
            result = fl.future.result()
        except Exception:  # a bug in the sender must not lose records: the batch goes back, in order
            self.sender_errors += 1
            METRICS.sender_errors.inc()
            log.exception("sender failed (%d in a row); its %d records are queued again", self.sender_errors,
                          len(fl.records))
            self._requeue(lane_no, fl.records)
            if self.sender_errors >= _MAX_SENDER_ERRORS:
                self._stop(EXIT_SENDER, f"the sender failed {self.sender_errors} times in a row")
            return
        self.sender_errors = 0
        tracker = self.tracker
        if result.abandoned:
            self._requeue(lane_no, result.records)
            return
        # Per record: the offset acknowledgement. Metrics are updated once per batch.
        ack = tracker.ack
        failures = result.failures
        delivered: list[tuple[str, str]] = []
        born: list[int] = []
        acked: list[str] = []
        for i, rec in enumerate(result.records):
            failure = failures.get(i) if failures else None
            if failure is None:
                delivered += rec.labels
                born.append(rec.timestamp_ms)
                if ack(rec.tp, rec.epoch, rec.offset):
                    acked.append(rec.tp[0])
            elif tracker.epoch(rec.tp) == rec.epoch:
                letter = DeadLetter(rec.tp[0], rec.tp[1], rec.offset, rec.key, rec.value, rec.headers, "deliver",
                                    "AepRejected", f"aep_{failure.status}", "", failure.status, failure.message,
                                    failure.xaction_id)
                self._send_dead_letter(letter, rec.epoch)
        now_ms = time.time() * 1000
        observe_many(METRICS.delivery_latency, [max(0.0, (now_ms - ts) / 1000) for ts in born])
        for topic, n in Tally(acked).items():
            self._topic_counter(topic).inc(n)
        for (kind, etype), n in Tally(delivered).items():
            METRICS.records_delivered.labels(kind, _event_type_label(etype)).inc(n)

    def _requeue(self, lane_no: int, records: list[PendingRecord]) -> None:
        """Put a batch back at the head of its lane (records of revoked partitions aside)."""
        keep = [r for r in records if self.tracker.epoch(r.tp) == r.epoch]
        self.batcher.requeue_front(lane_no, keep, time.monotonic())

    def _stop(self, code: int, reason: str) -> None:
        """Stop on our own: the drain is skipped, what was acknowledged is committed."""
        if self.exit_code == EXIT_OK:
            self.exit_code = code
            self.stop_reason = reason
        self.stop_event.set()

    def _check_dlq(self) -> None:
        if self.dlq.unusable and self.exit_code == EXIT_OK:
            log.error("%s: stopping (exit code %d); the records it could not take are not committed",
                      self.dlq.unusable, EXIT_DLQ)
            self._stop(EXIT_DLQ, self.dlq.unusable)

    def _check_stalls(self, now: float) -> None:
        """Name every partition whose commit point is held by one record while later ones are
        acknowledged (a record stuck in delivery or in the dead-letter topic): log once per
        ``stall_warning_s`` each, and keep the gauge current."""
        after = self.settings.delivery.stall_warning_s
        stalled = self.tracker.stalled(now, after)
        METRICS.stalled_partitions.set(len(stalled))
        for tp, offset, age, behind in stalled:
            if now - self._stall_logged.get(tp, float("-inf")) >= after:
                self._stall_logged[tp] = now
                log.warning("commit point of %s[%d] has not moved for %.0fs: %s[%d]@%d is not acknowledged while "
                            "%d later records are", tp[0], tp[1], age, tp[0], tp[1], offset, behind)
        if len(self._stall_logged) > len(stalled):
            current = {s[0] for s in stalled}
            self._stall_logged = {tp: t for tp, t in self._stall_logged.items() if tp in current}

    def _catchup_eta(self, now: float) -> None:
        """Consumer lag ÷ the acknowledgement rate over the last minute: when the backlog clears."""
        samples = self._ack_samples
        samples.append((now, self.tracker.acked_total))
        while samples and now - samples[0][0] > _ETA_WINDOW_S:
            samples.popleft()
        lag = sum(LAG.get(tp, 0) for tp in self.tracker.assigned())
        span = now - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
        METRICS.catchup_eta.set(0.0 if lag == 0 else lag / rate if rate > 0 else float("inf"))

    def _update_shares(self) -> None:
        """This replica's part of the send budget follows its part of the partitions."""
        if self.governor.enabled and self.source is not None:
            total = self.source.partition_count()
            if total:
                self.governor.rebalanced(len(self.tracker.assigned()), total)

    def _store(self) -> None:
        offsets = self.tracker.take_committable()
        if offsets:
            self.source.store(offsets)
        METRICS.buffered_records.set(self.tracker.pending)

    # == backpressure and auth ================================================================
    def _backpressure(self) -> None:
        d = self.settings.delivery
        pending = self.tracker.pending
        buffered = self.batcher.queued_bytes()
        over = pending >= d.max_buffered_records or buffered >= d.max_buffered_bytes or self.sink.auth_failed
        if over and not self.paused:
            self.paused = True
            self.source.pause(self.tracker.assigned())
            METRICS.paused_partitions.set(len(self.tracker.assigned()))
            log.info("pausing consumption: %d records buffered%s", pending,
                     " (credentials rejected)" if self.sink.auth_failed else "")
        elif self.paused and not self.sink.auth_failed and not self.stop_event.is_set() \
                and pending < d.max_buffered_records // 2 and buffered < d.max_buffered_bytes // 2:
            self.paused = False
            self.source.resume(self.tracker.assigned())
            METRICS.paused_partitions.set(0)
            log.info("resuming consumption")

    def _probe_auth(self, force: bool = False) -> None:
        """Fetch a token at start and, while credentials are rejected, every 30 s."""
        if self.tokens is None:
            return
        now = time.monotonic()
        if not force and now - self._last_auth_probe < _AUTH_PROBE_INTERVAL_S:
            return
        self._last_auth_probe = now
        try:
            self.tokens.token()
        except AuthFailure as exc:
            self.sink.auth_failed = True
            METRICS.auth_failed.set(1)
            log.error("%s — consumption is paused and nothing is committed until this is fixed", exc)
        except TransientError as exc:
            log.warning("IMS not reachable yet: %s", exc)
        else:
            if self.sink.auth_failed and not self.inflight:
                self.sink.auth_failed = False
                METRICS.auth_failed.set(0)

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
        self._drop_waiting(tps)
        deadline = time.monotonic() + self.settings.delivery.revoke_timeout_s
        self._finish_inflight(tps, deadline)
        self.batcher.drop_partitions(tps)  # abandoned batches may have put some back meanwhile
        offsets = {tp: off for tp in tps if (off := self.tracker.committable(tp)) is not None}
        self.source.store(offsets)
        for tp in tps:
            self.tracker.revoke(tp)
        METRICS.forget_partitions(tps)
        self._partition_gauges()
        self._update_shares()
        log.info("revoked %s; stored %s", sorted(tps), offsets)

    def _on_lost(self, parts: list[Any]) -> None:
        tps = {(p.topic, p.partition) for p in parts}
        self.batcher.drop_partitions(tps)
        self._drop_waiting(tps)
        for fl in self.inflight.values():
            if fl.tps & tps:
                fl.cancel.set()
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

    def _finish_inflight(self, tps: set[TopicPartition] | None, deadline: float) -> None:
        """Wait (bounded) for in-flight batches and dead letters touching ``tps`` (None: all)."""
        def touching() -> list[_InFlight]:
            return [fl for fl in self.inflight.values() if tps is None or fl.tps & tps]

        while (busy := touching()) and time.monotonic() < deadline:
            wait([fl.future for fl in busy], timeout=min(0.05, max(0.0, deadline - time.monotonic())),
                 return_when=FIRST_COMPLETED)
            self._collect()
            self.dlq.poll(0)
        while self.dlq.outstanding and time.monotonic() < deadline:
            self.dlq.poll(0.02)
        for fl in touching():
            fl.cancel.set()  # it returns abandoned; records of kept partitions are re-sent

    # == shutdown =============================================================================
    def _shutdown(self) -> None:
        d = self.settings.delivery
        deadline = time.monotonic() + d.drain_timeout_s
        assigned = self.tracker.assigned()
        if self.source is not None:
            self.source.pause(assigned)
            self.paused = True
            # Drain: keep serving callbacks so the member stays in the group while batches finish.
            while (self.tracker.pending or self.dlq.outstanding) and time.monotonic() < deadline \
                    and self.exit_code == 0:
                msgs = self.source.poll_callbacks(0.02 if self.pool is None or not self.pool.outstanding else 0.0)
                now = time.monotonic()
                try:
                    if msgs:
                        self._ingest(msgs, now)
                    self._collect_outcomes(0.02)
                except (RegistryUnavailable, WorkerCrashed) as exc:
                    log.error("%s: stopping the drain; what is not acknowledged is not committed", exc)
                    self._stop(EXIT_REGISTRY if isinstance(exc, RegistryUnavailable) else EXIT_WORKERS, str(exc))
                    break
                self._collect()
                self._dispatch(now, flush=True)
                self.dlq.poll(0)
                self._check_dlq()
                self._store()
                if self.sink.auth_failed:
                    break
            for fl in self.inflight.values():
                fl.cancel.set()
            self._store()
            left = self.tracker.pending
            if left:
                log.warning("stopping with %d records not acknowledged; they will be re-delivered", left)
            self.source.commit()
            closer = threading.Thread(target=self.source.close, daemon=True)
            closer.start()
            closer.join(_CLOSE_TIMEOUT_S)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None:
            self.pool.close()
        self.client.close()
        log.info("stopped")


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


# Label values must stay bounded: passthrough events (any name) share "other".
_EVENT_TYPES = frozenset(spec.event_type for spec in SPECS.values()) | {"profile"}


def _event_type_label(event_type: str) -> str:
    return event_type if event_type in _EVENT_TYPES else "other"
