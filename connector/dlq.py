"""Dead-letter stage: records that can never reach AEP go to a Kafka topic, with their reason.

A dead letter keeps the original key, value and headers, and adds ``dlq.*`` headers saying where it
came from and why it failed. Its source offset is acknowledged only once the broker confirmed the
dead letter (``acks=all``, idempotent producer); if the DLQ cannot be written the letter is retried
(a transient failure: nothing is committed meanwhile). A fatal producer error (e.g. the broker
answered ProducerFenced after a stall) rebuilds the producer and re-sends what was outstanding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from connector.metrics import METRICS

log = logging.getLogger(__name__)

H_TOPIC = "dlq.source.topic"
H_PARTITION = "dlq.source.partition"
H_OFFSET = "dlq.source.offset"
H_STAGE = "dlq.stage"
H_ERROR_CLASS = "dlq.error.class"
H_REASON = "dlq.reason"
H_DETAIL = "dlq.detail"
H_HTTP_STATUS = "dlq.http.status"
H_AEP_MESSAGE = "dlq.aep.message"
H_XACTION_ID = "dlq.aep.xaction_id"
H_TIME = "dlq.time"
DLQ_HEADERS = (H_TOPIC, H_PARTITION, H_OFFSET, H_STAGE, H_ERROR_CLASS, H_REASON, H_DETAIL, H_HTTP_STATUS,
               H_AEP_MESSAGE, H_XACTION_ID, H_TIME)

_RETRY_DELAY_S = 1.0


@dataclass(slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    stage: str  # decode, transform, validate, deliver
    error_class: str
    reason: str
    detail: str = ""
    http_status: int | None = None
    aep_message: str | None = None
    xaction_id: str | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        own = [
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(self.partition).encode()),
            (H_OFFSET, str(self.offset).encode()),
            (H_STAGE, self.stage.encode()),
            (H_ERROR_CLASS, self.error_class.encode()),
            (H_REASON, self.reason.encode()),
            (H_TIME, str(int(time.time() * 1000)).encode()),
        ]
        if self.detail:
            own.append((H_DETAIL, self.detail[:1000].encode()))
        if self.http_status is not None:
            own.append((H_HTTP_STATUS, str(self.http_status).encode()))
        if self.aep_message:
            own.append((H_AEP_MESSAGE, self.aep_message[:1000].encode()))
        if self.xaction_id:
            own.append((H_XACTION_ID, self.xaction_id.encode()))
        kept = [(k, v) for k, v in (self.headers or []) if not k.startswith("dlq.")]
        return kept + own


Done = Callable[[DeadLetter], None]


class DeadLetterWriter:
    """Writes dead letters; ``on_done`` runs (inside ``poll``) once the broker has each one."""

    def __init__(self, topic: str, producer_config: dict[str, Any], producer_factory: Callable[..., Any] = Producer):
        self.topic = topic
        self._config = {
            **producer_config,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 30_000,
        }
        self._factory = producer_factory
        self._producer = self._factory(self._config)
        self._outstanding: dict[int, tuple[DeadLetter, Done]] = {}
        self._retry: list[tuple[float, DeadLetter, Done]] = []
        self._seq = 0

    def send(self, letter: DeadLetter, on_done: Done) -> None:
        self._seq += 1
        seq = self._seq
        self._outstanding[seq] = (letter, on_done)
        self._produce(seq, letter)

    def _produce(self, seq: int, letter: DeadLetter) -> None:
        def delivered(err: KafkaError | None, _msg: Any, seq: int = seq) -> None:
            entry = self._outstanding.pop(seq, None)
            if entry is None:
                return
            dl, done = entry
            if err is None:
                METRICS.records_dead_lettered.labels(dl.stage, dl.reason).inc()
                done(dl)
                return
            log.warning("dead-letter write failed (%s); retrying", err.name())
            if err.fatal():
                self._rebuild()
            self._retry.append((time.monotonic() + _RETRY_DELAY_S, dl, done))

        try:
            self._producer.produce(
                self.topic, value=letter.value, key=letter.key, headers=letter.kafka_headers(), on_delivery=delivered
            )
        except (BufferError, KafkaException) as exc:
            entry = self._outstanding.pop(seq, None)
            if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
                if exc.args[0].fatal():
                    self._rebuild()
            if entry is not None:
                delay = 0.1 if isinstance(exc, BufferError) else _RETRY_DELAY_S
                self._retry.append((time.monotonic() + delay, *entry))

    def _rebuild(self) -> None:
        log.warning("rebuilding the dead-letter producer after a fatal error")
        old = self._producer
        self._producer = self._factory(self._config)
        try:
            old.flush(0)
        except Exception:  # noqa: BLE001 - the old producer is unusable anyway
            pass
        # Outstanding letters of the old producer will never be confirmed: send them again.
        for seq, (letter, _done) in list(self._outstanding.items()):
            self._produce(seq, letter)

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)
        if self._retry:
            now = time.monotonic()
            due = [r for r in self._retry if r[0] <= now]
            if due:
                self._retry = [r for r in self._retry if r[0] > now]
                for _, letter, done in due:
                    self.send(letter, done)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding) + len(self._retry)

    def flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding and time.monotonic() < deadline:
            self.poll(0.05)
