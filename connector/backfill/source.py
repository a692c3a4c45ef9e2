"""What a backfill reads: a range of the Capillary topics, or Capillary export files (JSON lines).

Kafka: the partitions of the connector's subscription (``kafka.topics``, the dead-letter topic never
among them), each from its earliest offset or the first at/after a time, **up to a stop offset fixed
when the backfill is planned** (the high watermark then). Records arriving later are the stream's.
The reader assigns partitions itself (no group membership) and never commits: the stop point is
handed to the connector's group only when every batch succeeded (handover.py).

Files: each line one Capillary event (the webhook's JSON); a position is a line number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connector.config import Settings
from connector.kafka.source import consumer_config, subscription_matcher

log = logging.getLogger(__name__)


class SourceError(Exception):
    """Kafka cannot be read (unreachable, authorization, a partition that stops advancing)."""


@dataclass(slots=True)
class Record:
    where: str  # "topic:partition" or the file path
    topic: str
    partition: int
    offset: int  # the Kafka offset, or the line number (from 0)
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def split_key(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


def reader_config(settings: Settings) -> dict[str, Any]:
    """The connector's consumer settings (security, extra) for a reader that joins no group and commits nothing."""
    conf = consumer_config(settings.kafka)
    conf.update({"group.id": f"{settings.kafka.group_id}.backfill", "enable.auto.commit": False,
                 "enable.auto.offset.store": False, "statistics.interval.ms": 0})
    conf.pop("group.instance.id", None)
    return conf


def plan_kafka(settings: Settings, since_ms: int | None, timeout: float = 30.0) -> dict[str, Any]:
    """Per partition of the subscription: start and stop offsets (stop: the high watermark now)."""
    consumer = Consumer(reader_config(settings))
    try:
        try:
            meta = consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise SourceError(f"cannot list topics: {exc.args[0].str() if exc.args else exc}") from None
        matches = subscription_matcher(settings.kafka.topics)
        tps = [TopicPartition(name, p) for name, t in sorted(meta.topics.items())
               if matches(name) and name != settings.kafka.dlq_topic and not name.startswith("__")
               for p in sorted(t.partitions)]
        start: dict[str, int] = {}
        stop: dict[str, int] = {}
        try:
            for tp in tps:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                start[tp_key(tp.topic, tp.partition)] = low
                stop[tp_key(tp.topic, tp.partition)] = high
            for key, high in _fetched_high_watermarks(consumer, tps, start, timeout).items():
                stop[key] = max(stop[key], high)
            if since_ms is not None and tps:
                found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, since_ms) for tp in tps],
                                                   timeout=timeout)
                for tp in found:
                    key = tp_key(tp.topic, tp.partition)
                    # -1: no record at or after the time: nothing to read in this partition
                    start[key] = stop[key] if tp.offset < 0 else max(start[key], tp.offset)
        except KafkaException as exc:
            raise SourceError(f"cannot read offsets: {exc.args[0].str() if exc.args else exc}") from None
        return {"kind": "kafka", "topics": list(settings.kafka.topics), "group": settings.kafka.group_id,
                "since_ms": since_ms, "start": start, "stop": stop}
    finally:
        consumer.close()


def _fetched_high_watermarks(consumer: Consumer, tps: list[TopicPartition], start: dict[str, int],
                             timeout: float) -> dict[str, int]:
    """The high watermark each partition's fetch answer carries. Kafka's ListOffsets gives the same
    number; some Kafka-compatible brokers (tansu) answer ListOffsets(latest) approximately, and a
    stop point short of the end would leave records to nobody — so both are asked, the larger kept."""
    if not tps:
        return {}
    consumer.assign([TopicPartition(tp.topic, tp.partition, start[tp_key(tp.topic, tp.partition)]) for tp in tps])
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(tps):
        consumer.consume(1000, 0.2)  # the records are not kept: only the fetch answers' watermarks
        for tp in tps:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                found[tp_key(tp.topic, tp.partition)] = high
        if time.monotonic() > deadline:
            missing = [tp_key(tp.topic, tp.partition) for tp in tps if tp_key(tp.topic, tp.partition) not in found]
            raise SourceError(f"no fetch answer within {timeout:.0f}s from {missing[:5]}")
    consumer.unassign()
    return found


def read_kafka(settings: Settings, stop: dict[str, int], position: dict[str, int], batch: int = 1000,
               stall_timeout_s: float = 60.0) -> Iterator[list[Record]]:
    """Records from ``position`` (next offset per partition) up to ``stop``, a consume() batch at a time."""
    todo = {k: v for k, v in stop.items() if position.get(k, v) < v}
    if not todo:
        return
    consumer = Consumer(reader_config(settings))
    try:
        consumer.assign([TopicPartition(*split_key(k), position[k]) for k in todo])
        last_progress = time.monotonic()
        while todo:
            try:
                msgs = consumer.consume(batch, 0.5)
            except KafkaException as exc:
                raise SourceError(f"consume failed: {exc}") from None
            out: list[Record] = []
            done: list[TopicPartition] = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal() or not err.retriable():
                        raise SourceError(f"consume failed: {err.str()}")
                    continue
                key = tp_key(m.topic(), m.partition())
                end = todo.get(key)
                if end is None or m.offset() >= end:
                    continue
                out.append(Record(key, m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers()))
                if m.offset() + 1 >= end:
                    del todo[key]
                    done.append(TopicPartition(m.topic(), m.partition()))
            if done:
                consumer.pause(done)
            if out:
                last_progress = time.monotonic()
                yield out
                continue
            # Nothing new: a partition whose stop lies past transaction markers ends at its position.
            for tp in consumer.position([TopicPartition(*split_key(k)) for k in todo]):
                if tp.offset >= 0 and tp.offset >= todo[tp_key(tp.topic, tp.partition)]:
                    del todo[tp_key(tp.topic, tp.partition)]
            if todo and time.monotonic() - last_progress > stall_timeout_s:
                raise SourceError(f"no record for {stall_timeout_s:.0f}s from {sorted(todo)[:5]} before their stop "
                                  "offsets (records deleted by retention, or the broker unreachable)")
    finally:
        consumer.close()


def plan_files(paths: list[str]) -> dict[str, Any]:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SourceError(f"not a file: {', '.join(missing)}")
    stop = {}
    for p in paths:
        with open(p, "rb") as f:
            stop[str(Path(p).resolve())] = sum(1 for _ in f)
    return {"kind": "files", "start": dict.fromkeys(stop, 0), "stop": stop}


def read_files(stop: dict[str, int], position: dict[str, int], batch: int = 1000) -> Iterator[list[Record]]:
    for path, end in stop.items():
        first = position.get(path, 0)
        if first >= end:
            continue
        out: list[Record] = []
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                if n < first:
                    continue
                if n >= end:
                    break
                value = line.rstrip(b"\r\n")
                out.append(Record(path, f"file:{Path(path).name}", 0, n, None, value or None, None))
                if len(out) >= batch:
                    yield out
                    out = []
        if out:
            yield out
