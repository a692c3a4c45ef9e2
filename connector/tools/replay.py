"""``capillary-aep dlq replay``: give dead letters another chance once their cause is fixed.

Reads the dead-letter topic, keeps the letters that match the filters (reason, stage, time
window), and either re-publishes each one to its source topic (default; the running connector
then processes it like any other record, with its original key, value and headers) or, with
``--direct``, decodes, transforms and delivers it straight to AEP.

Progress is committed under the consumer group ``<kafka.group_id>.dlq-replay`` after the replayed
letters are safely out, so a second run continues where the first stopped (``--from-beginning``
reads everything again). Letters that fail again are reported, not lost: they stay in the DLQ.
The topic is streamed in windows (``WINDOW_LETTERS``/``WINDOW_BYTES``), never loaded whole.

No letter can stop a replay or steer it: anyone who can write to the dead-letter topic writes its
headers. A letter whose ``dlq.*`` headers are not what the connector writes (``dlq.reason`` absent,
a header that is not UTF-8, a ``dlq.time`` that is not a number) is skipped, counted and named in
the report (``malformed``). A letter is re-published only to its source topic when the
configuration consumes that topic (``kafka.topics``), or to ``--to-topic`` given explicitly; one
naming any other topic is skipped the same way.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connector.kafka.dlq import H_OFFSET, H_PARTITION, H_REASON, H_STAGE, H_TIME, H_TOPIC, H_TRUNCATED
from connector.kafka.source import producer_config, subscription_matcher

MAX_NAMED = 50  # malformed letters named in the report (all are counted)


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, headers: dict[str, str]) -> bool:
        """``headers``: a well-formed letter's ``dlq.*`` headers as text (see :func:`letter_headers`)."""
        if self.reasons and headers[H_REASON] not in self.reasons:
            return False
        if self.stages and headers.get(H_STAGE, "") not in self.stages:
            return False
        when = int(headers[H_TIME])
        if self.since_ms is not None and when < self.since_ms:
            return False
        return not (self.until_ms is not None and when >= self.until_ms)


def letter_headers(raw: list[tuple[str, bytes | None]] | None) -> tuple[dict[str, str], str]:
    """A letter's ``dlq.*`` headers as text, and what is wrong with them ("" if nothing)."""
    out: dict[str, str] = {}
    for key, value in raw or ():
        if not key.startswith("dlq."):
            continue
        try:
            out[key] = (value or b"").decode()
        except UnicodeDecodeError:
            return out, f"{key} is not UTF-8"
    if not out.get(H_REASON):
        return out, f"no {H_REASON}"
    if not out.get(H_TIME, "").isdigit():
        return out, f"{H_TIME} {out.get(H_TIME, '')[:30]!r} is not a number"
    return out, ""


@dataclass(slots=True)
class ReplayReport:
    read: int = 0
    matched: int = 0
    replayed: int = 0
    failed: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    # Letters written without their whole value (too large for the DLQ): not replayable from the
    # DLQ; their source positions ("topic[partition]@offset") must be re-read from the source.
    truncated: list[str] = field(default_factory=list)
    skipped: int = 0  # read and left alone: outside the filters
    total: int = 0  # letters to read, from the start positions to the high watermarks (an estimate: raised to `read`)
    malformed: int = 0  # skipped: headers not as the connector writes them, or a source topic not consumed
    malformed_at: list[str] = field(default_factory=list)  # "topic[partition]@offset: why", the first MAX_NAMED


class ReplayError(Exception):
    """The dead-letter topic cannot be read (broker unreachable, authorization…): ``dlq replay`` exit code 4."""


# A window of letters is read, filtered, replayed and committed before the next is read: memory
# holds one window, however large the topic (plus librdkafka's fetch queue, bounded below).
WINDOW_LETTERS = 1000
WINDOW_BYTES = 16 * 1024 * 1024
_FATAL_READ = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                         KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError._SSL, KafkaError._AUTHENTICATION})


