"""Poison records: each goes to the dead-letter topic with the right stage and reason, the good
records around them are delivered, and offsets advance past all of them."""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer
from harness import (
    assert_committed_to_end,
    dlq_topic,
    expected_ids,
    missing,
    missing_profiles,
    new_group,
    read_topic,
    start_connector,
    wait_committed_to_end,
)
from support import zigzag

from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.dlq import H_AEP_MESSAGE, H_DETAIL, H_ERROR_CLASS, H_HTTP_STATUS, H_REASON, H_STAGE, H_XACTION_ID
from connector.kafka.topics import all_topics, topic_for

pytestmark = pytest.mark.integration

MYSTERY = {"type": "record", "name": "mysteryEvent", "namespace": "com.capillary.events",
           "fields": [{"name": "eventName", "type": "string"}, {"name": "eventId", "type": "string"},
                      {"name": "createdAt", "type": "long"}]}


def test_poison_zoo(broker, tmp_path: Path, prefix) -> None:
    from conftest import start_emulator

    em = start_emulator(tmp_path, "--failure-style", "v2024")
    try:
        ensure_topics(broker, all_topics(prefix))
        good = generate_events(60, seed=41)
        customer = next(e for e in generate_events(30, seed=42) if e["eventName"] == "customerAdded")
        rejected_by_aep = good[7]
        aep_ids = list(expected_ids([rejected_by_aep]))
        em.faults(message_status_by_id={aep_ids[0]: {"status": 400, "message": "field x is invalid"}})

        huge = copy.deepcopy(customer)
        huge["eventId"] = "huge-1"
        huge["data"]["firstName"] = "A" * 40_000
        future = copy.deepcopy(customer)
        future["eventId"] = "future-1"
        future["createdAt"] = int(time.time() * 1000) + 86_400_000

        registry = SchemaRegistryClient({"url": em.url})
        sid = registry.register_schema("com.capillary.events.mysteryEvent", Schema(orjson.dumps(MYSTERY).decode(), "AVRO"))
        buf = io.BytesIO()
        buf.write(b"\x00" + sid.to_bytes(4, "big"))
        schemaless_writer(buf, parse_schema(MYSTERY), {"eventName": "mysteryEvent", "eventId": "m-1",
                                                       "createdAt": int(time.time() * 1000)})

        topic = topic_for("customerAdded", prefix)
        p = Producer({"bootstrap.servers": broker})
        produce_events(broker, good[:30], "json", topic_prefix=prefix)
        p.produce(topic, key=b"corrupt", value=b"\xff\x13garbage")
        p.produce(topic, key=b"unknown-id", value=b"\x00\x00\x01\x86\xa0\x02")
        p.produce(topic, key=b"mystery", value=buf.getvalue())
        p.produce(topic, key=b"future", value=orjson.dumps(future))
        p.produce(topic, key=b"huge", value=orjson.dumps(huge))
        assert p.flush(10) == 0
        produce_events(broker, good[30:], "avro-single", topic_prefix=prefix)

        group = new_group()
        c = start_connector(
            tmp_path, bootstrap=broker, emulator_url=em.url, prefix=prefix, group=group,
            env={"CAPILLARY_AEP__BATCH__MAX_BYTES": "30000", "CAPILLARY_AEP__XDM__FUTURE_TIMESTAMPS": "reject"})
        c.wait_acknowledged(len(good) + 5)
        assert c.stop() == 0

        want = expected_ids([e for e in good if e is not rejected_by_aep])
        received = em.ids()
        assert missing(received, want) == set()
        assert missing_profiles(received, [e for e in good if e is not rejected_by_aep]) == set()

        letters = {}
        for m in read_topic(broker, dlq_topic(prefix)):
            h = dict(m.headers())
            letters[m.key()] = h
        by_reason = {k: (h[H_STAGE].decode(), h[H_REASON].decode()) for k, h in letters.items()}
        assert by_reason[b"corrupt"] == ("decode", "unknown_format")
        assert by_reason[b"unknown-id"] == ("decode", "unknown_schema_id")
        assert by_reason[b"mystery"] == ("transform", "unknown_event")
        assert by_reason[b"future"] == ("transform", "future_timestamp")
        assert by_reason[b"huge"] == ("deliver", "record_too_large")
        aep_key = str(rejected_by_aep["data"]["customerIdentifiers"]["customerId"]).encode()
        assert by_reason[aep_key] == ("deliver", "aep_400")
        assert letters[aep_key][H_HTTP_STATUS] == b"400"
        assert b"field x is invalid" in letters[aep_key][H_AEP_MESSAGE]
        assert letters[aep_key][H_XACTION_ID]
        assert len(letters) == 6
        assert_committed_to_end(broker, group, prefix)
    finally:
        em.proc.stop()


