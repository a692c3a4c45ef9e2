"""The delivery stage: batches out of the batcher, through the sink on sender threads, results back.

One sender thread per lane and at most one request in flight per lane (a partition always uses the
same lane, so its records reach AEP in order). :meth:`Delivery.collect` hands each finished batch to
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

from connector.batch import Batcher, PendingRecord
from connector.metrics import METRICS
from connector.offsets import OffsetTracker, TopicPartition
from connector.sink import BatchResult, MessageFailure, Sink
from connector.thread_names import name_os_thread

log = logging.getLogger(__name__)

_MAX_SENDER_ERRORS = 3  # batches in a row whose sender raised: then stop (exit code 7), not spin


@dataclass(slots=True)
class InFlight:
    future: Future[BatchResult]
    cancel: threading.Event
    tps: frozenset[TopicPartition]
    records: list[PendingRecord]


class Delivery:
    def __init__(self, batcher: Batcher, sink: Sink, tracker: OffsetTracker, *,
                 delivered: Callable[[list[PendingRecord]], None],
                 rejected: Callable[[PendingRecord, MessageFailure], None],
                 sender_failing: Callable[[str], None]) -> None:
        self.batcher = batcher
        self.sink = sink
        self.tracker = tracker
        self._delivered = delivered
        self._rejected = rejected
        self._sender_failing = sender_failing
        self.executor = ThreadPoolExecutor(max_workers=len(batcher.lanes), thread_name_prefix="sender",
                                           initializer=name_os_thread)
        self.inflight: dict[int, InFlight] = {}
        self.sender_errors = 0  # batches in a row whose sender raised

    def dispatch(self, now: float, flush: bool = False) -> None:
        """Start a request on every idle lane whose batch is ready (all non-empty ones: ``flush``)."""
        if self.sink.auth_failed and self.inflight:
            return
        for lane_no in range(len(self.batcher.lanes)):
            if lane_no in self.inflight or not self.batcher.ready(lane_no, now, flush):
                continue
            records = self.batcher.take(lane_no, now)
            cancel = threading.Event()
            future = self.executor.submit(self.sink.deliver, records, cancel)
            self.inflight[lane_no] = InFlight(future, cancel, frozenset(r.tp for r in records), records)
        METRICS.inflight_batches.set(len(self.inflight))

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` for the first request in flight to finish (the GIL is free
        meanwhile, for the sender threads): what a loop that holds its input waits on."""
        futures = [fl.future for fl in self.inflight.values()]
        if futures:
            wait(futures, timeout, return_when=FIRST_COMPLETED)
        else:
            time.sleep(timeout)  # records wait in the lanes for their linger: nothing to wait on

    def collect(self) -> None:
        for lane_no, fl in list(self.inflight.items()):
            if fl.future.done():
                del self.inflight[lane_no]
                self._complete(lane_no, fl)

    def _complete(self, lane_no: int, fl: InFlight) -> None:
        try:
            result = fl.future.result()
        except Exception:  # a bug in the sender must not lose records: the batch goes back, in order
            self.sender_errors += 1
            METRICS.sender_errors.inc()
            log.exception("sender failed (%d in a row); its %d records are queued again", self.sender_errors,
                          len(fl.records))
            self.requeue(lane_no, fl.records)
            if self.sender_errors >= _MAX_SENDER_ERRORS:
                self._sender_failing(f"the sender failed {self.sender_errors} times in a row")
            return
        self.sender_errors = 0
        if result.abandoned:
            self.requeue(lane_no, result.records)
            return
        failures = result.failures
        if not failures:
            self._delivered(result.records)
            return
        epoch_of = self.tracker.epoch
        accepted = []
        for i, rec in enumerate(result.records):
            failure = failures.get(i)
            if failure is None:
                accepted.append(rec)
            elif epoch_of(rec.tp) == rec.epoch:
                self._rejected(rec, failure)
        self._delivered(accepted)

    def requeue(self, lane_no: int, records: list[PendingRecord]) -> None:
        """Put a batch back at the head of its lane (records of revoked partitions aside)."""
        keep = [r for r in records if self.tracker.epoch(r.tp) == r.epoch]
        self.batcher.requeue_front(lane_no, keep, time.monotonic())

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
