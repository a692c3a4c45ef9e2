"""Publish sample Capillary events to Kafka (for the demo, tests and benchmarks).

Encodings: ``avro-registry`` (Confluent wire format; schemas registered under the record's full
name, i.e. RecordNameStrategy, since one topic carries several event types), ``avro-single``
(Avro single-object encoding against ``schemas/``), ``json``, or ``mixed`` (a third of each).
Records are keyed by Capillary customer id, so one customer's events keep their order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from io import BytesIO
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import schemaless_writer

from connector.decode.avro_schemas import LocalSchemas
from connector.kafka.topics import TOPIC_PREFIX, all_topics, topic_for

ENCODINGS = ("avro-registry", "avro-single", "json", "mixed")


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4, timeout: float = 30.0) -> None:
    """Create topics that do not exist yet (idempotent)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
    if not new:
        return
    for future in admin.create_topics(new, operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout
    wanted = {t.topic for t in new}
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=timeout).topics
        if all(t in meta and meta[t].partitions for t in wanted):
            return
        time.sleep(0.1)


def customer_key(event: dict[str, Any]) -> bytes | None:
    """The record key the webhook ingress gives the event (one customer, one partition, one order):
    its customer wherever the transform finds it, a coupon's or a merge survivor's included."""
    from connector.ingest.validate import customer_key as ingress_key

    data = event.get("data")
    return ingress_key(data) if isinstance(data, dict) else None


class SampleEncoder:
    def __init__(self, schemas: LocalSchemas, registry_url: str = "") -> None:
        self.schemas = schemas
        self._registry = None
        self._ids: dict[str, int] = {}
        if registry_url:
            from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": registry_url})
            self._schema_cls = Schema

    def encode(self, event: dict[str, Any], encoding: str) -> bytes:
        name = event["eventName"]
        if encoding == "json":
            return orjson.dumps(event)
        buf = BytesIO()
        if encoding == "avro-single":
            buf.write(b"\xc3\x01" + self.schemas.fingerprint(name))
        elif encoding == "avro-registry":
            buf.write(b"\x00" + self._schema_id(name).to_bytes(4, "big"))
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        schemaless_writer(buf, self.schemas.parsed(name), event)
        return buf.getvalue()

    def _schema_id(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is None:
            if self._registry is None:
                raise ValueError("avro-registry encoding needs a schema registry URL")
            full = self.schemas.parsed(name)["name"]
            schema = self._schema_cls(self.schemas.schema_json(name), "AVRO")
            sid = self._ids[name] = self._registry.register_schema(full, schema)
        return sid


def produce_events(
    bootstrap: str,
    events: list[dict[str, Any]],
    encoding: str = "mixed",
    *,
    schemas: LocalSchemas | None = None,
    registry_url: str = "",
    topic_prefix: str = TOPIC_PREFIX,
    partitions: int = 4,
) -> Counter[str]:
    """Produce events (acks=all) and wait until the broker has all of them; returns counts per topic."""
    schemas = schemas or LocalSchemas.load()
    ensure_topics(bootstrap, all_topics(topic_prefix), partitions)
    encoder = SampleEncoder(schemas, registry_url)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 20, "compression.type": "none"})
    encodings = ("avro-registry", "avro-single", "json") if encoding == "mixed" else (encoding,)
    if encoding == "mixed" and not registry_url:
        encodings = ("avro-single", "json")
    errors: list[str] = []
    counts: Counter[str] = Counter()

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            counts[msg.topic()] += 1

    for i, event in enumerate(events):
        value = encoder.encode(event, encodings[i % len(encodings)])
        topic = topic_for(event["eventName"], topic_prefix)
        while True:
            try:
                producer.produce(topic, value=value, key=customer_key(event), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or errors:
        raise RuntimeError(f"{remaining} events not acknowledged by the broker; errors: {errors[:3]}")
    return counts
