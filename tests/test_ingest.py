"""The webhook ingress as a real process, over real HTTP, against the real (embedded) broker.

Every event answered 200 must be in Kafka, in the topic the mapping names, keyed by customer id,
with the value as posted; rejected requests (401, 400, 413) must produce nothing. Broker outages
are in test_ingest_outage.py.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import read_topic
from prometheus_client.parser import text_string_to_metric_families
from support import ManagedProcess, free_port, python_module, wait_until

from connector.dev.samples import ENVELOPES, generate_events, wrap
from connector.kafka.topics import all_topics, topic_for

pytestmark = pytest.mark.integration

TOKEN = "ingest-test-token-5f1e0c0ffee-0123456789"
OVERRIDE = ("tierUpgraded", "custom.tiers")  # event → topic suffix, to prove the mapping is used


class Ingress:
    def __init__(self, proc: ManagedProcess, port: int, prefix: str, topics: dict[str, str],
                 metrics_port: int = 0, scheme: str = "http", verify: Any = True) -> None:
        self.proc = proc
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # its own listener, not the webhook port
        self.prefix = prefix
        self.topics = topics
        self.http = httpx.Client(base_url=self.url, timeout=30, verify=verify)

    def post(self, body: Any, token: str | None = TOKEN, **kw: Any) -> httpx.Response:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.http.post("/capillary/events", content=content, headers=headers, **kw)

    def topic(self, name: str) -> str:
        return self.topics.get(name) or topic_for(name, self.prefix)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=10).text):
            for s in family.samples:
                key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                                if s.labels else "")
                out[key] = s.value
        return out

    def stop(self) -> int | None:
        self.http.close()
        return self.proc.stop()


def start_ingress(tmp_path: Path, bootstrap: str, prefix: str, extra: str = "",
                  env: dict[str, str] | None = None, scheme: str = "http", verify: Any = True) -> Ingress:
    port, metrics_port = free_port(), free_port()
    topics = {OVERRIDE[0]: prefix + OVERRIDE[1]}
    cfg = tmp_path / f"ingest-{port}.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"

[ingest]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
topic_prefix = "{prefix}"
topics = {{ {OVERRIDE[0]} = "{topics[OVERRIDE[0]]}" }}
{extra}

[log]
format = "json"
""")
    proc = ManagedProcess(python_module("connector", "ingest", "--config", str(cfg)),
                          env={"CAPILLARY_AEP__INGEST__AUTH_TOKEN": TOKEN, **(env or {})},
                          log_path=tmp_path / f"ingest-{port}.log")
    ingress = Ingress(proc, port, prefix, topics, metrics_port, scheme, verify)
    wait_until(lambda: not proc.alive() or ingress.http.get("/healthz", timeout=1).status_code == 200,
               30, what="ingress health")
    assert proc.alive(), proc.log_text()[-3000:]
    return ingress


def expected_key(event: dict[str, Any]) -> bytes:
    data = event["data"]
    ids = data.get("customerIdentifiers") or data.get("survivorCustomerIdentifiers") \
        or data["coupons"][0]["customerIdentifiers"]
    return str(ids["customerId"]).encode()


def event_id_of(value: dict[str, Any]) -> str:
    """The eventId of a record value in any envelope."""
    for wrapper in ("body", "data"):
        inner = value.get(wrapper)
        if isinstance(inner, dict) and ("eventName" in inner or "eventType" in inner):
            value = inner
    return value["eventId"]


def read_all(bootstrap: str, topics: list[str]) -> list[Any]:
    return [m for t in topics for m in read_topic(bootstrap, t, idle_s=1.0)]


