"""The input ceiling: how fast the connector's consumer settings read a backlog with nothing behind them.

    python bench/input.py [--events 200000] [--partitions 4] [--extra '{"fetch.max.bytes": 2097152}' ...]

Issue 17: input must never be what limits a backlog drain. This starts tansu and the emulator (the
event factory registers its Avro schemas there), pre-produces the bench's realistic event mix, then
drains it once per configuration with a bare confluent-kafka consumer in its own process, configured
by the connector's own ``connector.kafka.source.consumer_config`` (so the defaults under test are the
shipped ones) plus each ``--extra`` override, reading as the pipeline does (``Source.consume``) and
doing nothing with the records. It prints events/s, MB/s, the consumer's CPU share and peak RSS for
each: the rate the pipeline could be fed at, to compare with the rate it drains at (``bench/run.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, Emulator, EventFactory, Procs, busy_box, produce_backlog, start_broker

_CONSUMER = r"""
import sys, time, orjson
from connector.config import KafkaConfig
from connector.kafka.source import Source
bootstrap, n, prefix, group, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], orjson.loads(sys.argv[5])
cfg = KafkaConfig(bootstrap_servers=bootstrap, group_id=group, topics=["^" + prefix.replace(".", "\\.") + ".*"],
                  session_timeout_ms=6000, extra=extra)
src = Source(cfg, lambda p: None, lambda p: None, lambda p: None)
got = size = 0
first = None
while got < n:
    msgs = src.consume()
    if msgs and first is None:
        first, cpu0 = time.monotonic(), time.process_time()
    for m in msgs:
        if m.error() is None:
            got += 1
            size += len(m.value())
end, cpu1 = time.monotonic(), time.process_time()
src.close()
span = end - first
print(orjson.dumps({"events": got, "seconds": span, "events_per_s": got / span, "mb_per_s": size / span / 1e6,
                    "cpu_share": (cpu1 - cpu0) / span,
                    "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024,
                    }).decode(), flush=True)
"""

SHIPPED = "{}"
BEFORE = orjson.dumps({"fetch.max.bytes": 2 * 1024 * 1024, "max.partition.fetch.bytes": 512 * 1024,
                       "queued.max.messages.kbytes": 4096}).decode()  # the defaults before issue 17


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4, help="per topic (6 topics)")
    ap.add_argument("--extra", action="append", default=None,
                    help="kafka.extra overrides as JSON, one configuration each (default: the shipped settings, "
                         "then those before issue 17)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    configs = args.extra or [SHIPPED, BEFORE]
    print(f"box: {busy_box()}", flush=True)
    procs = Procs(Path(tempfile.mkdtemp(prefix="input-")))
    try:
        bootstrap = start_broker(procs)
        emulator = Emulator(procs)
        factory = EventFactory(emulator.url, min(args.events, 20_000))
        prefix = "input.probe."
        secs = produce_backlog(bootstrap, factory, args.events, prefix, args.partitions)
        print(f"backlog: {args.events:,} events in {secs:.1f}s", flush=True)
        for r in range(args.rounds):
            for i, extra in enumerate(configs):
                out = subprocess.run([PY, "-c", _CONSUMER, bootstrap, str(args.events), prefix, f"input-{r}-{i}", extra],
                                     capture_output=True, text=True, timeout=600, check=True)
                res = orjson.loads(out.stdout.strip().splitlines()[-1])
                name = "shipped" if extra == SHIPPED else "before" if extra == BEFORE else extra
                print(f"{name}: {res['events_per_s']:,.0f} events/s, {res['mb_per_s']:.1f} MB/s, consumer "
                      f"{res['cpu_share']:.2f} of a core, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
