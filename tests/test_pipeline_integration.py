"""End to end on real parts: embedded Kafka broker → connector process → emulator over HTTP."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from harness import (
    assert_committed_to_end,
    assert_exactly_once,
    committed,
    diff_paths,
    dlq_topic,
    end_offsets,
    expected_envelopes,
    expected_ids,
    expected_profiles,
    new_group,
    read_topic,
    start_connector,
    transformer,
)
from support import wait_until

from connector.dev.emulator import config as em
from connector.dev.emulator.profiles import primary_key
from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.dlq import H_OFFSET, H_REASON, H_STAGE
from connector.kafka.topics import all_topics, topic_for

pytestmark = pytest.mark.integration


def without_cached(value: object) -> object:
    """``value`` without keys filled from the program cache (names containing tier/program), and
    without the objects that leaves empty."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if "tier" in k.lower() or "program" in k.lower():
                continue
            v = without_cached(v)
            if v not in ({}, []):
                out[k] = v
        return out
    if isinstance(value, list):
        return [without_cached(v) for v in value]
    return value


def without_program_names(value: object) -> object:
    """``value`` without the program names the per-program cache fills in (``program``): which
    worker saw a program's details first decides whether a record carries its name."""
    if isinstance(value, dict):
        return {k: without_program_names(v) for k, v in value.items() if k != "program"}
    if isinstance(value, list):
        return [without_program_names(v) for v in value]
    return value


def test_every_event_arrives_exactly_once_as_a_valid_envelope(broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(240, seed=11)
    produce_events(broker, events, "mixed", registry_url=emulator.url, topic_prefix=prefix)
    want = expected_ids(events)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events))
    wait_until(lambda: sum(emulator.ids().values()) >= sum(want.values()), 30, what="all messages at the inlet")
    assert c.stop() == 0

    assert_exactly_once(emulator.ids(), events)  # every message, exactly once, nothing else
    assert emulator.stats()["max_profile_records_per_identity_in_request"] == 1  # coalesced
    stats = emulator.stats()
    assert stats["messages_rejected"] == 0 and stats["null_or_empty"] == 0
    received = {m["envelope"]["body"]["xdmEntity"]["_id"]: m["envelope"] for m in emulator.messages()}
    # Exactly what the transform makes — apart from what comes from the per-program cache (program
    # and tier names), which fills in whatever order the partitions are consumed: those keys are
    # compared separately, only for envelopes where the cache was warm in both runs.
    expected = expected_envelopes(events)
    assert set(received) <= set(expected)
    mismatched = [i for i in received if expected[i]["header"]["datasetId"] == em.DEMO_EVENT_DATASET_ID
                  and without_cached(received[i]) != without_cached(expected[i])]
    assert mismatched == [], diff_paths(received[mismatched[0]], expected[mismatched[0]]) if mismatched else ""
    for env in received.values():
        header, entity = env["header"], env["body"]["xdmEntity"]
        assert header["imsOrgId"] == em.DEMO_ORG_ID
        assert header["datasetId"] in (em.DEMO_EVENT_DATASET_ID, em.DEMO_PROFILE_DATASET_ID)
        assert header["schemaRef"] == env["body"]["xdmMeta"]["schemaRef"]
        primary = [i for ids in entity["identityMap"].values() for i in ids if i.get("primary")]
        assert len(primary) == 1
        if header["datasetId"] == em.DEMO_EVENT_DATASET_ID:
            assert entity["timestamp"].endswith("Z") and entity["eventType"]
    customers = {str(ev["data"]["customerIdentifiers"]["customerId"]) for ev in events
                 if "customerIdentifiers" in ev["data"]}
    seen = {i["id"] for env in received.values() for i in env["body"]["xdmEntity"]["identityMap"]["CapillaryCustomerId"]}
    assert customers <= seen
    # Offsets: committed up to the true end of every partition.
    ends = end_offsets(broker, prefix)
    got = committed(broker, group, prefix)
    assert {tp: got.get(tp) for tp in ends} == ends


def test_nothing_is_committed_while_the_inlet_fails_and_a_restart_redelivers(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(60, seed=12)
    produce_events(broker, events, "json", topic_prefix=prefix)
    emulator.faults(status=503)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    wait_until(lambda: emulator.stats()["requests"].get("503", 0) >= 5, 30, what="failing requests")
    assert c.metric("capillary_aep_records_acknowledged_total") == 0
    assert c.stop() == 0  # drain times out: nothing acknowledged, nothing committed
    assert all(off < 0 for off in committed(broker, group, prefix).values())
    assert sum(emulator.ids().values()) == 0

    emulator.clear_faults()
    c2 = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c2.wait_acknowledged(len(events))
    assert c2.stop() == 0
    assert_exactly_once(emulator.ids(), events)


def test_after_success_a_restart_delivers_nothing_again(broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(50, seed=13)
    produce_events(broker, events, "avro-single", topic_prefix=prefix)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events))
    assert c.stop() == 0
    first = sum(emulator.ids().values())

    c2 = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    # A fresh event proves the restarted connector is consuming; only it may arrive.
    late = generate_events(1, seed=99)
    produce_events(broker, late, "json", topic_prefix=prefix)
    c2.wait_acknowledged(1)
    assert c2.stop() == 0
    assert_exactly_once(emulator.ids(), events + late)
    assert sum(emulator.ids().values()) == first + sum(expected_ids(late).values())