def _hostile(registry_url: str) -> dict[bytes, tuple[bytes, str]]:
    """Issue 29's kinds, with the schemas they name registered beside the Capillary ones (as in a
    shared registry): key → (value, dead-letter reason at stage decode)."""
    registry = SchemaRegistryClient({"url": registry_url})

    def sid(subject: str, text: str, kind: str = "AVRO", refs: list[SchemaReference] | None = None) -> bytes:
        return b"\x00" + registry.register_schema(subject, Schema(text, kind, refs or [])).to_bytes(4, "big")

    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    nulls = {"type": "record", "name": "Nulls", "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}]}
    json_id = sid("orders-value", '{"type": "object", "properties": {"id": {"type": "string"}}}', "JSON")
    proto_id = sid("payments-value", 'syntax = "proto3"; message Payment { string id = 1; }', "PROTOBUF")
    # A schema with a reference to another subject's type parses in the registry, not on its own here.
    sid("shared-value", orjson.dumps({"type": "record", "name": "Shared", "namespace": "com.other",
                                      "fields": [{"name": "n", "type": "int"}]}).decode())
    refs_id = sid("refs-value", orjson.dumps({"type": "record", "name": "Refs", "fields": [
        {"name": "a", "type": "com.other.Shared"}]}).decode(), refs=[SchemaReference("com.other.Shared", "shared-value", 1)])
    return {
        b"json-schema": (json_id + b'{"id": "x"}', "not_avro_schema"),
        b"protobuf": (proto_id + b"\x00\x0a\x01x", "not_avro_schema"),
        b"unparsable": (refs_id + b"\x02", "invalid_schema"),
        b"deep": (sid("node-value", orjson.dumps(node).decode()) + b"\x02" * 100_000 + b"\x00", "recursive_schema"),
        b"null-bomb": (sid("nulls-value", orjson.dumps(nulls).decode()) + zigzag(50_000_000) + b"\x00",
                       "too_many_items"),
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_hostile_records_never_stop_the_connector(broker, tmp_path: Path, prefix, processes: int) -> None:
    """Issue 29: schema ids naming JSON Schema, Protobuf, unparsable or recursive schemas, and a
    null-array bomb, among 300 good events on a real broker and registry: every good event is
    delivered and committed, each hostile record is a dead letter at decode, SIGTERM exits 0."""
    from conftest import start_emulator

    em = start_emulator(tmp_path)
    try:
        ensure_topics(broker, all_topics(prefix))
        good = generate_events(300, seed=29)
        hostile = _hostile(em.url)
        p = Producer({"bootstrap.servers": broker})
        produce_events(broker, good[:150], "mixed", registry_url=em.url, topic_prefix=prefix)
        for i, (key, (value, _)) in enumerate(hostile.items()):
            p.produce(topic_for(("customerAdded", "pointsAwarded", "transactionAdded")[i % 3], prefix), key=key,
                      value=value)
        assert p.flush(10) == 0
        produce_events(broker, good[150:], "mixed", registry_url=em.url, topic_prefix=prefix)

        group = new_group()
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=em.url, prefix=prefix, group=group,
                            env={"CAPILLARY_AEP__PROCESSING__PROCESSES": str(processes)})
        c.wait_acknowledged(len(good) + len(hostile))
        assert c.metric("capillary_aep_pipeline_processes") == processes
        assert c.metric("capillary_aep_pipeline_restarts_total") == 0
        assert c.stop() == 0

        received = em.ids()
        assert missing(received, expected_ids(good)) == set()
        assert missing_profiles(received, good) == set()
        letters = {m.key(): dict(m.headers()) for m in read_topic(broker, dlq_topic(prefix))}
        assert {k: (h[H_STAGE].decode(), h[H_REASON].decode()) for k, h in letters.items()} == {
            k: ("decode", reason) for k, (_, reason) in hostile.items()}
        assert b"JSON" in letters[b"json-schema"][H_DETAIL] and b"PROTOBUF" in letters[b"protobuf"][H_DETAIL]
        assert_committed_to_end(broker, group, prefix)
    finally:
        em.proc.stop()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_record_that_kills_its_process_is_isolated_among_a_thousand(broker, tmp_path: Path, prefix,
                                                                      processes: int) -> None:
    """A record that kills the pipeline process processing it (the test hook: os._exit on a marker)
    among 999 good ones: it kills two processes, then is 1 dead letter (stage process,
    crashed_processing); 999 delivered, offsets committed to the end, the connector stops cleanly."""
    from conftest import start_emulator

    marker = "KILL-THE-WORKER"
    em = start_emulator(tmp_path)
    try:
        ensure_topics(broker, all_topics(prefix))
        good = generate_events(999, seed=30)
        killer = copy.deepcopy(next(e for e in good if e["eventName"] == "customerAdded"))
        killer["eventId"] = marker
        produce_events(broker, good[:500], "json", topic_prefix=prefix)
        p = Producer({"bootstrap.servers": broker})
        p.produce(topic_for("customerAdded", prefix), key=b"killer", value=orjson.dumps(killer))
        assert p.flush(10) == 0
        produce_events(broker, good[500:], "json", topic_prefix=prefix)

        group = new_group()
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=em.url, prefix=prefix, group=group,
                            env={"CAPILLARY_AEP__PROCESSING__PROCESSES": str(processes),
                                 "CAPILLARY_AEP_TEST_CRASH_ON": marker})
        wait_committed_to_end(c, broker, group, prefix)
        assert c.metric("capillary_aep_records_crashed_total") == 1
        assert c.metric("capillary_aep_pipeline_restarts_total") == 2
        assert c.stop() == 0

        received = em.ids()
        assert missing(received, expected_ids(good)) == set()
        assert missing_profiles(received, good) == set()
        letters = list(read_topic(broker, dlq_topic(prefix)))
        assert [m.key() for m in letters] == [b"killer"]
        h = dict(letters[0].headers())
        assert (h[H_STAGE], h[H_REASON], h[H_ERROR_CLASS]) == (b"process", b"crashed_processing", b"ProcessCrashed")
        assert b"exit code 86" in h[H_DETAIL]
        assert_committed_to_end(broker, group, prefix)
    finally:
        em.proc.stop()
