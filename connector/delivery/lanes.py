"""The delivery stage: batches out of the batcher, through the sink on sender threads, results back.

A partition always uses the same lane. A lane has a request in flight as soon as its batch is ready;
while it has, a further request starts only when the lane holds a full batch that carries no profile
update of a customer whose profile updates from the same partition are in flight
(``batch.max_inflight_per_lane`` at most; connector.delivery.batch.order_key), so a customer's profile
updates in a partition reach AEP in order, retries included,
and a slow inlet answer holds back only the customers it carries. :meth:`Delivery.collect` hands each finished batch to
the pipeline: ``delivered(records)`` for the records AEP accepted, ``rejected(record, failure)`` for
each it refused for good. A batch given up on (revoke, shutdown) or whose sender raised goes back to
the head of its lane, in order; ``_MAX_SENDER_ERRORS`` sender exceptions in a row call
``sender_failing(reason)`` (the pipeline stops: exit code 7) rather than spin.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from connector.delivery.batch import Batcher, PendingRecord, order_key
from connector.delivery.sink import BatchResult, MessageFailure, Sink
from connector.pipeline.offsets import OffsetTracker, TopicPartition
from connector.runtime.thread_names import name_os_thread
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

_MAX_SENDER_ERRORS = 3  # batches in a row whose sender raised: then stop (exit code 7), not spin
_LANE_STATES = ("idle", "filling", "ready", "sending", "blocked")
_IDLE, _FILLING, _READY, _SENDING, _BLOCKED = range(len(_LANE_STATES))
_RESCAN_GROWTH = 100  # records a lane must gain before its queue is scanned again for a next request
_EXPORT_INTERVAL_S = 1.0  # lane accounting reaches the Prometheus counters this often


@dataclass(slots=True)
class InFlight:
    future: Future[BatchResult]
    cancel: threading.Event
    tps: frozenset[TopicPartition]
    records: list[PendingRecord]
    lane: int = 0
    keys: set[object] | None = None  # order keys of the records, computed when a next request needs them

    def order_keys(self) -> set[object]:
        if self.keys is None:
            self.keys = {order_key(r) for r in self.records}
            self.keys.discard(None)
        return self.keys


class Delivery:
    def __init__(self, batcher: Batcher, sink: Sink, tracker: OffsetTracker, *,
                 delivered: Callable[[list[PendingRecord]], None],
                 rejected: Callable[[PendingRecord, MessageFailure], None],
                 sender_failing: Callable[[str], None], per_lane: int = 1) -> None:
        self.batcher = batcher
        self.per_lane = per_lane
        self.sink = sink
        self.tracker = tracker
        self._delivered = delivered
        self._rejected = rejected
        self._sender_failing = sender_failing
        self.executor = ThreadPoolExecutor(max_workers=len(batcher.lanes) * per_lane, thread_name_prefix="sender",
                                           initializer=name_os_thread)
        self.inflight: dict[int, InFlight] = {}  # by batch number
        self.lane_flights: list[list[InFlight]] = [[] for _ in batcher.lanes]
        self._batch_no = 0
        # A lane whose queue could not fill a next request around its busy customers: the queue
        # length and in-flight count then (no new scan before either changes).
        self._no_fill: list[tuple[int, int] | None] = [None] * len(batcher.lanes)
        self.sender_errors = 0  # batches in a row whose sender raised
        # What each lane was doing since the last dispatch (one of _LANE_STATES), and the seconds
        # it spent in each state / at each number of batches in flight, exported once a second.
        lanes = len(batcher.lanes)
        self.lane_state = [_IDLE] * lanes
        self.lane_seconds = [[0.0] * len(_LANE_STATES) for _ in range(lanes)]
        self.inflight_seconds = [0.0] * (lanes * per_lane + 1)
        self._accounted = time.monotonic()
        self._exported = self._accounted
        self._exported_seconds = [[0.0] * len(_LANE_STATES) for _ in range(lanes)]
        self._exported_inflight = [0.0] * (lanes * per_lane + 1)

    def dispatch(self, now: float, flush: bool = False) -> None:
        """Start a request on every idle lane whose batch is ready (all non-empty ones: ``flush``)."""
        self._account(now)
        batcher = self.batcher
        states = self.lane_state
        held = self.sink.auth_failed and bool(self.inflight)
        for lane_no in range(len(batcher.lanes)):
            flights = self.lane_flights[lane_no]
            if not batcher.ready(lane_no, now, flush):
                states[lane_no] = _SENDING if flights else _FILLING if batcher.lanes[lane_no].queue else _IDLE
                continue
            if held:
                states[lane_no] = _BLOCKED if flights else _READY
                continue
            if not flights:
                self._start(lane_no, batcher.take(lane_no, now))
            elif len(flights) < self.per_lane and (flush or batcher.full(lane_no)):
                self._next(lane_no, now, flush)
            states[lane_no] = _BLOCKED if batcher.ready(lane_no, now, flush) else _SENDING
        METRICS.inflight_batches.set(len(self.inflight))
        if now - self._exported >= _EXPORT_INTERVAL_S:
            self._export(now)

    def _next(self, lane_no: int, now: float, flush: bool) -> None:
        """A further request on a lane with requests in flight: records of other customers only,
        and a full batch of them unless flushing."""
        flights = self.lane_flights[lane_no]
        queued = len(self.batcher.lanes[lane_no].queue)
        last = self._no_fill[lane_no]
        if last is not None and not flush and last[1] == len(flights) and queued < last[0] + _RESCAN_GROWTH:
            return  # about what the last scan found too little in: do not scan the queue again yet
        busy: set[object] = set()
        for fl in flights:
            busy |= fl.order_keys()
        records = self.batcher.take(lane_no, now, busy, full_only=not flush)
        if records:
            self._start(lane_no, records)
        else:
            self._no_fill[lane_no] = (queued, len(flights))

    def _start(self, lane_no: int, records: list[PendingRecord]) -> None:
        self._no_fill[lane_no] = None
        cancel = threading.Event()
        future = self.executor.submit(self.sink.deliver, records, cancel)
        fl = InFlight(future, cancel, frozenset(r.tp for r in records), records, lane_no)
        self._batch_no += 1
        self.inflight[self._batch_no] = fl
        self.lane_flights[lane_no].append(fl)
        METRICS.lane_records.labels(str(lane_no)).inc(len(records))

    def _account(self, now: float) -> None:
        """Charge the time since the last dispatch to each lane's state then, and to the number of
        batches then in flight (what bench/run.py reports as the lanes' idle, filling and blocked time)."""
        dt = now - self._accounted
        if dt <= 0:
            return
        self._accounted = now
        seconds = self.lane_seconds
        for lane_no, state in enumerate(self.lane_state):
            seconds[lane_no][state] += dt
        self.inflight_seconds[min(len(self.inflight), len(self.inflight_seconds) - 1)] += dt

    def _export(self, now: float) -> None:
        self._exported = now
        for lane_no, lane in enumerate(self.batcher.lanes):
            METRICS.lane_queued.labels(str(lane_no)).set(len(lane.queue))
        for lane_no, (seconds, exported) in enumerate(zip(self.lane_seconds, self._exported_seconds)):
            for state, name in enumerate(_LANE_STATES):
                if seconds[state] > exported[state]:
                    METRICS.lane_seconds.labels(str(lane_no), name).inc(seconds[state] - exported[state])
                    exported[state] = seconds[state]
        for n, (total, exported_n) in enumerate(zip(self.inflight_seconds, self._exported_inflight)):
            if total > exported_n:
                METRICS.inflight_batch_seconds.labels(str(n)).inc(total - exported_n)
                self._exported_inflight[n] = total

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` for the first request in flight to finish (the GIL is free
        meanwhile, for the sender threads): what a loop that holds its input waits on."""
        futures = [fl.future for fl in self.inflight.values()]
        if futures:
            wait(futures, timeout, return_when=FIRST_COMPLETED)
        else:
            time.sleep(timeout)  # records wait in the lanes for their linger: nothing to wait on

    def collect(self) -> None:
        for batch_no, fl in list(self.inflight.items()):
            if fl.future.done():
                del self.inflight[batch_no]
                self.lane_flights[fl.lane].remove(fl)
                self._complete(fl.lane, fl)

    def _complete(self, lane_no: int, fl: InFlight) -> None:
        try:
            result = fl.future.result()
        except Exception:  # a bug in the sender must not lose records: the batch goes back, in order
            self.sender_errors += 1
            METRICS.sender_errors.inc()
            log.exception("sender failed (%d in a row); its %d records are queued again", self.sender_errors,
                          len(fl.records))
            self._settle(lane_no, fl.records, None)
            if self.sender_errors >= _MAX_SENDER_ERRORS:
                self._sender_failing(f"the sender failed {self.sender_errors} times in a row")
            return
        self.sender_errors = 0
        self._settle(lane_no, result.records, None if result.abandoned else result.failures)

    def _settle(self, lane_no: int, records: list[PendingRecord],
                failures: dict[int, MessageFailure] | None) -> None:
        """The one place a finished batch's records meet their fate. ``failures`` None: the batch was
        not resolved (given up on, or its sender raised) — its records of partitions still ours go back
        to the head of their lane, in order. Else each record AEP accepted is delivered (acknowledged),
        each it refused for good is dead-lettered. A record of a partition no longer ours is neither
        re-queued nor dead-lettered; accepted, it is counted delivered but its stale acknowledgement is
        ignored (``OffsetTracker.current`` decides both)."""
        current = self.tracker.current
        if failures is None:
            keep = [r for r in records if current(r.tp, r.epoch)]
            self.batcher.requeue_front(lane_no, keep, time.monotonic())
            return
        if not failures:
            self._delivered(records)
            return
        accepted = []
        for i, rec in enumerate(records):
            failure = failures.get(i)
            if failure is None:
                accepted.append(rec)
            elif current(rec.tp, rec.epoch):
                self._rejected(rec, failure)
        self._delivered(accepted)

    def touching(self, tps: set[TopicPartition] | None) -> list[InFlight]:
        return [fl for fl in self.inflight.values() if tps is None or fl.tps & tps]

    def finish(self, tps: set[TopicPartition] | None, deadline: float, between: Callable[[], None]) -> None:
        """Wait (until ``deadline``) for the batches touching ``tps`` (None: all), completing them as
        they end and calling ``between()`` while waiting; then give up on the rest: they come back
        abandoned, and records of partitions still owned are sent again."""
        while (busy := self.touching(tps)) and time.monotonic() < deadline:
            wait([fl.future for fl in busy], timeout=min(0.05, max(0.0, deadline - time.monotonic())),
                 return_when=FIRST_COMPLETED)
            self.collect()
            between()
        self.cancel(tps)

    def cancel(self, tps: set[TopicPartition] | None) -> None:
        for fl in self.touching(tps):
            fl.cancel.set()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
