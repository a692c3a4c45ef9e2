"""Broker outages under a stream of webhook posts: no 200 for an event that is not in Kafka, and
nothing lost once Capillary's retries land.

The test has its own broker on a fixed port. The embedded broker keeps everything in memory, so a
restarted broker is empty: every event answered 200 *before* the stop is read back before the
stop (the stream is paused for that read, then resumed into the outage), and every event answered
200 after it must be in the new broker. Phases:

A. stream flowing; B. broker frozen (SIGSTOP: slow past the deadline) with requests in flight:
   they get 503 with Retry-After, and over the in-flight cap 429; C. thawed: retries land, then
   every 200 so far is checked in Kafka; D. broker stopped (SIGINT) and the stream resumed into
   the outage: only 503s; E. broker restarted on the same port: the retried posts land, and every
   event is accounted for (count per eventId).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import read_topic
from support import free_port, start_broker, wait_until
from test_ingest import TOKEN, Ingress, event_id_of, expected_key, start_ingress

from connector.dev.samples import generate_events
from connector.kafka.topics import all_topics

pytestmark = pytest.mark.integration

CAP = 4  # ingest.max_inflight_requests


class Answer:
    __slots__ = ("sent", "done", "status", "ids", "retry_after")

    def __init__(self, sent: float, done: float, status: int, ids: list[str], retry_after: str | None) -> None:
        self.sent, self.done, self.status, self.ids, self.retry_after = sent, done, status, ids, retry_after


class Capillary:
    """What Capillary's notification service does: post new events (one per request, or arrays of
    5), and retry every request not answered 200 until it is. Every answer is recorded."""

    def __init__(self, url: str, pool: list[dict[str, Any]], threads: int = CAP) -> None:
        self.url = url
        self.pool = pool
        self.events: dict[str, dict[str, Any]] = {}
        self.answers: list[Answer] = []
        self.retries: collections.deque[list[dict[str, Any]]] = collections.deque()
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.new_work = True
        self.busy = 0
        self.stopped = False
        self.errors: list[str] = []
        self._n = 0
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _next(self) -> list[dict[str, Any]] | None:
        with self.lock:
            if self.retries:
                batch = self.retries.popleft()
            elif self.new_work:
                size = 1 if self._n % 2 == 0 else 5
                batch = []
                for _ in range(size):
                    event = {**self.pool[self._n % len(self.pool)], "eventId": f"o-{uuid.uuid4()}"}
                    self.events[event["eventId"]] = event
                    batch.append(event)
                    self._n += 1
            else:
                return None
            self.busy += 1
            return batch

    def _work(self) -> None:
        with httpx.Client(timeout=20, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            while not self.stopped:
                if not self.running.wait(0.05):
                    continue
                batch = self._next()
                if batch is None:
                    self.running.wait(0.05)
                    continue
                sent = time.monotonic()
                try:
                    r = http.post(f"{self.url}/capillary/events", content=orjson.dumps(batch[0] if len(batch) == 1
                                                                                      else batch))
                    status, retry_after = r.status_code, r.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    status, retry_after = 0, None
                    self.errors.append(repr(exc))
                answer = Answer(sent, time.monotonic(), status, [e["eventId"] for e in batch], retry_after)
                with self.lock:
                    self.answers.append(answer)
                    if status != 200:
                        self.retries.append(batch)
                    self.busy -= 1
                if status != 200:
                    time.sleep(0.05)  # the sender's backoff (not synchronisation)

    def count(self, status: int, since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for a in self.answers if a.status == status and a.sent >= since)

    def pause(self) -> None:
        """Take no new work; return once nothing is in flight."""
        self.running.clear()
        wait_until(lambda: self.busy == 0, 30, what="in-flight posts to finish")

    def drain(self) -> None:
        """No new events: retry what failed until every request has had its 200."""
        self.new_work = False
        self.running.set()
        wait_until(lambda: not self.retries and self.busy == 0, 60, what="every retry to be answered 200")
        self.running.clear()

    def stop(self) -> None:
        self.stopped = True
        for t in self.threads:
            t.join(10)

    def ok_ids(self, since: float = 0.0, until: float = float("inf"), sent_since: float = 0.0) -> set[str]:
        """Events of requests answered 200 within [since, until) and sent at or after ``sent_since``."""
        with self.lock:
            return {i for a in self.answers
                    if a.status == 200 and since <= a.done < until and a.sent >= sent_since for i in a.ids}


def read_events(bootstrap: str, ingress: Ingress) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = collections.defaultdict(list)
    for topic in sorted(set(all_topics(ingress.prefix)) | set(ingress.topics.values())):
        for m in read_topic(bootstrap, topic, idle_s=1.0):
            out[event_id_of(orjson.loads(m.value()))].append(m)
    return out


def check_placement(records: dict[str, list[Any]], events: dict[str, dict[str, Any]], ingress: Ingress) -> None:
    for eid, msgs in records.items():
        event = events[eid]
        for m in msgs:
            assert m.topic() == ingress.topic(event["eventName"]) and m.key() == expected_key(event), eid


def test_broker_stall_and_restart_lose_nothing_and_never_lie(tmp_path: Path) -> None:
    port = free_port()
    broker, bootstrap = start_broker(tmp_path, port=port)
    prefix = f"o{uuid.uuid4().hex[:8]}.capillary.events."
    ingress = start_ingress(tmp_path, bootstrap, prefix,
                            extra=f"produce_timeout_s = 2\nmax_inflight_requests = {CAP}\nretry_after_s = 1")
    capillary = Capillary(ingress.url, generate_events(500, seed=61))
    try:
        # A: the stream flows.
        capillary.running.set()
        wait_until(lambda: capillary.count(200) >= 40, 30, what="200s while the broker is up")

        # B: the broker freezes mid-stream; requests in flight hit the deadline.
        frozen = time.monotonic()
        broker.signal(signal.SIGSTOP)
        wait_until(lambda: capillary.count(503, since=frozen) >= CAP, 30, what="503s while the broker is frozen")

        def over_the_cap() -> bool:  # the cap is full of hanging posts: one more is turned away at once
            wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] >= CAP, 10, what="a full cap")
            r = httpx.post(f"{ingress.url}/capillary/events", content=b"{}", timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"})
            return r.status_code == 429 and r.headers["retry-after"] == "1"

        wait_until(over_the_cap, 30, what="a 429 over the in-flight cap")
        assert httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 503  # deliveries failing
        thawing = time.monotonic()
        broker.signal(signal.SIGCONT)
        # A frozen broker acknowledges nothing sent after it froze (0.1 s for the signal to take effect).
        assert capillary.ok_ids(since=frozen + 0.1, until=thawing, sent_since=frozen + 0.1) == set()

        # C: thawed; retries land. Pause, and check every 200 so far against what Kafka holds.
        thawed = time.monotonic()
        wait_until(lambda: capillary.count(200, since=thawed) >= 20, 60, what="200s after the thaw")
        capillary.pause()
        before_stop = read_events(bootstrap, ingress)
        missing = capillary.ok_ids() - set(before_stop)
        assert not missing, f"{len(missing)} events answered 200 are not in Kafka: {sorted(missing)[:5]}"
        check_placement(before_stop, capillary.events, ingress)

        # D: the broker stops; the stream resumes into the outage.
        assert broker.stop() is not None
        stopped = time.monotonic()
        capillary.running.set()
        wait_until(lambda: capillary.count(503, since=stopped) >= 2 * CAP, 30, what="503s while the broker is down")
        wait_until(lambda: httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 503, 30, what="not ready")
        restarting = time.monotonic()
        assert capillary.ok_ids(since=stopped, until=restarting) == set()  # no broker: no 200 can be true

        # E: the broker is back (empty: memory only); Capillary's retries land.
        broker, _ = start_broker(tmp_path, port=port)
        wait_until(lambda: capillary.count(200, since=restarting) >= 20, 60, what="200s after the restart")
        capillary.drain()
        after_restart = read_events(bootstrap, ingress)
        missing = capillary.ok_ids(since=stopped) - set(after_restart)
        assert not missing, f"{len(missing)} events answered 200 are not in Kafka: {sorted(missing)[:5]}"
        check_placement(after_restart, capillary.events, ingress)

        # Nothing lost: every event was answered 200 at last, and is in Kafka (some more than once).
        assert capillary.ok_ids() == set(capillary.events)
        counts = {eid: len(before_stop.get(eid, ())) + len(after_restart.get(eid, ())) for eid in capillary.events}
        assert min(counts.values()) >= 1
        answered = collections.Counter(a.status for a in capillary.answers)
        assert set(answered) <= {200, 429, 503}, answered
        assert all(a.retry_after == "1" for a in capillary.answers if a.status in (429, 503))
        assert not capillary.errors, capillary.errors[:3]
        assert len(capillary.events) >= 100
        assert httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 200
    finally:
        capillary.stop()
        ingress.stop()
        broker.signal(signal.SIGCONT)  # in case a failure left it frozen
        broker.stop()