def test_corrupt_and_unknown_schema_records_are_dead_lettered_and_the_stream_goes_on(
        broker, emulator, prefix, tmp_path: Path) -> None:
    before = generate_events(20, seed=14)
    after = generate_events(20, seed=15)
    produce_events(broker, before, "json", topic_prefix=prefix)
    topic = topic_for("pointsIssued", prefix)
    p = Producer({"bootstrap.servers": broker})
    p.produce(topic, key=b"k1", value=b"\x07garbage-bytes", headers=[("trace", b"abc")])
    p.produce(topic, key=b"k2", value=b"\x00\x00\x00\x27\x0f" + b"\x02\x04")  # schema id 9999
    p.produce(topic, key=b"k3", value=b'{"eventName": "pointsIssued", "data": ')  # truncated JSON
    assert p.flush(10) == 0
    produce_events(broker, after, "avro-registry", registry_url=emulator.url, topic_prefix=prefix)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(before) + 3 + len(after))
    assert c.stop() == 0

    assert_exactly_once(emulator.ids(), before + after)
    dlq = read_topic(broker, dlq_topic(prefix))
    letters = {m.key(): dict(m.headers()) for m in dlq}
    assert set(letters) == {b"k1", b"k2", b"k3"}
    assert letters[b"k1"][H_REASON] == b"unknown_format" and letters[b"k1"][H_STAGE] == b"decode"
    assert letters[b"k1"]["trace"] == b"abc"  # original headers kept
    assert letters[b"k2"][H_REASON] == b"unknown_schema_id"
    assert letters[b"k3"][H_REASON] == b"invalid_json"
    assert all(H_OFFSET in h for h in letters.values())
    ends = end_offsets(broker, prefix)
    got = committed(broker, group, prefix)
    assert {tp: got.get(tp) for tp in ends} == ends


def test_token_is_fetched_once_and_refreshed_when_the_inlet_rejects_it(
        broker, emulator, prefix, tmp_path: Path) -> None:
    first = generate_events(30, seed=16)
    produce_events(broker, first, "json", topic_prefix=prefix)
    group = new_group()
    # One pipeline process: each process holds its own token (N processes, N tokens).
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        extra="[processing]\nprocesses = 1\n")
    c.wait_acknowledged(len(first))
    assert emulator.stats()["token_requests"] == 1

    emulator.faults(revoke_tokens=True)  # every token issued so far is now invalid (expired/rotated)
    second = generate_events(30, seed=17)
    produce_events(broker, second, "json", topic_prefix=prefix)
    c.wait_acknowledged(len(first) + len(second))
    assert c.stop() == 0
    assert emulator.stats()["token_requests"] == 2
    assert_exactly_once(emulator.ids(), first + second)


def test_profile_state_after_a_backlog_equals_the_events_applied_in_order(
        broker, emulator, prefix, tmp_path: Path) -> None:
    """AEP does not apply a request's profile records in order: the connector sends one merged
    record per customer per request, so the emulator (applying what it accepted in acceptance
    order) must end with the state the events make one by one — per-message retries included."""
    events = generate_events(3000, seed=20)
    # Kafka orders a customer's events only within one partition: all events go to one topic keyed
    # by customer (as Capillary keys them), so each customer's updates have one order to keep.
    ensure_topics(broker, all_topics(prefix), 4)
    topic = topic_for("pointsIssued", prefix)
    t = transformer()
    producer = Producer({"bootstrap.servers": broker, "acks": "all", "enable.idempotence": True})
    for ev in events:
        profiles = [m.envelope["body"]["xdmEntity"] for m in t.transform(ev) if m.kind == "profile"]
        key = primary_key(profiles[0]) if profiles else ev["eventId"]
        producer.produce(topic, key=str(key).encode(), value=orjson.dumps(ev))
        producer.poll(0)
    assert producer.flush(30) == 0
    emulator.faults(message_status={"status": 503, "rate": 0.03})
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events), timeout=120)
    produced = c.metric("capillary_aep_records_transformed_total")  # events and profile updates
    sent = c.metric("capillary_aep_profile_records_sent_total")
    assert c.stop() == 0
    stats = emulator.stats()
    assert stats["max_profile_records_per_identity_in_request"] == 1
    assert stats["profile_records_skipped"] == {}  # Identity Service took every record
    want = expected_profiles(events)
    got = emulator.http.get("/__emulator/profiles").json()["profiles"]
    assert set(got) == set(want)
    wrong = [k for k in want if without_program_names(got[k]) != without_program_names(want[k])]
    assert wrong == [], diff_paths(got[wrong[0]], want[wrong[0]]) if wrong else ""
    # The loyalty state the issue names: points, lifetime points, tier, coupons and cards.
    covered = {k for p in want.values() for k in (p.get("loyalty") or {})}
    assert {"points", "lifetimePoints", "tier", "rewards", "cardsDetails"} <= covered
    assert 0 < sent < produced - len(events)  # fewer profile records sent than the transform made
    assert_committed_to_end(broker, group, prefix)
