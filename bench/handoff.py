"""Cost of handing records to transform worker processes, without Kafka or HTTP.

    python bench/handoff.py [--records 10000] [--chunk 500] [--workers 1,2]

Decodes, transforms and encodes the same sample records (half JSON, half Avro single-object) with
``RecordProcessor`` on this thread, then through ``WorkerPool`` with 1 and 2 workers (two chunks in
flight per worker, as the pipeline keeps them). Prints µs per record: CPU of this process (the
consumer side of the hand-off), CPU of the workers, and wall time (what bounds throughput).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds

from connector.avro_schemas import LocalSchemas
from connector.config import DecodeConfig, XdmConfig
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events
from connector.process import ProcessorSpec, RecordProcessor
from connector.workers import WorkerPool


def spec() -> ProcessorSpec:
    route = {"dataset_id": "ds", "schema_id": "https://ns.adobe.com/capillary/schemas/x"}
    xdm = XdmConfig(event=route, profile={**route, "dataset_id": "dp"})
    return ProcessorSpec(DecodeConfig(), xdm, "ORG@AdobeOrg", "bench", 940_000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    enc = SampleEncoder(LocalSchemas.load())
    events = generate_events(2_000, seed=11, now_ms=int(time.time() * 1000))
    pool_values = [enc.encode(ev, "json" if i % 2 else "avro-single") for i, ev in enumerate(events)]
    values = [pool_values[i % len(pool_values)] for i in range(args.records)]
    chunks = [values[i:i + args.chunk] for i in range(0, len(values), args.chunk)]
    n = len(values)

    local = RecordProcessor(spec())
    local.run(pool_values)  # warm caches
    t, w = time.process_time(), time.monotonic()
    for c in chunks:
        local.run(c)
    print(f"in-process       {(time.process_time() - t) / n * 1e6:6.1f} µs/record CPU, "
          f"{(time.monotonic() - w) / n * 1e6:6.1f} wall")
    for workers in (int(x) for x in args.workers.split(",")):
        pool = WorkerPool(workers, spec())
        try:
            for no in range(workers):  # start-up and warm caches outside the clock
                pool.submit(no, pool_values)
            while pool.outstanding:
                pool.collect(1.0, lambda *_: None)
            before = {pid: cpu_seconds(pid) for pid in pool.pids}
            t, w = time.process_time(), time.monotonic()
            for i, c in enumerate(chunks):
                while pool.busy(i % workers) >= 2:
                    pool.collect(0.01, lambda *_: None)
                pool.submit(i % workers, c)
            while pool.outstanding:
                pool.collect(1.0, lambda *_: None)
            main_cpu, wall = time.process_time() - t, time.monotonic() - w
            worker_cpu = sum(cpu_seconds(pid) - before[pid] for pid in pool.pids)
        finally:
            pool.close()
        print(f"{workers} worker(s)      {main_cpu / n * 1e6:6.1f} µs/record CPU here, "
              f"{worker_cpu / n * 1e6:6.1f} in the workers, {wall / n * 1e6:6.1f} wall")


if __name__ == "__main__":  # spawned/forked workers import this module: run nothing then
    main()
