"""Backfill beside the stream: events/s and CPU per event on the same history.

    python bench/backfill.py [--events 100000] [--workers 0]

Starts tansu and the emulator (``--no-store-bodies``: ids are counted either way), produces
``--events`` sample Capillary events (JSON, keyed by customer, 4 partitions) under two topic
prefixes, then:

* backfills the first (``capillary-aep backfill``, 256 MB files, one batch per dataset) into the
  emulator through the Batch Ingestion API, hand-over included, and measures wall time and the CPU
  of the backfill process;
* streams the second (``capillary-aep run``, ``processing.workers`` as given) until every record is
  acknowledged, and measures the same;

then checks that every ExperienceEvent `_id` landed exactly once in each. The emulator's own CPU is
left out of both figures (it is AEP's side).
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
from confluent_kafka import Producer

from connector.dev import demo
from connector.dev.emulator import config as em
from connector.dev.procs import ROOT, ManagedProcess, cpu_seconds, free_port, python_module, scrape, start_broker, wait_until
from connector.dev.produce import customer_key, ensure_topics
from connector.dev.samples import generate_events
from connector.topics import all_topics, topic_for


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


def config(path: Path, bootstrap: str, url: str, prefix: str, workers: int) -> Path:
    path.write_text(demo.connector_toml(
        bootstrap=bootstrap, emulator_url=url, metrics_port=free_port(), group=f"g{uuid.uuid4().hex[:8]}",
        prefix=prefix, dlq_topic=f"dlq.{prefix.rstrip('.')}", origin="bench/backfill.py",
        extra=f"[processing]\nworkers = {workers}\n"))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=0, help="processing.workers of the stream run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    broker, bootstrap = start_broker(tmp)
    port = free_port()
    emu = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), "--no-store-bodies"),
                         log_path=tmp / "emulator.log")
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET,
           "CAPILLARY_AEP__AEP__PLATFORM_URL": url, "CAPILLARY_AEP__LOG__FORMAT": "text", "PYTHONPATH": str(ROOT)}
    try:
        wait_until(lambda: httpx.get(f"{url}/__emulator/health", timeout=1).status_code == 200, 30, what="emulator")
        events = generate_events(args.events, seed=7)
        values = [(customer_key(e), orjson.dumps(e)) for e in events]
        event_ids = args.events  # every sample event makes one ExperienceEvent
        pb, ps = f"b{uuid.uuid4().hex[:6]}.capillary.events.", f"s{uuid.uuid4().hex[:6]}.capillary.events."
        t0 = time.monotonic()
        produce(bootstrap, pb, values)
        produce(bootstrap, ps, values)
        print(f"produced {args.events:,} events twice in {time.monotonic() - t0:.1f}s")

        # -- backfill ---------------------------------------------------------------------------
        cfg = config(tmp / "backfill.toml", bootstrap, url, pb, 0)
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
              f"CPU {cpu:.1f}s = {cpu / args.events * 1e6:,.0f} µs/event; {landed:,} records landed")

        # -- stream (the same events: the emulator's counts start again) ----------------------
        httpx.post(f"{url}/__emulator/reset", json={}, timeout=30).raise_for_status()
        cfg = config(tmp / "stream.toml", bootstrap, url, ps, args.workers)
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
        print(f"stream (workers={args.workers}): {args.events:,} events in {wall_s:.1f}s (start-up included) = "
              f"{args.events / wall_s:,.0f} events/s; CPU {cpu_s:.1f}s = {cpu_s / args.events * 1e6:,.0f} µs/event; "
              f"{stats2['messages_accepted']:,} messages through the inlet; {event_ids:,} events")
    finally:
        emu.stop()
        broker.stop()


if __name__ == "__main__":
    main()
