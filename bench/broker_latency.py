"""The broker timed alone: record birth → consumer, with no connector in between.

    python bench/broker_latency.py [--rate 5000] [--seconds 20] [--fetch-wait-ms 25]

The steady-rate rows of ``bench/run.py`` measure record birth → inlet; part of that is the embedded
broker's own delay. This starts tansu and the emulator (for the Schema Registry the event factory
registers with), feeds the bench's event mix at ``--rate`` with the bench's paced producer, and reads
it back with a bare confluent-kafka consumer in its own process, configured by the connector's own
``consumer_config`` (cooperative-sticky, read_committed, the same fetch sizes; ``--fetch-wait-ms``
overrides the wait), which does nothing with the records. It prints p50/p99/max of consume time − Kafka record timestamp.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PY,
    Emulator,
    EventFactory,
    PacedProducer,
    Procs,
    all_topics,
    busy_box,
    cpu_seconds,
    start_broker,
)

_CONSUMER = r"""
import sys, time, orjson
from confluent_kafka import Consumer
from connector.config import KafkaConfig
from connector.kafka.source import consumer_config
bootstrap, n, fetch_wait, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = Consumer(consumer_config(KafkaConfig(bootstrap_servers=bootstrap, group_id="broker-latency", session_timeout_ms=6000,
                                         extra={"fetch.wait.max.ms": fetch_wait, "enable.auto.commit": False})))
c.subscribe(["^" + prefix.replace(".", "\\.") + ".*"])
print("ready", flush=True)
lat, idle_since = [], time.monotonic()
while len(lat) < n and time.monotonic() - idle_since < 30:
    msgs = c.consume(1000, 0)  # what is there now; never wait for a full batch (it would add latency)
    if not msgs:
        first = c.poll(0.5)
        msgs = [first] if first is not None else []
    now_ms = time.time() * 1000
    for m in msgs:
        if m.error() is None:
            lat.append(now_ms - m.timestamp()[1])
            idle_since = time.monotonic()
c.close()
print(orjson.dumps(lat).decode(), flush=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--fetch-wait-ms", type=int, default=25)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    print(f"box: {busy_box()}", flush=True)
    procs = Procs(Path(tempfile.mkdtemp(prefix="broker-latency-")))
    try:
        bootstrap = start_broker(procs)
        broker_pid = procs.procs[-1].pid
        emulator = Emulator(procs)
        factory = EventFactory(emulator.url, 5000)
        prefix = "latency.probe."
        from connector.dev.produce import ensure_topics

        ensure_topics(bootstrap, all_topics(prefix), args.partitions)
        total = int(args.rate * args.seconds)
        consumer = subprocess.Popen([PY, "-c", _CONSUMER, bootstrap, str(total), str(args.fetch_wait_ms), prefix],
                                    stdout=subprocess.PIPE, text=True)
        assert consumer.stdout is not None
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe consumer did not start")
        time.sleep(8)  # past the group join (about session.timeout.ms / 2 on tansu)
        producer = PacedProducer(bootstrap, factory, prefix, args.rate, args.seconds, 0)
        producer.start()
        # The broker's CPU per window at a constant rate: tansu keeps everything in memory, and its
        # cost per record grows with what it holds (42% of a core at the start of a 40 s run at
        # 5k/s, ~100% at its end on the machine of docs/benchmarks.md).
        windows: list[float] = []  # share of a core per window
        last, since = cpu_seconds(broker_pid), time.monotonic()
        while producer.is_alive():
            producer.join(5.0)
            now, at = cpu_seconds(broker_pid), time.monotonic()
            if at - since > 1.0:  # not the stub after the producer's end
                windows.append((now - last) / (at - since))
            last, since = now, at
        lat = sorted(orjson.loads(consumer.communicate(timeout=120)[0].strip().splitlines()[-1]))
        if len(lat) < producer.produced:
            print(f"only {len(lat)} of {producer.produced} records read back")
            return 1

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))]

        print(f"broker alone at {args.rate:,.0f} events/s for {args.seconds:.0f}s ({len(lat):,} records, "
              f"fetch.wait.max.ms {args.fetch_wait_ms}): p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, "
              f"max {lat[-1]:.0f} ms; producer behind its schedule by at most {producer.behind_s * 1000:.0f} ms")
        print("broker CPU, % of a core per 5 s window: " + " ".join(f"{100 * c:.0f}" for c in windows))
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
