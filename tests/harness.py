"""Running connector processes against the test broker and emulator, and reading what they did."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from support import ManagedProcess, free_port, python_module, wait_until

from connector.config import XdmConfig
from connector.dev.demo import connector_toml
from connector.dev.emulator import config as em
from connector.kafka.topics import all_topics
from connector.transform import Transformer

# One pipeline process per connector unless a test asks for more (its env, or os.environ as the
# ``processes`` fixtures of the fault tests set it): tansu cannot finish a rebalance whose leader
# left during it, which a multi-process replica leaving a group that is reused next does at random
# (Apache Kafka elects a new leader). Tests of several processes per replica say so explicitly.
PROCESSES_ENV = "CAPILLARY_AEP__PROCESSING__PROCESSES"


class ConnectorProc:
    def __init__(self, proc: ManagedProcess, metrics_port: int, config: Path) -> None:
        self.proc = proc
        self.metrics_port = metrics_port
        self.config = config

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def metric(self, name: str) -> float:
        try:
            return self.metrics().get(name, 0.0)
        except httpx.HTTPError:
            return 0.0

    def ready(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5)
        return {"status": r.status_code, **r.json()}

    def wait_acknowledged(self, n: int, timeout: float = 60) -> None:
        wait_until(lambda: self.metric("capillary_aep_records_acknowledged_total") >= n or self._died(),
                   timeout, what=f"{n} acknowledged records")
        assert self.proc.alive(), self.proc.log_text()[-3000:]

    def _died(self) -> bool:
        return not self.proc.alive()

    def stop(self, timeout: float = 30) -> int | None:
        return self.proc.stop(timeout)


def dlq_topic(prefix: str) -> str:
    """The test's dead-letter topic: outside its subscription (``<prefix>.*``)."""
    return "dlq." + prefix.rstrip(".")


def write_config(path: Path, *, bootstrap: str, emulator_url: str, prefix: str, group: str,
                 metrics_port: int, extra: str = "", provisioned: dict[str, Any] | None = None) -> Path:
    """The local stack's config (``connector.dev.demo``) tuned for tests: short timeouts and backoffs."""
    path.write_text(connector_toml(
        bootstrap=bootstrap, emulator_url=emulator_url, metrics_port=metrics_port, group=group, prefix=prefix,
        dlq_topic=dlq_topic(prefix), origin="tests/harness.py", provisioned=provisioned,
        kafka='auto_commit_interval_ms = 200\nconsume_timeout_s = 0.05\n'
              'extra = { "topic.metadata.refresh.interval.ms" = 2000 }\n',
        extra=f"""[batch]
linger_ms = 50

[delivery]
backoff_initial_s = 0.05
backoff_max_s = 1.0
drain_timeout_s = 5
revoke_timeout_s = 5
{extra}"""))
    return path


def start_connector(tmp_path: Path, *, bootstrap: str, emulator_url: str, prefix: str, group: str,
                    extra: str = "", env: dict[str, str] | None = None, name: str = "connector",
                    provisioned: dict[str, Any] | None = None) -> ConnectorProc:
    port = free_port()
    cfg = write_config(tmp_path / f"{name}-{port}.toml", bootstrap=bootstrap, emulator_url=emulator_url,
                       prefix=prefix, group=group, metrics_port=port, extra=extra, provisioned=provisioned)
    full_env = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET, "CAPILLARY_AEP__LOG__FORMAT": "text",
                **({} if PROCESSES_ENV in os.environ else {PROCESSES_ENV: "1"}), **(env or {})}
    proc = ManagedProcess(python_module("connector", "run", "--config", str(cfg)), env=full_env,
                          log_path=tmp_path / f"{name}-{port}.log")
    c = ConnectorProc(proc, port, cfg)
    wait_until(lambda: not proc.alive() or httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code,
               30, what="connector health endpoint")
    assert proc.alive(), proc.log_text()[-3000:]
    return c


def new_group() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


def committed(bootstrap: str, group: str, prefix: str) -> dict[tuple[str, int], int]:
    """Committed offsets of ``group`` on the test's topics (negative: nothing committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = c.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in all_topics(prefix) if t in meta for p in meta[t].partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.5, timeout: float = 30) -> list[Any]:
    """Every record of ``topic``, read until nothing arrives for ``idle_s`` (true end offsets on tansu)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    out: list[Any] = []
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return out
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        start = last = time.monotonic()
        while time.monotonic() - last < idle_s and time.monotonic() - start < timeout:
            msgs = c.consume(500, 0.2)
            for m in msgs:
                if m.error() is None:
                    out.append(m)
            if msgs:
                last = time.monotonic()
    finally:
        c.close()
    return out


def end_offsets(bootstrap: str, prefix: str) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for topic in all_topics(prefix):
        for m in read_topic(bootstrap, topic, idle_s=0.8):
            key = (m.topic(), m.partition())
            ends[key] = max(ends.get(key, 0), m.offset() + 1)
    return ends


