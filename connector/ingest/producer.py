"""An asyncio bridge to confluent-kafka's ``Producer``: ``await deliver(records)`` returns when the
broker has acknowledged every record (``acks=all``, idempotent) or raises :class:`DeliveryFailed`.

Everything runs on the event loop: ``produce()`` only enqueues, and a timer (every millisecond
while requests wait) calls ``poll(0)``, which runs the delivery callbacks right there, so futures
are resolved without any cross-thread hand-off. (A poll thread would take the GIL back from the
busy loop for every single delivery report.) The only thread is a metadata probe for ``/readyz``.

The producer is rebuilt, and every request still waiting on the old one answered 503, when
librdkafka reports a fatal error (e.g. ProducerFenced after a stall) or when deliveries fail while
nothing has succeeded for half the produce deadline (an idempotent producer can wedge after a
broker restart: its producer id is unknown to the new broker and every epoch bump is refused).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from connector.ingest.metrics import IngestMetrics
from connector.ingest.validate import Record

log = logging.getLogger(__name__)
_KAFKA_LOG = logging.getLogger("librdkafka")

_DEADLINE = KafkaError(KafkaError._TIMED_OUT, "no acknowledgement within the produce deadline")
_BUSY_POLL_S = 0.001
_IDLE_POLL_S = 0.1

# Delivery errors that no retry can fix: the event is bigger than the broker takes.
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class DeliveryFailed(Exception):
    """The request's records are not (all) known to be in Kafka. ``cause`` is a metric label."""

    def __init__(self, cause: str, detail: str = "", permanent: bool = False) -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
        self.permanent = permanent  # True: answer 413, a retry cannot succeed


class _Request:
    """One webhook request's records in flight."""

    __slots__ = ("remaining", "future")

    def __init__(self, count: int, future: asyncio.Future[KafkaError | None]) -> None:
        self.remaining = count
        self.future = future

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:  # the loop, inside poll()
        future = self.future
        if future.done():  # already answered (deadline, first failure, producer replaced)
            return
        self.remaining -= 1
        if err is not None:
            future.set_result(err)  # the first failure decides: answer 503 now, not at the deadline
        elif self.remaining == 0:
            future.set_result(None)


