"""Rough throughput check of the emulator's batch endpoint.

    python -m connector.dev.emulator.bench [--requests 200] [--concurrency 4] [--store-bodies]
                                       [--url http://127.0.0.1:8080]

Without ``--url`` it starts its own emulator (demo config) on a free port. Bodies (~1 MB of
~1 KB messages each, all distinct ``_id``) are built before the clock starts; the timed part is
sending them with httpx over loopback and parsing the 207s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson

from connector.dev.emulator.config import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_EVENT_DATASET_ID,
    DEMO_EVENT_SCHEMA_ID,
    DEMO_INLET_ID,
    DEMO_ORG_ID,
)
from connector.dev.procs import cpu_seconds, free_port

CT = "application/vnd.adobe.xed-full+json;version=1"


def message(i: int) -> dict[str, Any]:
    ref = {"id": DEMO_EVENT_SCHEMA_ID, "contentType": CT}
    return {
        "header": {"schemaRef": ref, "imsOrgId": DEMO_ORG_ID, "datasetId": DEMO_EVENT_DATASET_ID,
                   "source": {"name": "bench"}, "createdAt": 1700000000000},
        "body": {
            "xdmMeta": {"schemaRef": ref},
            "xdmEntity": {
                "_id": f"bench-{i:012d}",
                "timestamp": "2024-05-01T12:00:00.000Z",
                "eventType": "loyalty.pointsIssued",
                "identityMap": {"CapillaryCustomerId": [{"id": str(362028955 + i), "primary": True,
                                                         "authenticatedState": "ambiguous"}],
                                "Email": [{"id": f"user{i}@example.com"}]},
                "_capillary": {"loyalty": {"points": 125.5, "tier": "GOLD", "program": "Default Program",
                                           "transactionId": f"T{i:010d}", "storeCode": "STORE-0042",
                                           "billNumber": f"BILL-{i:08d}", "pointsExpiryDate": "2025-05-01T00:00:00Z",
                                           "awardedBy": "TransactionAddRule", "notes": "x" * 300}},
            },
        },
    }


def build_bodies(n: int, max_bytes: int = 1_000_000) -> tuple[list[bytes], int]:
    bodies, i = [], 0
    for _ in range(n):
        parts: list[bytes] = []
        size = len(b'{"messages":[]}')
        while True:
            m = orjson.dumps(message(i))
            if size + len(m) + 1 > max_bytes:
                break
            parts.append(m)
            size += len(m) + 1
            i += 1
        bodies.append(b'{"messages":[' + b",".join(parts) + b"]}")
    return bodies, i


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m connector.dev.emulator.bench")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--store-bodies", action="store_true", help="keep envelopes in the started emulator")
    ap.add_argument("--no-null-check", action="store_true", help="start the emulator with --no-null-check")
    ap.add_argument("--url", default=None, help="use a running emulator (demo config) instead of starting one")
    args = ap.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        cmd = [sys.executable, "-m", "connector.dev.emulator", "--port", str(port),
               "--store-bodies" if args.store_bodies else "--no-store-bodies",
               *(["--no-null-check"] if args.no_null_check else [])]
        proc = subprocess.Popen(cmd, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.get(f"{url}/__emulator/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.post(f"{url}/__emulator/reset")
        token = client.post(f"{url}/ims/token/v3", data={"grant_type": "client_credentials",
                            "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}).json()["access_token"]
        print(f"building {args.requests} bodies ...", flush=True)
        bodies, total = build_bodies(args.requests)
        nbytes = sum(map(len, bodies))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        batch_url = f"{url}/collection/batch/{DEMO_INLET_ID}"
        errors: list[str] = []
        next_index = iter(range(len(bodies)))
        lock = threading.Lock()

        def worker() -> None:
            with httpx.Client(timeout=60) as c:
                while True:
                    with lock:
                        i = next(next_index, None)
                    if i is None:
                        return
                    r = c.post(batch_url, content=bodies[i], headers=headers)
                    if r.status_code != 207 or any("xactionId" not in e or "status" in e
                                                   for e in orjson.loads(r.content)["responses"]):
                        errors.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        cpu0 = cpu_seconds(proc.pid, tree=False) if proc else None
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid, tree=False) - cpu0 if proc and cpu0 is not None else None
        stats = client.get(f"{url}/__emulator/stats").json()
        print(f"{len(bodies)} requests, {total} messages, {nbytes / 1e6:.1f} MB in {elapsed:.2f} s: "
              f"{total / elapsed:,.0f} messages/s, {len(bodies) / elapsed:.1f} requests/s, "
              f"{nbytes / 1e6 / elapsed:.1f} MB/s (concurrency {args.concurrency}, "
              f"store_bodies={'on' if args.store_bodies else 'off'}); "
              f"accepted={stats['messages_accepted']} errors={len(errors)}")
        if cpu is not None:
            print(f"emulator CPU: {cpu:.2f} s for {total} messages = {cpu / total * 1e6:.1f} us/message; "
                  f"one core would sustain ~{total / cpu:,.0f} messages/s")
        if errors or stats["messages_accepted"] != total:
            print("FAILED:", errors[:3], file=sys.stderr)
            sys.exit(1)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
