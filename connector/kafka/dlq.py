"""Dead-letter stage: records that can never reach AEP go to a Kafka topic, with their reason.

A dead letter keeps the original key, value and headers, and adds ``dlq.*`` headers saying where it
came from and why it failed. Its source offset is acknowledged only once the broker confirmed the
dead letter (``acks=all``, idempotent producer).

What can go wrong writing one, and what happens:

* **Too large** (over the producer's ``message.max.bytes``, or the broker's/topic's
  ``max.message.bytes``): the letter is written *truncated* — the original value cut to fit (or
  omitted), with ``dlq.original.size``, ``dlq.original.sha256`` and ``dlq.value.truncated``
  headers beside the source position, so ``dlq replay`` knows to re-read the source offset. A broker
  that refuses a size halves the budget for the next try.
* **Transient** (broker unreachable, timeouts, leader changes): retried after 1 s, with a log line
  and ``capillary_aep_dlq_errors_total{retriable="true"}``; nothing is acknowledged meanwhile. A
  letter still failing after ``_GIVE_UP_S`` makes the topic unusable (next item).
* **Permanent** (authorization, unknown topic, invalid configuration, a size that no truncation
  fixes): never retried. The writer reports ``unusable`` with the reason; the pipeline stops with
  exit code 6 without acknowledging the record, and ``/readyz`` says why.
* **Fatal producer error** (e.g. ProducerFenced after a broker stall): the producer is rebuilt and
  what was outstanding is sent again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from connector.telemetry.logs import RateLimitedLog, redact
from connector.telemetry.metrics import METRICS

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
H_ORIGINAL_SIZE = "dlq.original.size"  # bytes of the original value, on a truncated letter
H_ORIGINAL_SHA256 = "dlq.original.sha256"  # hex digest of the original value, on a truncated letter
H_TRUNCATED = "dlq.value.truncated"  # "cut" (a prefix is kept) or "omitted"; absent: the value is whole

_RETRY_DELAY_S = 1.0
_GIVE_UP_S = 600.0  # a letter failing transiently this long: the topic is unusable (exit code 6)
_DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
_ENVELOPE_BYTES = 512  # record and batch framing the size limits also count
_MIN_BUDGET = 4_096  # below this a letter cannot carry its headers: the size is a permanent error
_KEEP_AT_LEAST = 1_024  # a cut value shorter than this is omitted instead (not worth reading)

_SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_PERMANENT_ERRORS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError._INVALID_ARG,
    KafkaError.INVALID_CONFIG, KafkaError.TOPIC_EXCEPTION, KafkaError.POLICY_VIOLATION, KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.INVALID_RECORD, KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
})


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
    truncated: str = ""  # "", "cut" or "omitted" (see fit())
    original_size: int = 0
    original_sha256: str = ""

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
        # Free text from errors and AEP: masked like log lines (a registered secret never leaves).
        if self.detail:
            own.append((H_DETAIL, redact(self.detail)[:1000].encode()))
        if self.http_status is not None:
            own.append((H_HTTP_STATUS, str(self.http_status).encode()))
        if self.aep_message:
            own.append((H_AEP_MESSAGE, redact(self.aep_message)[:1000].encode()))
        if self.xaction_id:
            own.append((H_XACTION_ID, self.xaction_id.encode()))
        if self.truncated:
            own += [(H_TRUNCATED, self.truncated.encode()), (H_ORIGINAL_SIZE, str(self.original_size).encode()),
                    (H_ORIGINAL_SHA256, self.original_sha256.encode())]
        kept = [(k, v) for k, v in (self.headers or []) if not k.startswith("dlq.")]
        return kept + own

    def size(self) -> int:
        """Bytes the producer's and the broker's size limits count (framing aside)."""
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v or b"") + 4 for k, v in self.kafka_headers()))

    def fit(self, budget: int) -> DeadLetter | None:
        """This letter, or a copy with the value cut (or omitted, and oversized original headers
        dropped) so that it takes at most ``budget`` bytes; None if even that does not fit."""
        if self.size() <= budget:
            return self
        value = self.value or b""
        cut = DeadLetter(**{**{f: getattr(self, f) for f in self.__dataclass_fields__},
                            "truncated": "omitted", "value": None, "original_size": len(value),
                            "original_sha256": hashlib.sha256(value).hexdigest()})
        room = budget - cut.size()
        if room < 0 and cut.headers:
            cut.headers = None  # the original headers alone are too large: the source still has them
            room = budget - cut.size()
        if room < 0:
            return None
        if room >= _KEEP_AT_LEAST:
            cut.truncated = "cut"
            cut.value = value[:room]
        return cut


Done = Callable[[DeadLetter], None]


class DeadLetterWriter:
    """Writes dead letters; ``on_done`` runs (inside ``poll``) once the broker has each one."""

    def __init__(self, topic: str, producer_config: dict[str, Any], producer_factory: Callable[..., Any] = Producer,
                 clock: Callable[[], float] = time.monotonic):
        self.topic = topic
        self._config = {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 30_000,
            **producer_config,
        }
        self._factory = producer_factory
        self._clock = clock
        self._producer = self._factory(self._config)
        self._budget = int(self._config.get("message.max.bytes", _DEFAULT_MAX_BYTES)) - _ENVELOPE_BYTES
        self._outstanding: dict[int, tuple[DeadLetter, Done, float]] = {}
        self._retry: list[tuple[float, DeadLetter, Done, float]] = []
        self._seq = 0
        self._log = RateLimitedLog(log, 10.0)
        self.unusable = ""  # why letters cannot be written at all (then nothing more is tried)
        self.refused: list[DeadLetter] = []  # letters given up on: never acknowledged

    def send(self, letter: DeadLetter, on_done: Done, first_try: float | None = None) -> None:
        if self.unusable:
            self.refused.append(letter)
            return
        fitted = letter.fit(self._budget)
        if fitted is None:
            self._give_up(letter, "MSG_SIZE_TOO_LARGE",
                          f"even without its value the letter does not fit in {self._budget} bytes")
            return
        if fitted is not letter:
            METRICS.dlq_truncated.inc()
            log.warning("dead letter of %s[%d]@%d is %d bytes, over the %d the topic takes: writing it %s "
                        "(re-read the source offset to recover the value)", letter.topic, letter.partition,
                        letter.offset, letter.size(), self._budget, "cut" if fitted.value else "without its value")
        self._seq += 1
        seq = self._seq
        # The original is kept: a later, smaller budget cuts it again from the whole value.
        self._outstanding[seq] = (letter, on_done, self._clock() if first_try is None else first_try)
        self._produce(seq, fitted)

    def _produce(self, seq: int, letter: DeadLetter) -> None:
        def delivered(err: KafkaError | None, _msg: Any, seq: int = seq) -> None:
            entry = self._outstanding.pop(seq, None)
            if entry is None:
                return
            dl, done, first = entry
            if err is None:
                METRICS.records_dead_lettered.labels(dl.stage, dl.reason).inc()
                done(dl)
                return
            if err.fatal():
                self._rebuild()
            self._failed(dl, done, first, err)

        try:
            self._producer.produce(
                self.topic, value=letter.value, key=letter.key, headers=letter.kafka_headers(), on_delivery=delivered
            )
        except BufferError:
            entry = self._outstanding.pop(seq, None)
            if entry is not None:
                self._retry.append((self._clock() + 0.1, *entry))
        except KafkaException as exc:
            entry = self._outstanding.pop(seq, None)
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.fatal():
                self._rebuild()
            if entry is not None:
                self._failed(entry[0], entry[1], entry[2], err)

    def _failed(self, letter: DeadLetter, done: Done, first: float, err: KafkaError | None) -> None:
        """Route a failed write: smaller, give up, or retry later."""
        code = err.code() if err is not None else None
        name = err.name() if err is not None else "UNKNOWN"
        if code in _SIZE_ERRORS:
            METRICS.dlq_errors.labels("true").inc()
            tried = letter.fit(self._budget)
            self._budget = min(self._budget, (tried or letter).size()) // 2
            if self._budget < _MIN_BUDGET:
                self._give_up(letter, name, "the topic refuses even a letter without its value")
                return
            log.warning("the dead-letter topic refused a letter of %s[%d]@%d as too large (%s): trying again "
                        "within %d bytes", letter.topic, letter.partition, letter.offset, name, self._budget)
            self.send(letter, done, first)  # fit() cuts it to the new budget
            return
        if code in _PERMANENT_ERRORS:
            self._give_up(letter, name, err.str() if err is not None else "unknown error")
            return
        METRICS.dlq_errors.labels("true").inc()
        if self._clock() - first >= _GIVE_UP_S:
            self._give_up(letter, name, f"still failing after {_GIVE_UP_S:.0f}s")
            return
        self._log.note(name, "dead-letter write failed (%s); retrying in %.0fs", name, _RETRY_DELAY_S)
        self._retry.append((self._clock() + _RETRY_DELAY_S, letter, done, first))

    def _give_up(self, letter: DeadLetter, error: str, why: str) -> None:
        METRICS.dlq_errors.labels("false").inc()
        self.refused.append(letter)
        if not self.unusable:
            self.unusable = f"dead-letter topic {self.topic!r} cannot take letters ({error}): {why}"
            log.error("%s; %s[%d]@%d is not acknowledged", self.unusable, letter.topic, letter.partition,
                      letter.offset)

    def _rebuild(self) -> None:
        log.warning("rebuilding the dead-letter producer after a fatal error")
        old = self._producer
        self._producer = self._factory(self._config)
        try:
            old.flush(0)
        except Exception:  # noqa: BLE001, S110 - the old producer is unusable anyway
            pass
        # Outstanding letters of the old producer will never be confirmed: send them again.
        for seq, (letter, _done, _first) in list(self._outstanding.items()):
            self._produce(seq, letter.fit(self._budget) or letter)

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)
        if self._retry:
            now = self._clock()
            due = [r for r in self._retry if r[0] <= now]
            if due:
                self._retry = [r for r in self._retry if r[0] > now]
                for _, letter, done, first in due:
                    self.send(letter, done, first)

    @property
    def outstanding(self) -> int:
        """Letters not yet confirmed that may still be (the refused ones never will)."""
        return len(self._outstanding) + len(self._retry)

    def flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding and time.monotonic() < deadline:
            self.poll(0.05)