@pytest.fixture(scope="module")
def ingress(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    prefix = f"i{uuid.uuid4().hex[:8]}.capillary.events."
    ing = start_ingress(tmp_path_factory.mktemp("ingest"), broker, prefix)
    yield ing
    assert ing.stop() == 0  # SIGTERM: answers what is in flight, flushes, exits 0


def test_every_event_answered_200_is_in_kafka_where_the_mapping_says(broker: str, ingress: Ingress) -> None:
    events = generate_events(400, seed=21)
    events += [e for e in generate_events(400, seed=22) if e["eventName"] == OVERRIDE[0]][:5]
    posted: dict[str, Any] = {}  # eventId → the element as posted
    singles, rest = events[:60], events[60:]
    for i, event in enumerate(singles):  # Capillary's own shape: one event per POST, every envelope
        body = wrap(event, ENVELOPES[i % len(ENVELOPES)])
        r = ingress.post(body)
        assert r.status_code == 200 and r.json() == {"accepted": 1}, r.text
        posted[event["eventId"]] = body
    for start in range(0, len(rest), 50):  # arrays, envelopes mixed inside one request
        chunk = [wrap(e, ENVELOPES[(start + j) % len(ENVELOPES)]) for j, e in enumerate(rest[start:start + 50])]
        r = ingress.post(chunk)
        assert r.status_code == 200 and r.json() == {"accepted": len(chunk)}, r.text
        posted.update({e["eventId"]: body for e, body in zip(rest[start:start + 50], chunk, strict=True)})

    by_id = {e["eventId"]: e for e in events}
    topics = sorted({ingress.topic(e["eventName"]) for e in events})
    assert ingress.topics[OVERRIDE[0]] in topics
    seen: Counter[str] = Counter()
    for m in read_all(broker, sorted(set(topics) | set(all_topics(ingress.prefix)))):
        value = orjson.loads(m.value())
        eid = event_id_of(value)
        event = by_id[eid]
        seen[eid] += 1
        assert m.topic() == ingress.topic(event["eventName"]), eid
        assert m.key() == expected_key(event), eid
        assert value == posted[eid]  # the event exactly as posted, one record per element
    assert seen == Counter(list(by_id))  # every event once, nothing else

    metrics = ingress.metrics()
    assert metrics["capillary_ingest_events_total{event_type=tierUpgraded}"] >= 5
    assert metrics["capillary_ingest_produce_latency_seconds_count"] >= 60 + len(rest) // 50
    assert metrics["capillary_ingest_requests_total{status=200}"] >= 60 + len(rest) // 50
    assert metrics["capillary_ingest_accepted_request_duration_seconds_count"] == \
        metrics["capillary_ingest_requests_total{status=200}"]  # the 200s' latency, and only theirs


def _marker(ingress: Ingress) -> dict[str, Any]:
    """Post one good event and return it: once it is read back, anything posted before it would be too."""
    event = {"eventName": "pointsIssued", "eventId": f"marker-{uuid.uuid4()}", "createdAt": 1_750_000_000_000,
             "data": {"customerIdentifiers": {"customerId": 1}}}
    assert ingress.post(event).status_code == 200
    return event


def test_wrong_or_missing_credentials_are_401_and_produce_nothing(broker: str, ingress: Ingress) -> None:
    event = {**generate_events(1, seed=31)[0], "eventName": "pointsIssued", "eventId": f"nope-{uuid.uuid4()}"}
    basic = base64.b64encode(f"user:{TOKEN}".encode()).decode()
    for token, headers in ((None, {}), ("wrong", {}), (TOKEN + "x", {}), (None, {"Authorization": TOKEN}),
                           (None, {"Authorization": f"Basic {basic}"}), (None, {"X-Api-Key": TOKEN})):
        r = ingress.post(event, token=token, headers=headers)
        assert r.status_code == 401, (token, headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in r.text
    marker = _marker(ingress)
    ids = [event_id_of(orjson.loads(m.value())) for m in read_topic(broker, ingress.topic("pointsIssued"))]
    assert marker["eventId"] in ids and event["eventId"] not in ids
    assert ingress.metrics()["capillary_ingest_auth_failures_total{reason=invalid}"] >= 4
    assert TOKEN not in ingress.proc.log_text()  # the secret never reaches the logs


def test_malformed_requests_are_400_with_the_reason_and_produce_nothing(broker: str, ingress: Ingress) -> None:
    good = {**generate_events(1, seed=41)[0], "eventName": "pointsIssued", "eventId": f"bad-{uuid.uuid4()}"}
    cases = [
        (b"{oops", "invalid_json"),
        (b"[1, 2]", "invalid_event"),
        (orjson.dumps({**good, "eventId": None}), "invalid_event"),
        (orjson.dumps([good, {"eventName": "pointsIssued", "createdAt": 1700000000000}]), "invalid_event"),
    ]
    for body, error in cases:
        r = ingress.post(body)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == error and r.json()["detail"]
    mixed = ingress.post([good, {"eventName": "pointsIssued", "createdAt": 1700000000000}]).json()
    assert mixed["errors"] == [{"index": 1, "reason": "missing_field", "detail": "eventId"}]
    assert "nothing was accepted" in mixed["detail"]
    too_big = ingress.post(b" " * (4 * 1024 * 1024 + 1))
    assert too_big.status_code == 413 and too_big.json()["error"] == "body_too_large"
    assert ingress.http.get("/capillary/events").status_code == 405
    marker = _marker(ingress)
    ids = [event_id_of(orjson.loads(m.value())) for m in read_topic(broker, ingress.topic("pointsIssued"))]
    assert marker["eventId"] in ids and good["eventId"] not in ids  # the valid half of the mixed batch too


def test_health_readiness_and_metrics(ingress: Ingress) -> None:
    assert ingress.http.get("/healthz").json() == {"ok": True, "checks": {"producer_polled": True}}
    ready = ingress.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"started": True, "broker_reachable": True, "deliveries_succeeding": True}
    assert ingress.http.get("/metrics").status_code == 404  # never on the public webhook port
    text = httpx.get(ingress.metrics_url, timeout=10).text
    for name in ("capillary_ingest_requests_total", "capillary_ingest_events_total",
                 "capillary_ingest_produce_latency_seconds_bucket", "capillary_ingest_request_duration_seconds_bucket",
                 "capillary_ingest_inflight_requests", "capillary_ingest_broker_up 1.0"):
        assert name in text
    assert TOKEN not in text