def read_window(consumer: Any, open_partitions: set[int], max_letters: int, max_bytes: int,
                idle_s: float) -> tuple[list[Any], bool]:
    """Up to ``max_letters`` letters (or ``max_bytes`` of values), removing a partition from
    ``open_partitions`` when the consumer reports its end (partition EOF: the end when it got
    there, not a watermark read earlier, which some brokers report late). Returns the letters and
    whether reading stopped because nothing arrived for ``idle_s``."""
    ends = open_partitions
    out: list[Any] = []
    size = 0
    last = time.monotonic()
    while ends and len(out) < max_letters and size < max_bytes:
        msgs = consumer.consume(min(100, max_letters - len(out)), 0.2)  # small steps: the byte bound holds
        if msgs:
            last = time.monotonic()
        elif time.monotonic() - last >= idle_s:
            return out, True
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends.discard(m.partition())
                elif err.fatal() or err.code() in _FATAL_READ:
                    raise ReplayError(f"cannot read {m.topic()}: {err.str()}")
                continue
            out.append(m)
            size += len(m.value() or b"")
    return out, False


def replay(
    settings: Any,
    flt: ReplayFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    from_beginning: bool = False,
    limit: int | None = None,
    direct: Callable[[list[Any]], list[bool]] | None = None,
    idle_s: float = 2.0,
    progress: Callable[[ReplayReport], None] | None = None,
    window_letters: int = WINDOW_LETTERS,
    window_bytes: int = WINDOW_BYTES,
) -> ReplayReport:
    """Stream the dead-letter topic from the committed replay position to its end, one window at a
    time: filter, replay the matching letters, commit past the window, report
    ``progress``. After a window with failures nothing more is committed (the next run starts
    there again; letters replayed after it may be replayed twice). Raises :class:`ReplayError`
    when the topic cannot be read."""
    kafka = settings.kafka
    try:
        # Connection settings as the connector's own clients (kafka.security and kafka.extra's security keys).
        consumer = Consumer({**producer_config(kafka), "group.id": f"{kafka.group_id}.dlq-replay",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "enable.partition.eof": True, "queued.max.messages.kbytes": 16384})
    except KafkaException as exc:
        raise ReplayError(f"cannot create a consumer: {exc.args[0].str() if exc.args else exc}") from None
    report = ReplayReport()
    republisher: _Republisher | None = None
    try:
        try:
            consumer.poll(0)  # serves a token callback (MSK IAM) before the first metadata request
            meta = consumer.list_topics(kafka.dlq_topic, timeout=10).topics.get(kafka.dlq_topic)
        except KafkaException as exc:
            raise ReplayError(f"cannot reach Kafka at {kafka.bootstrap_servers}: "
                              f"{exc.args[0].str() if exc.args else exc}") from None
        if meta is None or meta.error is not None or not meta.partitions:
            return report  # no dead-letter topic yet: nothing to replay
        tps = [TopicPartition(kafka.dlq_topic, p) for p in meta.partitions]
        try:
            starts = tps if from_beginning else consumer.committed(tps, timeout=10)
            ends: set[int] = set()
            assign = []
            for tp in starts:
                low, high = consumer.get_watermark_offsets(TopicPartition(kafka.dlq_topic, tp.partition),
                                                           timeout=10)
                begin = low if from_beginning or tp.offset < 0 else max(tp.offset, low)
                # Every partition is read to its EOF (a watermark is only the progress estimate).
                ends.add(tp.partition)
                report.total += max(0, high - begin)
                assign.append(TopicPartition(kafka.dlq_topic, tp.partition, begin))
        except KafkaException as exc:
            raise ReplayError(f"cannot read the positions of {kafka.dlq_topic}: "
                              f"{exc.args[0].str() if exc.args else exc}") from None
        if not assign:
            return report
        consumer.assign(assign)
        if not dry_run and direct is None:
            republisher = _Republisher(settings)
        consumed = subscription_matcher(kafka.topics)
        committing = not dry_run
        left = limit
        while ends and (left is None or left > 0):
            window, idle = read_window(consumer, ends, window_letters, window_bytes, idle_s)
            chosen: list[tuple[Any, str]] = []  # (letter, topic to re-publish it to; "" with --direct)
            handled: dict[int, int] = {}  # partition -> last offset dealt with in this window
            for m in window:
                if left is not None and len(chosen) >= left:
                    break  # the limit: later letters stay for the next run
                report.read += 1
                handled[m.partition()] = m.offset()
                headers, wrong = letter_headers(m.headers())
                target = "" if direct is not None else to_topic or headers.get(H_TOPIC, "")
                if not wrong and direct is None and not to_topic and not consumed(target):
                    wrong = f"source topic {target[:100]!r} is not consumed by this configuration (--to-topic)"
                if wrong:
                    report.malformed += 1
                    if len(report.malformed_at) < MAX_NAMED:
                        report.malformed_at.append(f"{m.topic()}[{m.partition()}]@{m.offset()}: {wrong}")
                    continue
                if not flt.matches(headers):
                    report.skipped += 1
                    continue
                report.matched += 1
                report.by_reason[headers[H_REASON]] += 1
                if H_TRUNCATED in headers:
                    topic, part, off = (headers.get(h, "?") for h in (H_TOPIC, H_PARTITION, H_OFFSET))
                    report.truncated.append(f"{topic}[{part}]@{off}")
                    continue
                chosen.append((m, target))
            if chosen and not dry_run:
                if direct is not None:
                    ok = direct([m for m, _ in chosen])
                    replayed = sum(ok)
                    failed = len(ok) - replayed
                else:
                    assert republisher is not None
                    replayed, failed = republisher.publish(chosen)
                report.replayed += replayed
                report.failed += failed
                if failed:
                    committing = False  # the failed letters must be read again next time
            if committing and handled:
                consumer.commit(offsets=[TopicPartition(kafka.dlq_topic, p, o + 1) for p, o in handled.items()],
                                asynchronous=False)
            if left is not None:
                left -= len(chosen)
            report.total = max(report.total, report.read)
            if progress is not None:
                progress(report)
            del window, chosen  # before the next window is read: one window in memory at a time
            if idle:
                break
    finally:
        if republisher is not None:
            republisher.close()
        consumer.close()
    return report


