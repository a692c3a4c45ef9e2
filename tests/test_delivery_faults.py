"""The delivery guarantee under faults, on real processes: nothing lost, transient failures never
dead-lettered, memory bounded while the inlet is down, wrong credentials drain nothing.

CI-sized versions; the long and large scenarios (100k-event chaos, 60 s outage, 1M backlog) are
in ``bench/faults.py``."""

from __future__ import annotations

import copy
import hashlib
import random
import threading
import time
from pathlib import Path

import orjson
import pytest
from harness import (
    PROCESSES_ENV,
    assert_committed_to_end,
    committed,
    dlq_topic,
    expected_ids,
    missing,
    missing_profiles,
    new_group,
    possible_ids,
    read_topic,
    start_connector,
)
from support import wait_until

from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics
from connector.pipeline.backpressure import PAUSE_FACTOR

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, params=[1, 2], ids=["1-process", "2-processes"])
def processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every fault here, with one pipeline process per replica and with two."""
    monkeypatch.setenv(PROCESSES_ENV, str(request.param))
    return int(request.param)



def test_chaos_transient_faults_lose_nothing_and_dead_letter_nothing(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(6000, seed=21)
    produce_events(broker, events, "mixed", registry_url=emulator.url, topic_prefix=prefix)
    want = expected_ids(events)
    stop = threading.Event()
    rng = random.Random(5)
    modes = [
        {"status": 500, "rate": 0.3},
        {"status": 503, "rate": 0.3, "retry_after": "1"},
        {"status": 429, "rate": 0.3},
        {"status": 429, "rate": 0.3, "retry_after": "0"},
        {"status": 502, "rate": 0.2, "latency_ms": 100, "latency_jitter_ms": 200},
        {"drop_connection_rate": 0.2},
        {"message_status": {"status": 503, "rate": 0.05}},
        {"message_status": {"status": 429, "rate": 0.05}, "status": 504, "rate": 0.1},
    ]

    def chaos() -> None:
        while not stop.is_set():
            emulator.clear_faults()
            emulator.faults(**rng.choice(modes))
            stop.wait(0.4)
        emulator.clear_faults()

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    try:
        c.wait_acknowledged(len(events), timeout=240)
    finally:
        stop.set()
        t.join()
    assert c.metric("capillary_aep_retries_total") > 0  # the faults really fired
    assert c.stop() == 0
    received = emulator.ids()
    assert missing(received, want) == set() and missing_profiles(received, events) == set()
    assert set(received) <= possible_ids(events)
    assert read_topic(broker, dlq_topic(prefix), idle_s=0.5) == []  # no transient failure dead-lettered
    dups = sum(received.values()) - len(received)
    assert dups <= 0.05 * len(want)  # bounded: a retry re-sends only what failed (and a customer's later updates)
    assert_committed_to_end(broker, group, prefix)


def test_outage_pauses_consumption_with_bounded_memory_then_resumes(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(4000, seed=22)
    produce_events(broker, events, "json", topic_prefix=prefix)
    emulator.faults(status=503)
    group = new_group()
    cap = 500
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env={"CAPILLARY_AEP__DELIVERY__MAX_BUFFERED_RECORDS": str(cap),
                             "CAPILLARY_AEP__KAFKA__CONSUME_BATCH": "100"})
    wait_until(lambda: c.metric("capillary_aep_paused_partitions") > 0, 30, what="partitions paused")
    # While the inlet is down, the buffer stays bounded, not the backlog: reading stops at the cap; the
    # reads that keep serving callbacks while holding add a consume batch each until the pause, at
    # 1.5 × the cap (one batch of slack).
    samples = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        samples.append(c.metric("capillary_aep_buffered_records"))
        time.sleep(0.2)
    assert max(samples) <= PAUSE_FACTOR * cap + 100 + 1
    assert c.metric("capillary_aep_input_held_seconds_total") > 0
    assert c.metric("capillary_aep_records_acknowledged_total") == 0
    assert all(off < 0 for off in committed(broker, group, prefix).values())
    emulator.clear_faults()
    c.wait_acknowledged(len(events), timeout=120)
    assert c.metric("capillary_aep_paused_partitions") == 0
    assert c.stop() == 0
    assert missing(emulator.ids(), expected_ids(events)) == set()
    assert missing_profiles(emulator.ids(), events) == set()
    assert_committed_to_end(broker, group, prefix)


def test_tokens_expiring_every_few_seconds_fail_no_delivery(broker, tmp_path: Path, prefix) -> None:
    from conftest import start_emulator

    em = start_emulator(tmp_path, "--token-ttl", "2")
    try:
        ensure_topics(broker, all_topics(prefix))
        group = new_group()
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=em.url, prefix=prefix, group=group)
        produced: list[dict] = []
        start = time.monotonic()
        seed = 100
        while time.monotonic() - start < 7:  # keep traffic flowing across several token lifetimes
            batch = generate_events(100, seed=seed)
            seed += 1
            produce_events(broker, batch, "json", topic_prefix=prefix)
            produced += batch
            time.sleep(0.5)
        c.wait_acknowledged(len(produced), timeout=60)
        assert c.stop() == 0
        stats = em.stats()
        assert missing(em.ids(), expected_ids(produced)) == set()
        assert missing_profiles(em.ids(), produced) == set()
        assert read_topic(broker, dlq_topic(prefix), idle_s=0.5) == []
        # Proactive refresh at half the 2 s lifetime: about one token per second of running, not one per request.
        elapsed = time.monotonic() - start
        assert 3 <= stats["token_requests"] <= elapsed * 2 + 5
        assert stats["token_requests"] < stats["batch_requests"]
    finally:
        em.proc.stop()


def test_wrong_credentials_stop_consumption_and_drain_nothing(broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(200, seed=23)
    produce_events(broker, events, "json", topic_prefix=prefix)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env={"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "wrong-secret-value"})
    wait_until(lambda: c.metric("capillary_aep_auth_failed") >= 1, 30, what="auth failure reported")
    wait_until(lambda: c.ready()["status"] == 503, 30, what="not ready")
    assert c.ready()["checks"]["credentials_accepted"] is False
    time.sleep(2)  # give a broken implementation the time to drain the topic somewhere
    assert c.metric("capillary_aep_records_acknowledged_total") == 0
    assert c.metric("capillary_aep_records_dead_lettered_total") == 0
    assert c.stop() == 0
    assert all(off < 0 for off in committed(broker, group, prefix).values())
    assert read_topic(broker, dlq_topic(prefix), idle_s=0.5) == []
    log = c.proc.log_text()
    assert "wrong-secret-value" not in log
    assert "rejected the client credentials" in log


# The degraded inlet of issue 15, as seen on the reference box: whole-request 500/503/429 (half the
# 429s with Retry-After: 1), 2 % dropped connections, 0–30 ms jitter, 2 % per-message 5xx in 207s.
DEGRADED_INLET = {
    "status_mix": [{"status": 500, "rate": 0.10}, {"status": 503, "rate": 0.05},
                   {"status": 429, "rate": 0.05, "retry_after": "1"}, {"status": 429, "rate": 0.05}],
    "drop_connection_rate": 0.02,
    "latency_jitter_ms": 30,
    "message_status": {"status": 500, "rate": 0.02},
}


def test_a_degraded_inlet_delivers_everything_with_few_duplicates(broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(5000, seed=15)
    produce_events(broker, events, "json", topic_prefix=prefix, partitions=2)  # 6 topics × 2 = 12 partitions
    want = expected_ids(events)
    emulator.faults(**DEGRADED_INLET)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events), timeout=240)
    stats = emulator.stats()
    c_retries = c.metric("capillary_aep_message_retries_total")
    assert c.stop() == 0
    # The faults really fired (dropped connections are too rare to count on in ~50 requests).
    assert stats["faulted_requests"] > 0 and c_retries > 0
    assert c.proc.log_text().count("per-message failures") >= 1  # the retry loop says what it does
    received = emulator.ids()
    assert missing(received, want) == set() and missing_profiles(received, events) == set()
    assert read_topic(broker, dlq_topic(prefix), idle_s=0.5) == []  # nothing transient dead-lettered
    assert set(received) <= possible_ids(events)
    # Only the failed message (and its customer's later profile updates) is re-sent: few duplicates.
    assert stats["duplicate_ids"] == sum(received.values()) - len(received)
    assert stats["duplicate_ids"] <= 0.02 * len(events), stats["duplicate_ids"]
    assert_committed_to_end(broker, group, prefix)


def test_an_oversized_record_is_dead_lettered_truncated_and_its_partition_moves_on(
        broker, emulator, prefix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import Producer

    from connector.kafka.dlq import H_OFFSET, H_ORIGINAL_SHA256, H_ORIGINAL_SIZE, H_REASON, H_TRUNCATED
    from connector.kafka.topics import topic_for

    ensure_topics(broker, all_topics(prefix), 1)  # one partition: the big record sits among the good ones
    good = [e for e in generate_events(400, seed=16) if e["eventName"] == "customerAdded"][:40]
    big = copy.deepcopy(good[0])
    big["eventId"] = "oversized-1"
    big["data"]["customFields"] = [{"key": f"cf{i}", "value": "x" * 1000} for i in range(1200)]
    value = orjson.dumps(big)
    assert len(value) > 1_200_000
    topic = topic_for("customerAdded", prefix)
    produce_events(broker, good[:20], "json", topic_prefix=prefix, partitions=1)
    p = Producer({"bootstrap.servers": broker, "message.max.bytes": 2_000_000})
    p.produce(topic, key=b"oversized", value=value)
    assert p.flush(10) == 0
    produce_events(broker, good[20:], "json", topic_prefix=prefix, partitions=1)

    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(good) + 1, timeout=60)
    assert c.metric("capillary_aep_dlq_truncated_total") == 1
    assert c.stop(timeout=5 + 5 + 5) == 0  # drain 5 s + close 5 s in the tests' config, and exit 0
    assert missing(emulator.ids(), expected_ids(good)) == set()
    assert missing_profiles(emulator.ids(), good) == set()
    letters = read_topic(broker, dlq_topic(prefix), idle_s=0.5)
    assert len(letters) == 1
    h = dict(letters[0].headers())
    assert h[H_REASON] == b"record_too_large" and h[H_TRUNCATED] in (b"cut", b"omitted")
    assert int(h[H_ORIGINAL_SIZE]) == len(value)
    assert h[H_ORIGINAL_SHA256].decode() == hashlib.sha256(value).hexdigest()
    source_offset = next(m.offset() for m in read_topic(broker, topic, idle_s=0.5) if m.key() == b"oversized")
    assert int(h[H_OFFSET]) == source_offset and value.startswith(letters[0].value() or b"")
    assert_committed_to_end(broker, group, prefix)
    # dlq replay does not re-publish a partial value: it names the source offset to re-read.
    from connector.config import load_settings
    from connector.dev.emulator import config as em_config
    from connector.tools.replay import ReplayFilter, replay

    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", em_config.DEMO_CLIENT_SECRET)
    report = replay(load_settings(c.config), ReplayFilter(), idle_s=0.5)
    assert report.truncated == [f"{topic}[0]@{source_offset}"] and report.replayed == 0
