"""The in-process ceiling: the connector's own pipeline (consume → decode → transform → encode →
batch → offsets) with the HTTP send disabled.

    python bench/ceiling.py --config connector.toml --events N [--timeout S]

It runs :class:`connector.pipeline.loop.Pipeline` unchanged except that ``Sink.deliver`` builds the
request body (``encode_body``, as the real sink does) and reports every record accepted, without a
network round trip. It stops by itself once ``N`` records are acknowledged and prints one JSON line
with monotonic timestamps (comparable with the parent's), CPU seconds and peak memory (PSS) of the
process and any children (one pipeline, as one pipeline process of ``capillary-aep run`` runs it;
builds before 4ad4d77 also had transform worker processes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MemoryPeak, cpu_seconds

from connector.config import load_settings
from connector.delivery.batch import encode_body
from connector.delivery.sink import BatchResult
from connector.pipeline.loop import Pipeline
from connector.telemetry.metrics import METRICS


def acknowledged() -> float:
    return sum(s.value for fam in METRICS.records_acknowledged.collect() for s in fam.samples
               if s.name.endswith("_total"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    pipeline = Pipeline(load_settings(args.config))
    memory = MemoryPeak(os.getpid())
    memory.start()
    sent = {"requests": 0, "messages": 0, "bytes": 0, "max_bytes": 0}
    lock = threading.Lock()

    def deliver(records, cancel):
        body = encode_body(m for r in records for m in r.messages)
        with lock:
            sent["requests"] += 1
            sent["messages"] += sum(len(r.messages) for r in records)
            sent["bytes"] += len(body)
            sent["max_bytes"] = max(sent["max_bytes"], len(body))
        return BatchResult(records, requests=1)

    pipeline.sink.deliver = deliver  # type: ignore[method-assign]
    out: dict[str, float | int | None] = {"first_ack": None, "last_ack": None, "timed_out": 0}

    def watch() -> None:
        deadline = started + args.timeout
        while not pipeline.stop_event.is_set():
            n = acknowledged()
            now = time.monotonic()
            if n > 0 and out["first_ack"] is None:
                out["first_ack"] = now
                out["cpu_first"] = cpu_seconds(os.getpid())  # with any children
            if n >= args.events:
                out["last_ack"] = now
                out["cpu"] = cpu_seconds(os.getpid())
                out["peak_rss_mb"] = memory.stop()
                pipeline.stop_event.set()
                return
            if now > deadline:
                out["timed_out"] = 1
                pipeline.stop_event.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = pipeline.run()
    watcher.join(5)
    out.update(exit_code=code, acknowledged=acknowledged(), **sent)
    print(orjson.dumps(out).decode(), flush=True)
    return 0 if code == 0 and not out["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