class _Republisher:
    """One idempotent producer for the whole run; each window is flushed before it is committed."""

    def __init__(self, settings: Any) -> None:
        self.producer = Producer({**producer_config(settings.kafka), "acks": "all", "enable.idempotence": True})
        self._lock = threading.Lock()

    def publish(self, letters: list[tuple[Any, str]]) -> tuple[int, int]:
        """Each letter to its topic (checked by the caller)."""
        results = {"ok": 0, "failed": 0}

        def done(err: Any, _msg: Any) -> None:
            with self._lock:
                results["failed" if err else "ok"] += 1

        for m, target in letters:
            original = [(k, v) for k, v in (m.headers() or []) if not k.startswith("dlq.")]
            original.append(("dlq.replayed.from", f"{m.topic()}/{m.partition()}/{m.offset()}".encode()))
            while True:
                try:
                    self.producer.produce(target, key=m.key(), value=m.value(), headers=original, on_delivery=done)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.producer.poll(0.1)
            self.producer.poll(0)
        left = self.producer.flush(30)
        return results["ok"], results["failed"] + left

    def close(self) -> None:
        self.producer.flush(5)


def direct_delivery(settings: Any) -> Callable[[list[Any]], list[bool]]:
    """Deliver letters straight to AEP with the connector's own decode/transform/sink stages."""

    from connector.delivery.batch import PendingRecord
    from connector.pipeline import assembly
    from connector.processing.record import Encoded

    s = settings
    processor = assembly.record_processor(s)

    def deliver(letters: list[Any]) -> list[bool]:
        ok = [False] * len(letters)
        records: list[PendingRecord] = []
        index: list[int] = []
        # The connector's own decode → transform → encode; a letter still broken stays in the DLQ.
        for i, (m, outcome) in enumerate(zip(letters, processor.run([m.value() for m in letters]))):
            if type(outcome) is not Encoded:
                continue
            # Not from a consumer: no epoch, no timestamp (PendingRecord is what the sink takes).
            records.append(PendingRecord((m.topic(), m.partition()), m.offset(), 0, 0, m.key(), m.value(), None,
                                         outcome.bodies, outcome.labels, outcome.size))
            index.append(i)
        if not records:
            return ok
        with assembly.aep_http(s) as client:
            sink = assembly.sink(s, client, assembly.token_provider(s, client))
            cancel = threading.Event()
            timer = threading.Timer(120, cancel.set)  # give up (and report) rather than hang forever
            timer.start()
            try:
                for start in range(0, len(records), 500):
                    chunk = records[start:start + 500]
                    result = sink.deliver(chunk, cancel)
                    if result.abandoned:
                        break
                    for j in range(len(chunk)):
                        if j not in result.failures:
                            ok[index[start + j]] = True
            finally:
                timer.cancel()
        return ok

    return deliver
