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
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
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
)

from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.dlq import H_AEP_MESSAGE, H_HTTP_STATUS, H_REASON, H_STAGE, H_XACTION_ID
from connector.topics import all_topics, topic_for

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
