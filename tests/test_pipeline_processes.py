"""One replica, several pipeline processes (connector.runtime.supervisor), on a real broker: a pipeline
process killed outright mid-stream loses nothing, the replica's one /metrics and /readyz cover every
process, and SIGTERM drains them all."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from harness import (
    assert_committed_to_end,
    dlq_topic,
    expected_ids,
    missing,
    missing_profiles,
    new_group,
    pipeline_pids,
    read_topic,
    start_connector,
    wait_committed_to_end,
)
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics


def test_a_pipeline_process_killed_mid_stream_loses_nothing(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    events = generate_events(3000, seed=31)
    produce_events(broker, events, "mixed", topic_prefix=prefix)
    emulator.faults(latency_ms=40)  # slow enough that the kill lands mid-stream
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env={"CAPILLARY_AEP__PROCESSING__PROCESSES": "2"})
    wait_until(lambda: len(pipeline_pids(c)) == 2, 10, what="two pipeline processes")
    c.wait_acknowledged(300)
    victim = pipeline_pids(c)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: c.metric("capillary_aep_pipeline_restarts_total") >= 1, 20, what="the restart")
    emulator.clear_faults()
    wait_committed_to_end(c, broker, group, prefix)
    assert victim not in pipeline_pids(c) and len(pipeline_pids(c)) == 2
    assert c.stop() == 0

    received = emulator.ids()
    assert missing(received, expected_ids(events)) == set()
    assert missing_profiles(received, events) == set()
    assert list(read_topic(broker, dlq_topic(prefix))) == []  # a kill strikes a record once: never a letter
    assert_committed_to_end(broker, group, prefix)


def test_one_metrics_and_readiness_for_every_pipeline_process(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    events = generate_events(200, seed=32)
    produce_events(broker, events, "json", topic_prefix=prefix)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env={"CAPILLARY_AEP__PROCESSING__PROCESSES": "2"})
    wait_committed_to_end(c, broker, group, prefix)
    wait_until(lambda: c.ready()["status"] == 200, 30, what="ready")
    ready = c.ready()
    assert ready["checks"]["pipelines_running"] and ready["checks"]["partitions_assigned"]

    text = httpx.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families) == len(list(text_string_to_metric_families(text)))  # one family per name
    consumed = families["capillary_aep_records_consumed"].samples
    assert {s.labels["pipeline"] for s in consumed if s.name.endswith("_total")} == {"0", "1"}
    assert sum(s.value for s in consumed if s.name.endswith("_total")) == len(events)
    cpu = {s.labels["pipeline"] for s in families["process_cpu_seconds"].samples}
    assert cpu == {"supervisor", "0", "1"}
    assert families["capillary_aep_pipeline_processes"].samples[0].value == 2

    pids = pipeline_pids(c)
    assert c.stop() == 0
    assert all(not Path(f"/proc/{p}").exists() or "State:\tZ" in Path(f"/proc/{p}/status").read_text() for p in pids)
    assert_committed_to_end(broker, group, prefix)
