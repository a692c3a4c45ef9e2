"""The send budget on real processes: two replicas in one group drain a backlog and the inlet never
sees more than the group's budget (plus the documented tolerance) in any 5-second window."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import assert_committed_to_end, expected_ids, missing, missing_profiles, new_group, start_connector
from support import wait_until

from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics

pytestmark = pytest.mark.integration

BUDGET = 500  # messages per second for the whole group
MAX_RECORDS = 100  # per request: the tolerance is one request per replica
WINDOW_S = 5


def test_two_replicas_stay_inside_the_group_budget(broker, emulator, prefix, tmp_path: Path) -> None:
    ensure_topics(broker, all_topics(prefix))
    group = new_group()
    env = {"CAPILLARY_AEP__KAFKA__SESSION_TIMEOUT_MS": "6000",
           "CAPILLARY_AEP__DELIVERY__MAX_MESSAGES_PER_S": str(BUDGET),
           "CAPILLARY_AEP__BATCH__MAX_RECORDS": str(MAX_RECORDS)}
    a = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=env, name="a")
    b = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group,
                        env=env, name="b")
    # Both members hold partitions, and their shares add up to the budget.
    wait_until(lambda: a.metric("capillary_aep_assigned_partitions") > 0
               and b.metric("capillary_aep_assigned_partitions") > 0
               and abs(a.metric("capillary_aep_rate_share_messages_per_second")
                       + b.metric("capillary_aep_rate_share_messages_per_second") - BUDGET) < 1,
               60, what="two members sharing the budget")
    events = generate_events(3000, seed=21)
    produce_events(broker, events, "json", topic_prefix=prefix)
    wait_until(lambda: a.metric("capillary_aep_records_acknowledged_total")
               + b.metric("capillary_aep_records_acknowledged_total") >= len(events), 120,
               what="the backlog acknowledged")
    waited = a.metric("capillary_aep_governor_wait_seconds_total") + b.metric("capillary_aep_governor_wait_seconds_total")
    assert a.stop() == 0 and b.stop() == 0
    received = emulator.ids()
    assert missing(received, expected_ids(events)) == set() and missing_profiles(received, events) == set()
    assert waited > 0  # the budget, not the inlet, held the rate

    per_second = {int(k): v for k, v in emulator.stats()["accepted_per_second"].items()}
    first, last = min(per_second), max(per_second)
    total = sum(per_second.values())
    assert last - first + 1 >= total / BUDGET - 1  # it took as long as the budget says
    tolerance = BUDGET * 1 + 2 * MAX_RECORDS * 2  # a banked second + one request per replica (2 messages/record)
    for start in range(first, last + 1):
        window = sum(per_second.get(s, 0) for s in range(start, start + WINDOW_S))
        assert window <= BUDGET * WINDOW_S + tolerance, (start, window)
    assert_committed_to_end(broker, group, prefix)
