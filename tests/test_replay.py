"""`capillary-aep dlq replay`: dead letters come back once their cause is fixed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import dlq_topic, expected_ids, missing, missing_profiles, new_group, read_topic, start_connector
from support import python_module, wait_until

from connector.dev.emulator import config as em
from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
    import os

    return subprocess.run(python_module("connector", *args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_replay_republishes_then_direct_delivers(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    events = generate_events(20, seed=51)
    bad = [events[3], events[11]]
    bad_ids = [i for e in bad for i in expected_ids([e])]
    emulator.faults(message_status_by_id=dict.fromkeys(bad_ids, 400))
    produce_events(broker, events, "json", topic_prefix=prefix)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events))
    wait_until(lambda: len(read_topic(broker, dlq_topic(prefix), idle_s=0.5)) == 2, 30, what="two dead letters")
    assert missing(emulator.ids(), expected_ids(bad)) == set(bad_ids)

    emulator.clear_faults()  # "the cause is fixed"
    dry = run_cli("dlq", "replay", "--config", str(c.config), "--reason", "aep_400", "--dry-run")
    assert dry.returncode == 0 and "2 matched" in dry.stdout, dry.stdout + dry.stderr
    out = run_cli("dlq", "replay", "--config", str(c.config), "--reason", "aep_400", "--limit", "1")
    assert out.returncode == 0 and "replayed 1, failed 0" in out.stdout, out.stdout + out.stderr
    def events_delivered() -> int:
        got = emulator.ids()
        return sum(1 for e in bad if not missing(got, expected_ids([e])))

    wait_until(lambda: events_delivered() == 1, 30, what="the re-published letter delivered")
    assert c.stop() == 0

    # Progress was committed: the next run sees only the other letter, and delivers it directly.
    direct = run_cli("dlq", "replay", "--config", str(c.config), "--direct")
    assert direct.returncode == 0 and "1 matched" in direct.stdout and "replayed 1, failed 0" in direct.stdout, \
        direct.stdout + direct.stderr
    assert missing(emulator.ids(), expected_ids(events)) == set()
    assert missing_profiles(emulator.ids(), events) == set()
    again = run_cli("dlq", "replay", "--config", str(c.config))
    assert "0 matched" in again.stdout
