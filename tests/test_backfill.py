"""``capillary-aep backfill`` against a real broker and the emulator: history through batch ingestion,
then the stream continues from the stop point — every event once, every profile right; killed while
uploading, it resumes without uploading a file twice; a failed batch is reported and moves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from harness import (
    assert_exactly_once,
    committed,
    dlq_topic,
    expected_profiles,
    new_group,
    read_topic,
    start_connector,
    transformer,
    write_config,
)
from support import ROOT, ManagedProcess, free_port, python_module, wait_until
from test_pipeline_integration import without_program_names

from connector.dev.emulator import config as em
from connector.dev.emulator.profiles import primary_key
from connector.dev.produce import ensure_topics
from connector.dev.samples import generate_events
from connector.errors import ExitCode
from connector.kafka.dlq import H_REASON
from connector.kafka.topics import all_topics, topic_for

pytestmark = pytest.mark.integration


def env(emulator_url: str) -> dict[str, str]:
    return {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET,
            "CAPILLARY_AEP__AEP__PLATFORM_URL": emulator_url, "CAPILLARY_AEP__LOG__FORMAT": "text",
            "PYTHONPATH": str(ROOT)}


def config(tmp_path: Path, broker: str, emulator_url: str, prefix: str, group: str) -> Path:
    return write_config(tmp_path / f"backfill-{group}.toml", bootstrap=broker, emulator_url=emulator_url,
                        prefix=prefix, group=group, metrics_port=free_port())


BACKFILL_FLAGS = ("--no-progress", "--poll-interval", "0", "--file-size", "40000", "--small-file-limit", "30000",
                  "--chunk-size", "16000", "--max-files-per-batch", "4", "--checkpoint-records", "500")


def backfill(cfg: Path, workdir: Path, emulator_url: str, *args: str, timeout: float = 300) -> tuple[int, str]:
    r = subprocess.run(python_module("connector", "backfill", "--config", str(cfg), "--work-dir", str(workdir),
                                     *BACKFILL_FLAGS, *args),
                       env=env(emulator_url), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r.returncode, r.stdout + r.stderr


def produce_keyed(broker: str, prefix: str, events: list[dict[str, Any]], poison: int = 0) -> None:
    """Every event to one topic keyed by customer (as Capillary keys them): each customer's updates
    have one order to keep. ``poison`` values that are not JSON go in as well."""
    topic = topic_for("pointsIssued", prefix)
    t = transformer()
    producer = Producer({"bootstrap.servers": broker, "acks": "all", "enable.idempotence": True, "linger.ms": 20})
    for ev in events:
        profiles = [m.envelope["body"]["xdmEntity"] for m in t.transform(ev) if m.kind == "profile"]
        key = primary_key(profiles[0]) if profiles else ev["eventId"]
        producer.produce(topic, key=str(key).encode(), value=orjson.dumps(ev))
        producer.poll(0)
    for i in range(poison):
        producer.produce(topic, key=b"poison", value=b"{not json %d" % i)
    assert producer.flush(30) == 0


def limits(emulator: Any, **kw: int) -> None:
    emulator.http.post("/__emulator/batches/limits", json=kw).raise_for_status()


def inventory(emulator: Any) -> dict[str, Any]:
    return emulator.http.get("/__emulator/batches").json()  # type: ignore[no-any-return]


def assert_profiles_right(emulator: Any, events: list[dict[str, Any]]) -> None:
    want = expected_profiles(events)
    got = emulator.http.get("/__emulator/profiles").json()["profiles"]
    assert set(got) == set(want)
    wrong = [k for k in want if without_program_names(got[k]) != without_program_names(want[k])]
    assert wrong == [], (wrong[0], got[wrong[0]], want[wrong[0]]) if wrong else ""


def test_backfill_then_the_stream_every_event_once_and_every_profile_right(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(3000, seed=41)
    history, live = events[:2000], events[2000:]
    ensure_topics(broker, all_topics(prefix), 4)
    produce_keyed(broker, prefix, history, poison=3)
    limits(emulator, small_file_bytes=30000, max_files_per_batch=4, processing_polls=2)
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    workdir = tmp_path / "work"

    dry_code, dry = backfill(cfg, workdir, emulator.url, "--dry-run")
    assert dry_code == 0, dry
    assert "would read 2,003 records" in dry and "batches" in dry and not (workdir / "manifest.json").exists()
    assert inventory(emulator)["batches"] == {}

    code, out = backfill(cfg, workdir, emulator.url)
    assert code == 0, out
    assert "hand-over committed" in out
    inv = inventory(emulator)
    batches = inv["batches"].values()
    assert len(batches) >= 3 and all(b["status"] == "success" for b in batches)  # events in several batches
    assert all(len(b["files"]) <= 4 for b in batches)
    assert max(n for b in batches for n in b["files"].values()) > 30000  # some files went the large-file way
    assert set(inv["puts"].values()) == {1}  # every file uploaded once
    stats = emulator.stats()
    assert stats["max_profile_records_per_identity_in_request"] == 1  # one record per customer per batch
    assert stats["profile_records_skipped"] == {}
    assert stats["messages_accepted"] == 0  # nothing went through the streaming inlet
    letters = read_topic(broker, dlq_topic(prefix))
    assert len(letters) == 3 and {dict(m.headers())[H_REASON] for m in letters} == {b"invalid_json"}
    # the stop point is the group's committed offsets
    topic = topic_for("pointsIssued", prefix)
    got = {tp: off for tp, off in committed(broker, group, prefix).items() if tp[0] == topic}
    assert sum(got.values()) == len(history) + 3

    # Run again once finished: nothing is loaded twice.
    code, out = backfill(cfg, workdir, emulator.url)
    assert code == 0 and "already complete" in out, out
    assert len(inventory(emulator)["batches"]) == len(batches)

    # The stream continues where the backfill stopped.
    produce_keyed(broker, prefix, live)
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(live), timeout=120)
    assert c.stop() == 0
    assert_exactly_once(emulator.ids(), events)
    assert emulator.stats()["messages_accepted"] > 0
    assert_profiles_right(emulator, events)


def test_killed_while_uploading_it_resumes_without_uploading_a_file_twice(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(1500, seed=43)
    ensure_topics(broker, all_topics(prefix), 2)
    produce_keyed(broker, prefix, events)
    limits(emulator, small_file_bytes=30000, max_files_per_batch=4, latency_ms=150)
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    workdir = tmp_path / "work"
    manifest = workdir / "manifest.json"
    proc = ManagedProcess(python_module("connector", "backfill", "--config", str(cfg), "--work-dir", str(workdir),
                                        *BACKFILL_FLAGS), env=env(emulator.url), log_path=tmp_path / "killed.log")

    def uploaded() -> list[str]:
        if not manifest.exists():
            return []
        m = json.loads(manifest.read_text())
        return [f"{b['id']}/{n}" for b in m["batches"] for n in b["uploaded"]]

    wait_until(lambda: len(uploaded()) >= 3 or not proc.alive(), 120, what="three files uploaded")
    proc.signal(signal.SIGKILL)
    proc.wait(10)
    done_before = uploaded()
    assert len(done_before) >= 3 and not json.loads(manifest.read_text())["batches"][-1]["completed"], proc.log_text()

    limits(emulator, latency_ms=0)
    code, out = backfill(cfg, workdir, emulator.url)
    assert code == 0, out
    puts = inventory(emulator)["puts"]
    assert all(puts[name] == 1 for name in done_before)  # what the manifest holds is never uploaded again
    assert sum(n - 1 for n in puts.values()) <= 1  # at most the one in flight at the kill, same name
    assert_exactly_once(emulator.ids(), events)
    assert_profiles_right(emulator, events)


def test_a_failed_batch_is_reported_with_aeps_error_and_moves_nothing(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(300, seed=47)
    ensure_topics(broker, all_topics(prefix), 2)
    produce_keyed(broker, prefix, events)
    emulator.http.post("/__emulator/batches/faults", json={"dataset_id": em.DEMO_PROFILE_DATASET_ID, "errors": [
        {"code": "INGEST-1212-400", "description": "emulated: 7 rows failed XDM validation"}]}).raise_for_status()
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    workdir = tmp_path / "work"
    code, out = backfill(cfg, workdir, emulator.url)
    assert code == ExitCode.BATCH_FAILED, out
    assert "INGEST-1212-400: emulated: 7 rows failed XDM validation" in out
    assert all(off < 0 for off in committed(broker, group, prefix).values())  # nothing committed: not moved

    code, out = backfill(cfg, workdir, emulator.url)  # still failed: reported again, nothing new loaded
    assert code == ExitCode.BATCH_FAILED, out
    code, out = backfill(cfg, workdir, emulator.url, "--retry-failed")
    assert code == 0, out
    assert_exactly_once(emulator.ids(), events)
    assert sum(v for v in committed(broker, group, prefix).values() if v > 0) == len(events)


def test_the_hand_over_is_refused_while_the_group_is_running(broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(100, seed=53)
    ensure_topics(broker, all_topics(prefix), 1)
    produce_keyed(broker, prefix, events)
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    member = Consumer({"bootstrap.servers": broker, "group.id": group, "session.timeout.ms": 6000})
    member.subscribe([topic_for("pointsIssued", prefix)])
    try:
        wait_until(lambda: (member.poll(0.1), member.assignment())[1], 30, what="a member in the group")
        code, out = backfill(cfg, tmp_path / "work", emulator.url)
        assert code == ExitCode.HANDOVER, out
        assert "active member" in out
    finally:
        member.close()
    code, out = backfill(cfg, tmp_path / "work", emulator.url)  # resumes at the hand-over, loads nothing again
    assert code == 0, out
    assert len(inventory(emulator)["batches"]) == 2
    assert_exactly_once(emulator.ids(), events)


def test_export_files_load_without_a_hand_over_and_bad_lines_are_dead_lettered(
        broker, emulator, prefix, tmp_path: Path) -> None:
    events = generate_events(200, seed=59)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + b'{"eventName": 5}\n')
    ensure_topics(broker, [dlq_topic(prefix)], 1)
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    code, out = backfill(cfg, tmp_path / "work", emulator.url, "--from-file", str(export))
    assert code == 0, out
    assert "hand-over skipped" in out
    assert_exactly_once(emulator.ids(), events)
    letters = read_topic(broker, dlq_topic(prefix))
    assert len(letters) == 1, out


def test_killed_while_reading_it_resumes_at_its_checkpoint_without_reading_again(
        broker, emulator, prefix, tmp_path: Path) -> None:
    """The process dies on a record (the crash-isolation test hook: os._exit inside decode) after
    checkpoints: the next run reads on from the last one — the dead letters of records before it are
    not written twice, and everything lands once."""
    events = generate_events(1200, seed=61)
    ensure_topics(broker, all_topics(prefix), 1)
    topic = topic_for("pointsIssued", prefix)
    producer = Producer({"bootstrap.servers": broker, "acks": "all"})
    for i in range(3):
        producer.produce(topic, value=b"{not json %d" % i)  # dead letters before the first checkpoint
    assert producer.flush(30) == 0
    produce_keyed(broker, prefix, events)
    marker = events[1000]["eventId"]
    group = new_group()
    cfg = config(tmp_path, broker, emulator.url, prefix, group)
    workdir = tmp_path / "work"
    r = subprocess.run(python_module("connector", "backfill", "--config", str(cfg), "--work-dir", str(workdir),
                                     *BACKFILL_FLAGS, "--checkpoint-records", "250"),
                       env={**env(emulator.url), "CAPILLARY_AEP_TEST_CRASH_ON": marker,
                            "CAPILLARY_AEP__KAFKA__CONSUME_BATCH": "100"},  # records staged after the checkpoint
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 86, r.stdout + r.stderr
    m = json.loads((workdir / "manifest.json").read_text())
    assert not m["read_done"] and 0 < m["counts"]["read"] < 1000
    assert inventory(emulator)["batches"] == {}
    code, out = backfill(cfg, workdir, emulator.url)
    assert code == 0, out
    assert len(read_topic(broker, dlq_topic(prefix))) == 3
    assert_exactly_once(emulator.ids(), events)
    assert_profiles_right(emulator, events)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_since_plans_from_the_first_record_at_or_after_the_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--since``: each partition starts at its first record stamped at or after the time (Kafka's
    offsets-for-times), one with no record after it reads nothing; the stop point stays the end.
    Kafka's answer is faked: tansu answers offsets-for-times with offset 0 whatever the time."""
    import types

    from confluent_kafka import TopicPartition

    from connector.backfill import source
    from connector.config import load_settings

    since = 1_700_000_000_000
    stamps = {0: [since - 3000, since - 2000, since - 1, since, since + 5000], 1: [since - 9000, since - 8000]}

    class FakeConsumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            pass

        def list_topics(self, timeout: float) -> Any:
            parts = dict.fromkeys(stamps)
            return types.SimpleNamespace(topics={"t.capillary.events.points": types.SimpleNamespace(partitions=parts)})

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            return 0, len(stamps[tp.partition])

        def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            first = {p: next((i for i, t in enumerate(ts) if t >= tps[0].offset), -1) for p, ts in stamps.items()}
            return [TopicPartition(tp.topic, tp.partition, first[tp.partition]) for tp in tps]

        def close(self) -> None:
            pass

    monkeypatch.setattr(source, "Consumer", FakeConsumer)
    monkeypatch.setattr(source, "_fetched_high_watermarks", lambda *a: {})
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", em.DEMO_CLIENT_SECRET)
    settings = load_settings(config(tmp_path, "127.0.0.1:9", "http://127.0.0.1:9", "t.", new_group()))
    plan = source.plan_kafka(settings, since)
    key0, key1 = (source.tp_key("t.capillary.events.points", p) for p in (0, 1))
    assert (plan["start"][key0], plan["stop"][key0]) == (3, 5)
    assert plan["start"][key1] == plan["stop"][key1] == 2  # nothing at or after `since`
    everything = source.plan_kafka(settings, None)
    assert (everything["start"][key0], everything["stop"][key0]) == (0, 5)
