"""The dead-letter writer against a fake producer: letters that always fit, permanent errors that
stop instead of spinning, transient ones retried with a bound (connector.kafka.dlq)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from connector.kafka.dlq import (
    H_OFFSET,
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_PARTITION,
    H_TOPIC,
    H_TRUNCATED,
    DeadLetter,
    DeadLetterWriter,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProducer:
    """Checks message.max.bytes on produce() like librdkafka; answers on poll() with ``broker``'s verdict."""

    def __init__(self, config: dict[str, Any], broker: Any) -> None:
        self.max_bytes = int(config.get("message.max.bytes", 1_000_000))
        self.broker = broker  # callable(value, headers) -> KafkaError | None
        self.pending: list[tuple[Any, bytes | None, list[tuple[str, bytes]]]] = []
        self.written: list[tuple[bytes | None, dict[str, bytes]]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                on_delivery: Any) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.pending.append((on_delivery, value, headers))

    def poll(self, _timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for cb, value, headers in pending:
            err = self.broker(value, headers)
            if err is None:
                self.written.append((value, dict(headers)))
            cb(err, None)
        return len(pending)

    def flush(self, _timeout: float = 0) -> int:
        return 0


def writer(broker: Any = lambda v, h: None, **config: Any) -> tuple[DeadLetterWriter, list[FakeProducer], Clock]:
    made: list[FakeProducer] = []
    clock = Clock()

    def factory(conf: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(conf, broker))
        return made[-1]

    return DeadLetterWriter("dlq", dict(config), factory, clock=clock), made, clock


def letter(value: bytes, offset: int = 7, headers: list[tuple[str, bytes]] | None = None) -> DeadLetter:
    return DeadLetter("events", 3, offset, b"cust-1", value, headers, "transform", "RecordTooLarge",
                      "record_too_large", "1.2 MB")


def test_a_letter_that_fits_is_written_whole() -> None:
    w, made, _ = writer()
    done: list[int] = []
    w.send(letter(b"x" * 1000), lambda dl: done.append(dl.offset))
    w.poll()
    assert done == [7] and w.outstanding == 0
    value, headers = made[0].written[0]
    assert value == b"x" * 1000 and H_TRUNCATED not in headers


def test_an_oversized_letter_is_cut_to_fit_with_size_hash_and_position() -> None:
    original = bytes(range(256)) * 4700  # ~1.2 MB
    w, made, _ = writer()
    done: list[int] = []
    w.send(letter(original), lambda dl: done.append(dl.offset))
    w.poll()
    assert done == [7]
    value, headers = made[0].written[0]
    assert headers[H_TRUNCATED] == b"cut" and original.startswith(value) and 900_000 < len(value) < 1_000_000
    assert int(headers[H_ORIGINAL_SIZE]) == len(original)
    assert headers[H_ORIGINAL_SHA256].decode() == hashlib.sha256(original).hexdigest()
    assert (headers[H_TOPIC], headers[H_PARTITION], headers[H_OFFSET]) == (b"events", b"3", b"7")


def test_a_broker_limit_below_the_producers_halves_the_budget_until_the_letter_fits() -> None:
    original = b"y" * 1_200_000

    def broker(value: bytes | None, _h: Any) -> KafkaError | None:  # topic max.message.bytes = 200 kB
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if len(value or b"") > 200_000 else None

    w, made, _ = writer(broker)
    done: list[int] = []
    w.send(letter(original), lambda dl: done.append(dl.offset))
    for _ in range(10):
        w.poll()
    assert done == [7] and w.outstanding == 0 and not w.unusable
    value, headers = made[0].written[0]
    assert headers[H_TRUNCATED] == b"cut" and len(value) <= 200_000
    assert int(headers[H_ORIGINAL_SIZE]) == len(original)  # cut again from the original, not from the cut


def test_huge_original_headers_are_dropped_and_the_value_omitted_when_nothing_else_fits() -> None:
    w, made, _ = writer(**{"message.max.bytes": 8_000})
    done: list[int] = []
    w.send(letter(b"z" * 50_000, headers=[("trace", b"h" * 20_000)]), lambda dl: done.append(dl.offset))
    w.poll()
    assert done == [7]
    value, headers = made[0].written[0]
    assert "trace" not in headers and headers[H_TRUNCATED] == b"cut" and len(value) < 8_000


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART,
                                  KafkaError._INVALID_ARG])
def test_a_permanent_error_is_not_retried_and_makes_the_topic_unusable(code: int) -> None:
    w, made, _ = writer(lambda v, h: KafkaError(code))
    done: list[int] = []
    w.send(letter(b"v"), lambda dl: done.append(dl.offset))
    for _ in range(5):
        w.poll()
    assert done == [] and w.outstanding == 0
    assert len(made[0].written) == 0 and "cannot take letters" in w.unusable
    assert [dl.offset for dl in w.refused] == [7]
    w.send(letter(b"v", offset=8), lambda dl: done.append(dl.offset))  # later letters are refused at once
    assert [dl.offset for dl in w.refused] == [7, 8] and made[0].pending == []


def test_a_transient_error_is_retried_then_given_up_after_the_bound() -> None:
    verdicts = [KafkaError(KafkaError._MSG_TIMED_OUT)] * 2

    def broker(_v: Any, _h: Any) -> KafkaError | None:
        return verdicts.pop(0) if verdicts else None

    w, made, clock = writer(broker)
    done: list[int] = []
    w.send(letter(b"v"), lambda dl: done.append(dl.offset))
    for _ in range(3):
        w.poll()
        clock.now += 1.5  # past the retry delay
        w.poll()
    assert done == [7] and not w.unusable

    w2, _, clock2 = writer(lambda v, h: KafkaError(KafkaError._TRANSPORT))
    w2.send(letter(b"v"), lambda dl: done.append(dl.offset))
    while not w2.unusable and clock2.now < 2000:
        w2.poll()
        clock2.now += 30
    assert "still failing" in w2.unusable and w2.outstanding == 0


def test_an_error_not_known_to_be_permanent_is_retried_not_fatal() -> None:
    # librdkafka's delivery reports do not flag broker errors as retriable: only the listed
    # errors may stop the connector, anything else is retried (bounded by the give-up time).
    verdicts = [KafkaError(KafkaError.NOT_ENOUGH_REPLICAS), KafkaError(KafkaError.REQUEST_TIMED_OUT)]

    def broker(_v: Any, _h: Any) -> KafkaError | None:
        return verdicts.pop(0) if verdicts else None

    w, _, clock = writer(broker)
    done: list[int] = []
    w.send(letter(b"v"), lambda dl: done.append(dl.offset))
    for _ in range(3):
        w.poll()
        clock.now += 1.5
        w.poll()
    assert done == [7] and not w.unusable
