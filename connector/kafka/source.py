"""Source stage: the confluent-kafka consumer, configured for at-least-once.

Offsets are never stored automatically (``enable.auto.offset.store=false``): the pipeline stores
the next offset after the highest contiguous acknowledged record, and librdkafka commits stored
offsets in the background, on revoke (for the revoked partitions) and on close. Assignment is
cooperative-sticky, so a rebalance only moves the partitions it has to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from connector.config import KafkaConfig
from connector.kafka.security import security_properties
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]


# librdkafka's own log lines (connection failures, rebalances) through Python logging, so they come
# out in the configured format (JSON) with the secrets masked, not raw on stderr (``%3|…|FAIL|…``).
# They are delivered while the client is polled, which every client here is.
RDKAFKA_LOG = logging.getLogger("rdkafka")


def consumer_config(cfg: KafkaConfig) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "group.id": cfg.group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": cfg.auto_commit_interval_ms,
        "auto.offset.reset": cfg.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": cfg.session_timeout_ms,
        "heartbeat.interval.ms": max(100, cfg.session_timeout_ms // 5),
        "max.poll.interval.ms": cfg.max_poll_interval_ms,
        "isolation.level": "read_committed",
        "statistics.interval.ms": 15_000,
        "enable.partition.eof": False,
        # A regex subscription only sees topics created later at the next metadata refresh
        # (librdkafka's default is 5 minutes).
        "topic.metadata.refresh.interval.ms": 30_000,
        # Latency: a broker that holds a fetch for the whole wait (tansu does) adds up to
        # fetch.wait.max.ms to every record (default 500 ms; 25 ms: p99 402 -> 157 ms at 2.5k
        # events/s; Kafka answers as soon as data is there).
        "fetch.wait.max.ms": 25,
        # Input and memory (bench/input.py: the consumer alone on the bench's backlog; issue 17).
        # librdkafka fetches again only while its queue is below queued.max.messages.kbytes, so a
        # queue of several fetches keeps one in flight while the pipeline reads the others: 2 MB
        # fetches into an 8 MB queue read ~230–250k events/s (~160 MB/s) here, 4 MB into 12 MB no
        # more, 2 MB into 4 MB (the former setting) ~70k. The queue is what input costs in memory
        # (≤ 8 MB + one fetch); librdkafka's defaults (50 MB fetches, 64 MB queue) cost ~80 MB more
        # PSS under a backlog and read no faster. Memory beyond that is bounded by the pipeline's
        # own buffers (delivery.max_buffered_records / _bytes: the loop holds). Override in kafka.extra
        # (a distant broker: larger fetches, the queue kept at about four of them).
        "fetch.max.bytes": 2 * 1024 * 1024,
        "max.partition.fetch.bytes": 1024 * 1024,
        "queued.max.messages.kbytes": 8 * 1024,
    }
    if cfg.group_instance_id:
        conf["group.instance.id"] = cfg.group_instance_id
    conf.update(security_properties(cfg.security))
    conf.update(cfg.extra)
    conf["logger"] = RDKAFKA_LOG
    return conf


def producer_config(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection settings only (bootstrap, kafka.security, connection keys of kafka.extra): what
    any client — producer, admin, the replay consumer — needs to reach the cluster."""
    conf: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers, **security_properties(cfg.security),
                            "logger": RDKAFKA_LOG}
    # Pass through connection/security settings only; consumer-only keys would be rejected.
    for key, value in cfg.extra.items():
        if key.startswith(("security.", "sasl.", "ssl.", "socket.", "client.")):
            conf[key] = value
    return conf


def fatal_consumer_error(err: KafkaError) -> str | None:
    """Why a consumed error stops the pipeline (None: logged, or not an error at all)."""
    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
        return None  # EOF is not an error; a regex subscription may match no topic yet
    if err.fatal() or err.code() == KafkaError._MAX_POLL_EXCEEDED:
        log.error("fatal consumer error: %s; stopping", err)
        return f"fatal consumer error: {err.name()}"
    log.warning("consumer error: %s", err)
    return None


