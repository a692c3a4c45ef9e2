"""Backfill beside the stream: events/s and CPU per event on the same history.

    python bench/backfill.py [--events 100000] [--processes 1]

Starts tansu and the emulator (``--no-store-bodies``: ids are counted either way), produces
``--events`` sample Capillary events (JSON, keyed by customer, 4 partitions) under two topic
prefixes, then:

* backfills the first (``capillary-aep backfill``, 256 MB files, one batch per dataset) into the
  emulator through the Batch Ingestion API, hand-over included, and measures wall time and the CPU
  of the backfill process;
* streams the second (``capillary-aep run``, ``processing.processes`` as given) until every record is
  acknowledged, and measures the same;

then checks that every ExperienceEvent `_id` landed exactly once in each. The emulator's own CPU is
left out of both figures (it is AEP's side).

With ``--handover N`` (default 10,000) it then proves the hand-over at this scale: N more events on
the backfilled topics, streamed by the connector's group from the offsets the backfill committed;
every message of the history and of the N is in the emulator exactly once (batch or stream, never
both), and every customer's profile ends as applying all their updates in order would leave it.
The emulator keeps bodies for that (``--handover 0``: counting only, as for the figures).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
from common import busy_box
from confluent_kafka import Producer

from connector.dev import demo
from connector.dev.emulator import config as em
from connector.dev.procs import ROOT, ManagedProcess, cpu_seconds, free_port, python_module, scrape, start_broker, wait_until
from connector.dev.produce import customer_key, ensure_topics
from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics, topic_for


def produce(bootstrap: str, prefix: str, values: list[tuple[bytes | None, bytes]]) -> None:
    ensure_topics(bootstrap, all_topics(prefix), 4)
    topic = topic_for("pointsIssued", prefix)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 50, "enable.idempotence": True})
    for key, value in values:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(120) == 0


def keyed(events: list[dict]) -> list[tuple[bytes | None, bytes]]:
    """Each event keyed by its customer as the ingress keys it: one customer's updates share a
    partition and have one order to keep."""
    return [(customer_key(e), orjson.dumps(e)) for e in events]


def config(path: Path, bootstrap: str, url: str, prefix: str, processes: int | str) -> Path:
    value = '"auto"' if processes == "auto" else int(processes)
    path.write_text(demo.connector_toml(
        bootstrap=bootstrap, emulator_url=url, metrics_port=free_port(), group=f"g{uuid.uuid4().hex[:8]}",
        prefix=prefix, dlq_topic=f"dlq.{prefix.rstrip('.')}", origin="bench/backfill.py",
        extra=f"[processing]\nprocesses = {value}\n"))
    return path


def handover(bootstrap: str, url: str, env: dict[str, str], tmp: Path, cfg: Path, prefix: str,
             history: list[dict], n: int) -> None:
    """Stream ``n`` new events from where the backfill handed over; check exactly once and profiles."""
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import expected_ids, expected_profiles, profile_ids

    more = generate_events(n, seed=8)
    for e in more:
        e["eventId"] = f"after-{e['eventId']}"  # new events, not the history again
    produce(bootstrap, prefix, keyed(more))
    port_m = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    t0 = time.monotonic()
    proc = ManagedProcess(python_module("connector", "run", "--config", str(cfg)), env=env, log_path=tmp / "after.log")
    try:
        wait_until(lambda: scrape(f"http://127.0.0.1:{port_m}/metrics").get(
            "capillary_aep_records_acknowledged_total", 0) >= n or not proc.alive(), 600, interval=0.5,
            what="the stream acknowledging the events after the hand-over")
        assert proc.stop() == 0, proc.log_text()[-3000:]
    finally:
        proc.stop()
    everything = history + more
    received = httpx.get(f"{url}/__emulator/ids", timeout=60).json()
    received = received.get("ids", received)
    events_wanted = expected_ids(everything)
    missing = [i for i in events_wanted if not received.get(i)]
    twice = [i for i, k in received.items() if k != 1]
    # A profile's updates reach AEP merged (batch) or one by one (stream): its last update's `_id`
    # (or the merge standing for it) arrived; the state decides.
    got = httpx.get(f"{url}/__emulator/profiles", timeout=120).json()["profiles"]
    want = expected_profiles(everything)

    def comparable(profile: dict) -> dict:
        return {k: v for k, v in profile.items() if k not in ("identityMap", "_id")}

    wrong = [k for k in want if comparable(got.get(k, {})) != comparable(want[k])]
    print(f"hand-over: {n:,} events streamed after the backfill in {time.monotonic() - t0:.1f}s; "
          f"{len(events_wanted):,} ExperienceEvents wanted, {len(missing)} missing, {len(twice)} twice; "
          f"{len(want):,} profiles, {len(wrong)} not as in order ({len(profile_ids(everything)):,} profile keys)")
    if wrong:
        from harness import diff_paths

        print("first difference:", diff_paths(comparable(got.get(wrong[0], {})), comparable(want[wrong[0]]))[:10])
    assert not missing and not twice and not wrong, (missing[:5], twice[:5], wrong[:5])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--processes", default="1", help="processing.processes of the stream run (a number or auto)")
    ap.add_argument("--handover", type=int, default=10_000, help="events streamed after the backfill's hand-over")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    broker, bootstrap = start_broker(tmp)
    port = free_port()
    bodies = "--store-bodies" if args.handover else "--no-store-bodies"
    emu = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), bodies),
                         log_path=tmp / "emulator.log")
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET,
           "CAPILLARY_AEP__AEP__PLATFORM_URL": url, "CAPILLARY_AEP__LOG__FORMAT": "text", "PYTHONPATH": str(ROOT)}
    try:
        wait_until(lambda: httpx.get(f"{url}/__emulator/health", timeout=1).status_code == 200, 30, what="emulator")
        events = generate_events(args.events, seed=7)
        values = keyed(events)
        event_ids = args.events  # every sample event makes one ExperienceEvent
        pb, ps = f"b{uuid.uuid4().hex[:6]}.capillary.events.", f"s{uuid.uuid4().hex[:6]}.capillary.events."
        t0 = time.monotonic()
        produce(bootstrap, pb, values)
        produce(bootstrap, ps, values)
        print(f"produced {args.events:,} events twice in {time.monotonic() - t0:.1f}s")

        # -- backfill ---------------------------------------------------------------------------
        print(f"box before the backfill: {busy_box()} (calib_ms ≈ 80-100 on an idle core)")
        cfg = config(tmp / "backfill.toml", bootstrap, url, pb, 1)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = subprocess.run(python_module("connector", "backfill", "--config", str(cfg), "--work-dir",
                                         str(tmp / "work"), "--no-progress", "--poll-interval", "0.2"),
                           env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert r.returncode == 0, r.stdout + r.stderr
        stats = httpx.get(f"{url}/__emulator/stats", timeout=30).json()
        landed = stats["unique_ids"]
        assert stats["duplicate_ids"] == 0, stats
        print(r.stdout.strip())
        print("\n".join(line for line in r.stderr.splitlines() if "batch" in line))
        print(f"backfill: {args.events:,} events in {wall:.1f}s = {args.events / wall:,.0f} events/s; "
              f"CPU {cpu:.1f}s = {cpu / args.events * 1e6:,.0f} µs/event ({cpu / wall:.0%} of a core busy); "
              f"{landed:,} records landed")

        if args.handover:
            handover(bootstrap, url, env, tmp, cfg, pb, events, args.handover)

        # -- stream (the same events: the emulator's counts start again) ----------------------
        httpx.post(f"{url}/__emulator/reset", json={}, timeout=30).raise_for_status()
        print(f"box before the stream: {busy_box()}")
        cfg = config(tmp / "stream.toml", bootstrap, url, ps, args.processes)
        port_m = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
        t0 = time.monotonic()
        proc = ManagedProcess(python_module("connector", "run", "--config", str(cfg)), env=env,
                              log_path=tmp / "stream.log")

        def acked() -> float:
            try:
                return scrape(f"http://127.0.0.1:{port_m}/metrics").get("capillary_aep_records_acknowledged_total", 0)
            except httpx.HTTPError:
                return 0

        last_cpu = 0.0

        def done() -> bool:
            nonlocal last_cpu
            last_cpu = cpu_seconds(proc.pid) or last_cpu
            return acked() >= args.events or not proc.alive()

        wait_until(done, 1800, interval=0.5, what="the stream acknowledging every record")
        wall_s = time.monotonic() - t0
        cpu_s = last_cpu
        proc.stop()
        stats2 = httpx.get(f"{url}/__emulator/stats", timeout=30).json()
        assert stats2["duplicate_ids"] == 0, stats2
        print(f"stream (processes={args.processes}): {args.events:,} events in {wall_s:.1f}s (start-up included) = "
              f"{args.events / wall_s:,.0f} events/s; CPU {cpu_s:.1f}s = {cpu_s / args.events * 1e6:,.0f} µs/event "
              f"({cpu_s / wall_s:.0%} of a core busy); "
              f"{stats2['messages_accepted']:,} messages through the inlet; {event_ids:,} events")
    finally:
        emu.stop()
        broker.stop()


if __name__ == "__main__":
    main()
