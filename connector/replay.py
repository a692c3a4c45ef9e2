"""``capillary-aep dlq replay``: give dead letters another chance once their cause is fixed.

Reads the dead-letter topic, keeps the letters that match the filters (reason, stage, time
window), and either re-publishes each one to its source topic (default; the running connector
then processes it like any other record, with its original key, value and headers) or, with
``--direct``, decodes, transforms and delivers it straight to AEP.

Progress is committed under the consumer group ``<kafka.group_id>.dlq-replay`` after the replayed
letters are safely out, so a second run continues where the first stopped (``--from-beginning``
reads everything again). Letters that fail again are reported, not lost: they stay in the DLQ.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from connector.dlq import H_OFFSET, H_PARTITION, H_REASON, H_STAGE, H_TIME, H_TOPIC, H_TRUNCATED
from connector.source import producer_config


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, headers: dict[str, bytes]) -> bool:
        if self.reasons and headers.get(H_REASON, b"").decode() not in self.reasons:
            return False
        if self.stages and headers.get(H_STAGE, b"").decode() not in self.stages:
            return False
        when = int(headers.get(H_TIME, b"0") or 0)
        if self.since_ms is not None and when < self.since_ms:
            return False
        return not (self.until_ms is not None and when >= self.until_ms)


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


def read_letters(consumer: Any, idle_s: float) -> list[Any]:
    """Everything currently in the assigned DLQ partitions (until nothing arrives for ``idle_s``)."""
    out: list[Any] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        msgs = consumer.consume(500, 0.2)
        for m in msgs:
            if m.error() is None:
                out.append(m)
        if msgs:
            last = time.monotonic()
    return out


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
) -> ReplayReport:
    kafka = settings.kafka
    # Connection settings as the connector's own clients (kafka.security and kafka.extra's security keys).
    consumer = Consumer({**producer_config(kafka), "group.id": f"{kafka.group_id}.dlq-replay",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    report = ReplayReport()
    try:
        consumer.poll(0)  # serves a token callback (MSK IAM) before the first metadata request
        meta = consumer.list_topics(kafka.dlq_topic, timeout=10).topics.get(kafka.dlq_topic)
        if meta is None or not meta.partitions:
            return report
        tps = [TopicPartition(kafka.dlq_topic, p) for p in meta.partitions]
        if from_beginning:
            tps = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in tps]
        else:
            tps = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                   for tp in consumer.committed(tps, timeout=10)]
        consumer.assign(tps)
        letters = read_letters(consumer, idle_s)
        report.read = len(letters)
        chosen = []
        for m in letters:
            headers = dict(m.headers() or [])
            if flt.matches(headers):
                report.by_reason[headers.get(H_REASON, b"?").decode()] += 1
                if H_TRUNCATED in headers:
                    topic, part, off = (headers.get(h, b"?").decode() for h in (H_TOPIC, H_PARTITION, H_OFFSET))
                    report.truncated.append(f"{topic}[{part}]@{off}")
                    continue
                chosen.append(m)
        if limit is not None:
            chosen = chosen[:limit]
        report.matched = len(chosen) + len(report.truncated)
        if dry_run or not chosen:
            return report
        if direct is not None:
            ok = direct(chosen)
            report.replayed = sum(ok)
            report.failed = len(ok) - report.replayed
        else:
            report.replayed, report.failed = _republish(settings, chosen, to_topic)
        if report.failed == 0:
            # Commit past everything read (filtered-out letters stay readable with --from-beginning).
            last: dict[int, int] = {}
            for m in letters if limit is None else chosen:
                last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
            consumer.commit(offsets=[TopicPartition(kafka.dlq_topic, p, o + 1) for p, o in last.items()],
                            asynchronous=False)
    finally:
        consumer.close()
    return report


def _republish(settings: Any, letters: list[Any], to_topic: str | None) -> tuple[int, int]:
    producer = Producer({**producer_config(settings.kafka), "acks": "all", "enable.idempotence": True})
    results = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def done(err: Any, _msg: Any) -> None:
        with lock:
            results["failed" if err else "ok"] += 1

    for m in letters:
        headers = dict(m.headers() or [])
        target = to_topic or headers.get(H_TOPIC, b"").decode()
        if not target:
            results["failed"] += 1
            continue
        original = [(k, v) for k, v in (m.headers() or []) if not k.startswith("dlq.")]
        original.append(("dlq.replayed.from", f"{m.topic()}/{m.partition()}/{m.offset()}".encode()))
        producer.produce(target, key=m.key(), value=m.value(), headers=original, on_delivery=done)
        producer.poll(0)
    left = producer.flush(30)
    return results["ok"], results["failed"] + left


def direct_delivery(settings: Any) -> Callable[[list[Any]], list[bool]]:
    """Deliver letters straight to AEP with the connector's own decode/transform/sink stages."""

    from connector.auth import TokenProvider
    from connector.avro_schemas import LocalSchemas
    from connector.batch import PendingRecord
    from connector.decode import Decoder
    from connector.egress import aep_client
    from connector.registry import RegistryLookup
    from connector.sink import Sink
    from connector.transform import Transformer

    s = settings
    decoder = Decoder(LocalSchemas.load(s.decode.schemas_dir or None),
                      RegistryLookup.from_config(s.decode) if s.decode.schema_registry_url else None)
    transformer = Transformer(s.xdm, org_id=s.aep.org_id, source_name=s.aep.source_name)

    def deliver(letters: list[Any]) -> list[bool]:
        ok = [False] * len(letters)
        records: list[PendingRecord] = []
        index: list[int] = []
        for i, m in enumerate(letters):
            try:
                msgs = [x for ev in decoder.decode(m.value()) for x in transformer.transform(ev)]
            except Exception:  # noqa: BLE001 - still broken: it stays in the DLQ
                continue
            bodies = [orjson.dumps(x.envelope) for x in msgs]
            records.append(PendingRecord((m.topic(), m.partition()), m.offset(), 0, 0, m.key(), m.value(), None,
                                         bodies, [(x.kind, x.event_type) for x in msgs],
                                         PendingRecord.body_size(bodies)))
            index.append(i)
        if not records:
            return ok
        with aep_client(s.aep.http, timeout=s.delivery.request_timeout_s) as client:
            tokens = TokenProvider(s.aep.ims, client) if s.aep.authentication_required else None
            sink = Sink(s.aep, s.delivery, client, tokens, coalesce_profiles=s.batch.coalesce_profiles,
                        max_bytes=s.batch.max_bytes)
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