def subscription_matcher(subscription: list[str]) -> Callable[[str], bool]:
    """Whether a topic is part of a subscription (names, or regexes starting with "^")."""
    patterns = [re.compile(t) for t in subscription if t.startswith("^")]
    names = {t for t in subscription if not t.startswith("^")}
    return lambda topic: topic in names or any(p.match(topic) for p in patterns)


def subscribed_partitions(meta: Any, subscription: list[str]) -> int:
    """How many partitions the subscribed topics of a metadata answer (``list_topics``) have."""
    matches = subscription_matcher(subscription)
    return sum(len(t.partitions) for name, t in meta.topics.items() if matches(name))


# Consumer lag per partition from the last statistics (what this member fetches), for the ETA.
LAG: dict[tuple[str, int], int] = {}


def _stats(raw: str) -> None:
    """librdkafka statistics → per-partition consumer lag (from the broker's high watermark)."""
    try:
        stats = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    LAG.clear()
    for topic, tstats in stats.get("topics", {}).items():
        for pid, pstats in tstats.get("partitions", {}).items():
            if pid == "-1" or pstats.get("fetch_state") in (None, "none", "stopped"):
                continue
            lag = pstats.get("consumer_lag")
            if isinstance(lag, int) and lag >= 0:
                METRICS.consumer_lag.labels(topic, pid).set(lag)
                LAG[(topic, int(pid))] = lag


class Source:
    """Thin wrapper: subscribe with rebalance callbacks, consume in batches, store offsets."""

    def __init__(
        self,
        cfg: KafkaConfig,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
    ) -> None:
        self.cfg = cfg
        conf = consumer_config(cfg)
        conf["stats_cb"] = _stats
        self.consumer = consumer_factory(conf)
        self.consumer.subscribe(
            list(cfg.topics),
            on_assign=lambda _c, parts: on_assign(parts),
            on_revoke=lambda _c, parts: on_revoke(parts),
            on_lost=lambda _c, parts: on_lost(parts),
        )

    def consume(self, timeout: float | None = None) -> list[Any]:
        """Up to ``consume_batch`` records: what is already fetched, at once; when nothing is, the
        first record to arrive within ``timeout`` (default ``consume_timeout_s``) and whatever
        came with it.

        ``consume(n, timeout)`` alone waits for ``n`` records or the whole timeout, which at a
        moderate rate adds the timeout to every record's latency; under a backlog both return full
        batches."""
        c = self.consumer
        n = self.cfg.consume_batch
        msgs = c.consume(n, 0)
        if msgs:
            return msgs
        first = c.poll(self.cfg.consume_timeout_s if timeout is None else timeout)
        if first is None:
            return []
        return [first, *c.consume(n - 1, 0)] if n > 1 else [first]

    def partition_count(self, timeout: float = 5.0) -> int:
        """Partitions of every subscribed topic (the whole group's, for budget shares); 0 if the
        metadata cannot be had in time."""
        try:
            meta = self.consumer.list_topics(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - KafkaException; the caller keeps the last share
            log.warning("could not read topic metadata for the send budget: %s", exc)
            return 0
        return subscribed_partitions(meta, list(self.cfg.topics))

    def poll_callbacks(self, timeout: float) -> list[Any]:
        """Serve rebalance callbacks and heartbeats; returns any records that arrived."""
        return self.consumer.consume(self.cfg.consume_batch, timeout)

    def store(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.store_offsets(offsets=tps)
        except Exception as exc:  # noqa: BLE001 - _STATE for partitions no longer owned
            log.warning("could not store offsets: %s", exc)
            return
        for (t, p), o in offsets.items():
            METRICS.committed_offset.labels(t, str(p)).set(o)

    def commit(self) -> None:
        """Synchronously commit what has been stored (used at shutdown)."""
        try:
            self.consumer.commit(asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - _NO_OFFSET when nothing new was stored
            log.debug("commit: %s", exc)

    def pause(self, tps: list[tuple[str, int]]) -> None:
        if tps:
            self.consumer.pause([TopicPartition(t, p) for t, p in tps])

    def resume(self, tps: list[tuple[str, int]]) -> None:
        if tps:
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])

    def close(self) -> None:
        self.consumer.close()