class ProducerBridge:
    def __init__(self, conf: dict[str, Any], timeout_s: float, metrics: IngestMetrics) -> None:
        self._conf = conf
        self._generation = 0
        self.timeout_s = timeout_s
        self._stall_s = timeout_s / 2
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: set[_Request] = set()
        self._producer = self._new_producer()
        self._created = time.monotonic()
        self._pump_handle: asyncio.TimerHandle | None = None
        self._pump_due = 0.0
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self.last_success = 0.0
        self.last_failure = 0.0
        self.brokers_down = False
        self.reachable = False
        self.last_poll = time.monotonic()
        self.rebuilds = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule_pump(_IDLE_POLL_S)
        self._probe = threading.Thread(target=self._probe_loop, name="ingest-probe", daemon=True)
        self._probe.start()

    async def close(self, timeout: float) -> int:
        """Deliver what is queued (up to ``timeout``), stop; returns the records left undelivered."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        return len(self._producer)

    # -- the hot path (event loop) ---------------------------------------------------------------
    async def deliver(self, records: Sequence[Record]) -> None:
        """Return once every record is acknowledged; raise :class:`DeliveryFailed` otherwise."""
        if not records:
            return
        assert self._loop is not None
        req = _Request(len(records), self._loop.create_future())
        callback = req.on_delivery
        producer = self._producer
        try:
            for r in records:
                producer.produce(r.topic, r.value, r.key, on_delivery=callback)
        except BufferError:
            req.future.cancel()
            raise DeliveryFailed("queue_full", "the producer queue is full (broker slow or unreachable)") from None
        except KafkaException as exc:
            req.future.cancel()
            err = exc.args[0]
            if err.fatal():
                self._rebuild("fatal")
            raise DeliveryFailed("produce_error", err.name()) from None
        self._waiting.add(req)
        self._schedule_pump(_BUSY_POLL_S)
        try:
            async with asyncio.timeout(self.timeout_s):
                err = await req.future
        except TimeoutError:
            err = _DEADLINE
        finally:
            self._waiting.discard(req)
        now = time.monotonic()
        if err is None:
            self.last_success = now
            if self.brokers_down:
                log.info("kafka: deliveries succeed again")
                self.brokers_down = False
                self._metrics.broker_up.set(1)
            return
        if err.code() == KafkaError._PURGE_QUEUE:
            raise DeliveryFailed("reset", "the producer was replaced")
        self.last_failure = now
        if err.code() in _TOO_LARGE:
            raise DeliveryFailed("too_large", err.name(), permanent=True)
        if err.fatal():
            self._rebuild("fatal")
        elif now - self.last_success > self._stall_s and now - self._created > self._stall_s:
            self._rebuild("stalled")
        if err is _DEADLINE:
            raise DeliveryFailed("timeout", f"not acknowledged within {self.timeout_s:g}s")
        raise DeliveryFailed("delivery_error", err.name())

    def _schedule_pump(self, delay: float) -> None:
        """Serve delivery reports on the loop itself: every millisecond while requests wait, every
        100 ms otherwise (error callbacks, broker state)."""
        assert self._loop is not None
        due = self._loop.time() + delay
        if self._pump_handle is not None:
            if self._pump_due <= due:
                return
            self._pump_handle.cancel()
        self._pump_due = due
        self._pump_handle = self._loop.call_at(due, self._pump)

    def _pump(self) -> None:
        self._pump_handle = None
        self._producer.poll(0)
        self.last_poll = time.monotonic()
        if not self._stop.is_set() or self._waiting:
            self._schedule_pump(_BUSY_POLL_S if self._waiting else _IDLE_POLL_S)

    # -- failure handling ------------------------------------------------------------------------
    def _new_producer(self) -> Producer:
        self._generation += 1
        generation = self._generation

        def on_error(err: KafkaError) -> None:  # librdkafka's error callback, served by poll()
            if generation == self._generation:  # not a discarded producer being flushed elsewhere
                self._on_error(err)

        return Producer({**self._conf, "error_cb": on_error, "logger": _KAFKA_LOG})

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self.brokers_down:  # librdkafka repeats it at every reconnect attempt: log the change
                log.warning("kafka: all brokers are down")
            self.brokers_down = True
            self.reachable = False
            self._metrics.broker_up.set(0)
        elif err.fatal():
            log.error("kafka producer fatal error: %s", err)
        else:
            log.debug("kafka producer error: %s", err)
        if err.fatal():
            self._rebuild("fatal")

    def _rebuild(self, reason: str) -> None:
        """Replace the producer; requests waiting on the old one fail now (503, Capillary retries)."""
        old = self._producer
        self._producer = self._new_producer()
        self._created = time.monotonic()
        self.last_failure = 0.0
        self.rebuilds += 1
        self._metrics.producer_rebuilds.labels(reason).inc()
        log.warning("kafka producer replaced (%s); %d request(s) answered 503", reason, len(self._waiting))
        reset = KafkaError(KafkaError._PURGE_QUEUE, "producer replaced")
        for req in self._waiting:
            if not req.future.done():
                req.future.set_result(reset)
        threading.Thread(target=_discard, args=(old,), name="ingest-discard", daemon=True).start()

    # -- readiness -------------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        """Metadata round trip every couple of seconds: /readyz and ``broker_up`` without traffic."""
        while True:
            try:
                self._producer.list_topics(timeout=2)
                ok = True
            except KafkaException:
                ok = False
            self.reachable = ok
            if ok:
                self.brokers_down = False
            self._metrics.broker_up.set(1 if ok and not self.failing else 0)
            if self._stop.wait(2.0 if ok else 0.5):
                return

    @property
    def failing(self) -> bool:
        """Deliveries on the current producer failed more recently than they succeeded."""
        return self.last_failure > self.last_success

    def ready(self) -> dict[str, bool]:
        return {"broker_reachable": self.reachable and not self.brokers_down, "deliveries_succeeding": not self.failing}


def _discard(producer: Producer) -> None:
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(1.0)
    except Exception:
        log.debug("discarding the old producer failed", exc_info=True)