def transformer() -> Transformer:
    cfg = XdmConfig.model_validate({
        "event": {"dataset_id": em.DEMO_EVENT_DATASET_ID, "schema_id": em.DEMO_EVENT_SCHEMA_ID,
                  "flow_id": em.DEMO_EVENT_FLOW_ID},
        "profile": {"dataset_id": em.DEMO_PROFILE_DATASET_ID, "schema_id": em.DEMO_PROFILE_SCHEMA_ID,
                    "flow_id": em.DEMO_PROFILE_FLOW_ID},
    })
    return Transformer(cfg, org_id=em.DEMO_ORG_ID, source_name="capillary-aep-connector")


def expected_envelopes(events: list[dict]) -> dict[str, dict]:
    t = transformer()
    return {m.envelope["body"]["xdmEntity"]["_id"]: m.envelope for ev in events for m in t.transform(ev)}


def diff_paths(a: object, b: object, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff_paths(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def expected_ids(events: list[dict]) -> Counter[str]:
    """The ExperienceEvent `_id`s the inlet must accept for ``events``, one each. Profile updates
    are checked per profile (``missing_profiles``, ``expected_profiles``): a customer's updates in
    one request travel merged into one record (``connector.delivery.coalesce``) with the `_id` of the last
    one in that request, and which one that is depends on how topics interleave."""
    t = transformer()
    return Counter(m.envelope["body"]["xdmEntity"]["_id"] for ev in events for m in t.transform(ev)
                   if m.kind == "event")


def profile_ids(events: list[dict]) -> dict[str, set[str]]:
    """Per profile (dataset and primary identity), the `_id`s of its updates made of ``events``."""
    t = transformer()
    out: dict[str, set[str]] = {}
    for ev in events:
        for m in t.transform(ev):
            if m.kind == "profile":
                out.setdefault(_profile_key(m.envelope), set()).add(m.envelope["body"]["xdmEntity"]["_id"])
    return out


def missing_profiles(received: dict[str, int], events: list[dict]) -> set[str]:
    """Profiles none of whose updates reached the inlet (alone or standing for others)."""
    return {key for key, ids in profile_ids(events).items() if not any(received.get(i, 0) for i in ids)}


def possible_ids(events: list[dict]) -> set[str]:
    """Every `_id` the transform makes of ``events``: nothing else may reach the inlet."""
    t = transformer()
    return {m.envelope["body"]["xdmEntity"]["_id"] for ev in events for m in t.transform(ev)}


def _profile_key(envelope: dict) -> str:
    from connector.dev.emulator.profiles import primary_key

    return f"{envelope['header']['datasetId']}/{primary_key(envelope['body']['xdmEntity'])}"


def expected_profiles(events: list[dict]) -> dict[str, dict]:
    """The profile state per primary identity after applying the profile updates of ``events`` one
    by one in production order (what AEP should end with)."""
    from connector.dev.emulator.profiles import apply, primary_key

    t = transformer()
    state: dict[str, dict] = {}
    for ev in events:
        for m in t.transform(ev):
            if m.kind == "profile":
                entity = m.envelope["body"]["xdmEntity"]
                apply(state.setdefault(primary_key(entity), {}), entity)  # type: ignore[arg-type]
    return state


def assert_exactly_once(received: dict[str, int], events: list[dict]) -> None:
    """Every ExperienceEvent and every profile's last update arrived, each message once, nothing else."""
    assert missing(received, expected_ids(events)) == set()
    assert missing_profiles(received, events) == set()
    assert set(received) <= possible_ids(events)
    assert [i for i, n in received.items() if n != 1] == []




def assert_committed_to_end(bootstrap: str, group: str, prefix: str) -> None:
    ends = end_offsets(bootstrap, prefix)
    got = committed(bootstrap, group, prefix)
    assert {tp: got.get(tp) for tp in ends} == ends


def wait_committed_to_end(c: ConnectorProc, bootstrap: str, group: str, prefix: str, timeout: float = 120) -> None:
    """Until the group has committed every partition to its end. Unlike the acknowledged counter (a
    sum over the pipeline processes alive now), this survives a process being restarted."""
    ends = end_offsets(bootstrap, prefix)

    def done() -> bool:
        got = committed(bootstrap, group, prefix)
        return not c.proc.alive() or {tp: got.get(tp) for tp in ends} == ends

    wait_until(done, timeout, what="every partition committed to its end")
    assert c.proc.alive(), c.proc.log_text()[-3000:]


def pipeline_pids(c: ConnectorProc) -> list[int]:
    """The connector's pipeline processes (the supervisor's children), in start order."""
    with open(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children") as f:
        return [int(p) for p in f.read().split()]


def missing(received: dict[str, int], want: Counter[str]) -> set[str]:
    """Messages of ``want`` the inlet never accepted."""
    return {i for i in want if received.get(i, 0) < 1}
