"""The long, large fault scenarios: the delivery guarantee at scale, on real processes (not in CI).

    python bench/faults.py --scenario all|crash|chaos|outage|token|group|degraded|budget [--events N]
                           [--quick] [--ours-code REV]
                           [--seed S] [--workdir DIR] [--json FILE]

One embedded broker (tansu) serves every scenario; each scenario gets its own emulator
(``--no-store-bodies``: the ``_id`` counts stay exact), topic prefix and consumer group, and real
``python -m connector run`` processes configured like the integration tests (``tests/harness.py``).
While a producer thread keeps Kafka fed, a sampler records every connector's RSS (psutil) and its
``capillary_aep_buffered_records`` / ``capillary_aep_paused_partitions`` gauges every 0.5 s.
Afterwards the XDM ``_id`` s the inlet accepted (``/__emulator/ids``) are compared with the ones the
transform makes of what was produced, the dead-letter topic is read, and the group's committed
offsets are compared with the end of every topic.

Scenarios (``--quick`` numbers in brackets; docs/fault-scenarios.md has the details):

* ``crash``  — 20 [10] rounds: start a connector, SIGKILL it at a random moment, start the next.
* ``chaos``  — ``--events`` 100,000 [20,000] events under random 500/502/503/504/429 (with and
  without Retry-After), slow responses (some beyond the request timeout), dropped connections and
  per-message 5xx/429 inside 207s.
* ``outage`` — the inlet down for 60 s [20 s] while events keep coming (first half 503 on every
  request, second half the emulator process stopped: connection refused, IMS gone too).
* ``token``  — IMS tokens that live 3 s, over 60 s [20 s] of traffic.
* ``group``  — 2–3 members joining and leaving (SIGTERM and SIGKILL) for 180 s [60 s].
* ``degraded`` — a 20,000-event backlog through an inlet failing 10 % 500, 5 % 503, 10 % 429 (half
  with Retry-After: 1), dropping 2 % of connections, 0–30 ms jitter, 2 % per-message 500s: time to
  deliver all (must be < 80 s), events/s, duplicate messages, requests by status.
* ``budget`` — a 30,000 [10,000]-event backlog replayed under ``delivery.max_messages_per_s`` =
  2,000: the inlet's rate per second (printed), every 5 s window within the budget.

Each scenario prints one verdict line (PASS/FAIL and its numbers, then the failed checks); the
process exits 0 only if every scenario passed. Every wait is bounded, and every child process
(broker, emulators, connectors) is stopped by pid on the way out, also on Ctrl-C or SIGTERM. Logs
of every process stay in the work directory (default ``bench/results/faults-<time>/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
import psutil  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from conftest import Emulator  # noqa: E402
from harness import ConnectorProc, committed, dlq_topic, end_offsets, new_group, read_topic, transformer, write_config  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from support import ManagedProcess, free_port, python_module, start_broker, wait_until  # noqa: E402

from connector.decode.avro_schemas import LocalSchemas  # noqa: E402
from connector.dev.emulator import config as em_config  # noqa: E402
from connector.dev.emulator.profiles import primary_key  # noqa: E402
from connector.dev.produce import SampleEncoder, customer_key, ensure_topics  # noqa: E402
from connector.dev.samples import generate_events  # noqa: E402
from connector.kafka.topics import all_topics, topic_for  # noqa: E402

MB = 1024 * 1024
OURS_CODE: list[Path | None] = [None]  # --ours-code: connectors run an exported older tree
FAST_GROUP = {"CAPILLARY_AEP__KAFKA__SESSION_TIMEOUT_MS": "3000"}

# == child processes, always stopped by pid ====================================================
_CHILDREN: list[ManagedProcess] = []
_CHILDREN_LOCK = threading.Lock()


def track(proc: ManagedProcess) -> ManagedProcess:
    with _CHILDREN_LOCK:
        _CHILDREN.append(proc)
    return proc


def stop_children() -> None:
    """Stop every child still running, newest first (connectors before emulators and the broker)."""
    with _CHILDREN_LOCK:
        procs = list(reversed(_CHILDREN))
        _CHILDREN.clear()
    for p in procs:
        try:
            p.stop(timeout=15)
        except Exception:  # noqa: BLE001 - keep stopping the others
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass


def start_emulator(workdir: Path, *args: str, port: int | None = None) -> Emulator:
    port = port or free_port()
    proc = track(ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), "--no-store-bodies", *args),
                                log_path=workdir / f"emulator-{port}.log"))
    url = f"http://127.0.0.1:{port}"
    ok = wait_for(lambda: not proc.alive() or httpx.get(f"{url}/__emulator/health", timeout=1).status_code == 200, 30)
    if not ok or not proc.alive():
        raise RuntimeError(f"emulator did not start: {proc.log_text()[-2000:]}")
    return Emulator(url, proc)


def start_connector(workdir: Path, *, bootstrap: str, emulator_url: str, prefix: str, group: str,
                    env: dict[str, str] | None = None, name: str = "connector") -> ConnectorProc:
    """Like ``tests/harness.start_connector``, but the process is tracked before anything can fail."""
    port = free_port()
    cfg = write_config(workdir / f"{name}-{port}.toml", bootstrap=bootstrap, emulator_url=emulator_url,
                       prefix=prefix, group=group, metrics_port=port)
    full_env = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em_config.DEMO_CLIENT_SECRET,
                "CAPILLARY_AEP__LOG__FORMAT": "text", **(env or {})}
    proc = track(ManagedProcess(python_module("connector", "run", "--config", str(cfg)), env=full_env,
                                log_path=workdir / f"{name}-{port}.log", cwd=OURS_CODE[0]))
    c = ConnectorProc(proc, port, cfg)
    wait_for(lambda: not proc.alive() or httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code, 30)
    if not proc.alive():
        raise RuntimeError(f"connector {name} died at start: {proc.log_text()[-2000:]}")
    return c


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    """:func:`wait_until` as a yes/no: a scenario reports a timeout instead of stopping on it."""
    try:
        wait_until(pred, timeout, interval)
        return True
    except TimeoutError:
        return False


def labelled(c: ConnectorProc, name: str) -> dict[str, float]:
    """Samples of one metric by their label values joined with ','."""
    try:
        text = httpx.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[",".join(s.labels.values())] = s.value
    return out


# == the event stream: produce, and remember what the inlet must receive ==========================
class Stream(threading.Thread):
    """Produces sample events (``rate`` per second, or as fast as possible) until stopped or
    ``total`` were sent; keeps the expected XDM ``_id`` counts of what the broker acknowledged."""

    def __init__(self, bootstrap: str, prefix: str, *, seed: int, encoding: str = "json", registry_url: str = "",
                 rate: float | None = None, total: int | None = None, chunk: int = 50) -> None:
        super().__init__(daemon=True, name="stream")
        self.bootstrap, self.prefix, self.seed = bootstrap, prefix, seed
        self.registry_url, self.rate, self.total, self.chunk = registry_url, rate, total, chunk
        self.encodings: tuple[str, ...] = (
            ("avro-registry", "avro-single", "json") if registry_url else ("avro-single", "json")
        ) if encoding == "mixed" else (encoding,)
        self.want: Counter[str] = Counter()  # ExperienceEvent _ids: each must arrive
        # Profile updates travel coalesced (one record per customer per request, with the _id of the
        # last update it merged): a profile is delivered when one of its updates' _ids arrived.
        self.profiles: dict[str, set[str]] = {}
        self.possible: set[str] = set()  # every _id the transform made: nothing else may arrive
        self.sent = 0
        self.acked = 0
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        ensure_topics(self.bootstrap, all_topics(self.prefix))
        encoder = SampleEncoder(LocalSchemas.load(), self.registry_url)
        transform = transformer().transform
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 20, "compression.type": "none"})

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.acked += 1

        i = 0
        pace = time.monotonic()
        while not self.stop_event.is_set() and (self.total is None or self.sent < self.total):
            n = self.chunk if self.total is None else min(self.chunk, self.total - self.sent)
            events = generate_events(n, seed=self.seed)
            self.seed += 1
            for ev in events:
                value = encoder.encode(ev, self.encodings[i % len(self.encodings)])
                i += 1
                while True:
                    try:
                        producer.produce(topic_for(ev["eventName"], self.prefix), value=value, key=customer_key(ev),
                                         on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.1)
                for m in transform(ev):
                    entity = m.envelope["body"]["xdmEntity"]
                    self.possible.add(entity["_id"])
                    if m.kind == "profile":
                        key = f"{m.envelope['header']['datasetId']}/{primary_key(entity)}"
                        self.profiles.setdefault(key, set()).add(entity["_id"])
                    else:
                        self.want[entity["_id"]] += 1
            self.sent += n
            producer.poll(0)
            if self.rate:
                pace += n / self.rate
                delay = pace - time.monotonic()
                if delay < -1.0:
                    pace = time.monotonic()  # fell behind (CPU busy): do not burst to catch up
                elif delay > 0:
                    self.stop_event.wait(delay)
        left = producer.flush(60)
        if left:
            self.errors.append(f"{left} events not acknowledged by the broker")

    def finish(self, timeout: float = 120) -> None:
        self.stop_event.set()
        self.join(timeout)
        if self.is_alive():
            self.errors.append("producer thread did not finish")


# == sampling RSS and gauges ======================================================================
@dataclass
class Sample:
    t: float
    member: str
    rss: int
    buffered: float
    paused: float
    acked: float


class Sampler(threading.Thread):
    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="sampler")
        self.interval = interval
        self.members: dict[str, ConnectorProc] = {}
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()

    def add(self, name: str, c: ConnectorProc) -> None:
        with self.lock:
            self.members[name] = c

    def remove(self, name: str) -> None:
        with self.lock:
            self.members.pop(name, None)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample_now()

    def sample_now(self) -> None:
        with self.lock:
            members = list(self.members.items())
        for name, c in members:
            if not c.proc.alive():
                continue
            try:
                rss = psutil.Process(c.proc.pid).memory_info().rss
                m = c.metrics()
            except Exception:  # noqa: BLE001 - starting, stopping or killed meanwhile
                continue
            s = Sample(time.monotonic() - self.t0, name, rss, m.get("capillary_aep_buffered_records", 0.0),
                       m.get("capillary_aep_paused_partitions", 0.0),
                       m.get("capillary_aep_records_acknowledged_total", 0.0))
            with self.lock:
                self.samples.append(s)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def between(self, a: float, b: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if a <= s.t <= b]

    def rss_summary(self) -> tuple[float, float, float]:
        """RSS in MiB: first sample of the first member, max over all, max of the last samples."""
        with self.lock:
            samples = list(self.samples)
        if not samples:
            return (0.0, 0.0, 0.0)
        last: dict[str, Sample] = {}
        for s in samples:
            last[s.member] = s
        end_t = max(s.t for s in last.values())
        end = max((s.rss for s in last.values() if s.t >= end_t - 2 * self.interval), default=0)
        return (samples[0].rss / MB, max(s.rss for s in samples) / MB, end / MB)

    def max_buffered(self) -> float:
        with self.lock:
            return max((s.buffered for s in self.samples), default=0.0)


# == results ======================================================================================
@dataclass
class Result:
    name: str
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # results.json only
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(self.checks.values())

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = bool(ok)

    def line(self) -> str:
        n = self.numbers
        rss = n.get("rss_mb", (0, 0, 0))
        core = (f"produced={n.get('produced', 0)} expected_ids={n.get('expected', 0)} "
                f"unique_delivered={n.get('unique_delivered', 0)} missing={n.get('missing', '?')} "
                f"duplicates={n.get('duplicates', '?')} dlq={n.get('dlq', '?')} "
                f"max_buffered={n.get('max_buffered', 0):.0f} rss_mb={rss[0]:.0f}/{rss[1]:.0f}/{rss[2]:.0f} "
                f"token_requests={n.get('token_requests', '?')} duration={n.get('duration_s', 0):.0f}s")
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.extra.items())
        failed = [k for k, ok in self.checks.items() if not ok]
        tail = ""
        if failed:
            tail += " FAILED: " + ", ".join(failed)
        if self.error:
            tail += f" ERROR: {self.error}"
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {core} | {extra}{tail}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def verify(r: Result, *, bootstrap: str, prefix: str, group: str, want: Counter[str], received: dict[str, int],
           stats: dict[str, Any], stream: Stream, sampler: Sampler, started: float) -> None:
    """The common numbers and checks: nothing missing, nothing unexpected, no DLQ, committed to end."""
    missing = [i for i in want if received.get(i, 0) < want[i]]
    missing += [k for k, ids in stream.profiles.items() if not any(received.get(i, 0) for i in ids)]
    delivered = sum(1 for i in want if received.get(i, 0) > 0)
    unexpected = [i for i in received if i not in stream.possible]
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    dlq = len(read_topic(bootstrap, dlq_topic(prefix), idle_s=1.0))
    ends = end_offsets(bootstrap, prefix)
    got = committed(bootstrap, group, prefix)
    behind = {f"{t}[{p}]": (got.get((t, p)), end) for (t, p), end in ends.items() if got.get((t, p)) != end}
    r.numbers.update(produced=stream.acked, expected=len(want), unique_delivered=delivered, missing=len(missing),
                     duplicates=duplicates, dlq=dlq, max_buffered=sampler.max_buffered(),
                     rss_mb=sampler.rss_summary(), token_requests=stats.get("token_requests", 0),
                     duration_s=time.monotonic() - started)
    r.extra["unexpected_ids"] = len(unexpected)
    r.check("producer ok", not stream.errors and stream.acked == stream.sent)
    r.check("zero missing", not missing and len(want) > 0)
    r.check("nothing unexpected", not unexpected)
    r.check("DLQ empty", dlq == 0)
    r.check("committed to end", not behind)
    if missing:
        r.extra["missing_sample"] = missing[:3]
    if behind:
        r.extra["not_committed"] = dict(list(behind.items())[:4])
    if stream.errors:
        r.extra["producer_errors"] = stream.errors[:3]


@dataclass
class Ctx:
    bootstrap: str
    workdir: Path
    quick: bool
    events: int
    seed: int


def _scenario_dir(ctx: Ctx, name: str) -> Path:
    d = ctx.workdir / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _prefix(name: str) -> str:
    return f"b{name}{os.urandom(3).hex()}.capillary.events."


def _wait_delivered(em: Emulator, stream: Stream, timeout: float, earlier: Counter[str] | None = None) -> bool:
    """Every expected ``_id`` accepted at least once (``earlier``: counts from a previous emulator)."""
    before = earlier or Counter()

    def done() -> bool:
        got = em.ids()
        return (all(got.get(i, 0) + before.get(i, 0) >= 1 for i in stream.want)
                and all(any(got.get(i, 0) + before.get(i, 0) for i in ids) for ids in stream.profiles.values()))

    return wait_for(done, timeout, 2.0)


def _drained(members: list[ConnectorProc], timeout: float) -> bool:
    return wait_for(lambda: all(c.metric("capillary_aep_buffered_records") == 0 for c in members
                                if c.proc.alive()), timeout, 0.5)


# == 1. crash =====================================================================================
def scenario_crash(ctx: Ctx) -> Result:
    r = Result("crash")
    wd = _scenario_dir(ctx, "crash")
    started = time.monotonic()
    rounds = 10 if ctx.quick else 20
    max_up = 3.0 if ctx.quick else 6.0
    cap, batch = 2000, 1000
    env = {**FAST_GROUP, "CAPILLARY_AEP__DELIVERY__MAX_BUFFERED_RECORDS": str(cap),
           "CAPILLARY_AEP__KAFKA__CONSUME_BATCH": str(batch)}
    em = start_emulator(wd)
    prefix, group = _prefix("crash"), new_group()
    rng = random.Random(ctx.seed + 1)
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 10_000, encoding="mixed", registry_url=em.url,
                    rate=500)
    sampler = Sampler()
    stream.start()
    sampler.start()
    kills: list[dict[str, Any]] = []
    try:
        for k in range(rounds):
            c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                                env=env, name=f"crash{k}")
            sampler.add(f"crash{k}", c)
            t_start = time.monotonic()
            if rng.random() < 0.25:
                phase = "startup"  # while joining the group, fetching the token, first fetches
                time.sleep(rng.uniform(0.1, 3.0))
            else:
                phase = "delivering"  # at a random moment after the first acknowledgement
                wait_for(lambda c=c: c.metric("capillary_aep_records_acknowledged_total") > 0, 30, 0.05)
                time.sleep(rng.uniform(0.0, max_up))
            up = time.monotonic() - t_start
            m = {}
            try:
                m = c.metrics()
            except httpx.HTTPError:
                pass
            c.proc.kill()
            c.proc.stop()  # closes its log; the process is gone already
            sampler.remove(f"crash{k}")
            kills.append({"phase": phase, "up_s": round(up, 2),
                          "acked": m.get("capillary_aep_records_acknowledged_total", 0),
                          "inflight": m.get("capillary_aep_inflight_batches", 0),
                          "buffered": m.get("capillary_aep_buffered_records", 0)})
        stream.finish()
        final = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                                env=env, name="crash-final")
        sampler.add("final", final)
        delivered = _wait_delivered(em, stream, 300)
        drained = _drained([final], 60)
        sampler.finish()
        code = final.stop()
        stats = em.stats()
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        dup_bound = len(kills) * (cap + batch + 1000) * max(1.0, len(stream.want) / max(1, stream.acked))
        r.check("all delivered in time", delivered)
        r.check("final member drained", drained)
        r.check("final member exit 0", code == 0)
        r.check(f"{rounds} kills", len(kills) == rounds)
        r.check("duplicates bounded", r.numbers["duplicates"] <= dup_bound)
        r.extra.update(kills=len(kills),
                       kills_at_startup=sum(1 for k in kills if k["phase"] == "startup"),
                       kills_with_requests_in_flight=sum(1 for k in kills if k["inflight"]),
                       kills_with_records_buffered=sum(1 for k in kills if k["buffered"]),
                       dup_bound=int(dup_bound), dups_per_kill=r.numbers["duplicates"] / max(1, len(kills)))
        r.details["kills"] = kills
    finally:
        stream.finish(5)
        sampler.finish()
    return r


# == 2. chaos =====================================================================================
CHAOS_MODES: list[dict[str, Any]] = [
    {},  # a healthy moment now and then
    {"status": 500, "rate": 0.3},
    {"status": 503, "rate": 0.3, "retry_after": "1"},
    {"status": 503, "rate": 0.5},
    {"status": 429, "rate": 0.3},
    {"status": 429, "rate": 0.3, "retry_after": "0"},
    {"status": 429, "rate": 0.2, "retry_after": "2"},
    {"status": 502, "rate": 0.2, "latency_ms": 100, "latency_jitter_ms": 200},
    {"status": 504, "rate": 0.3},
    {"latency_ms": 300, "latency_jitter_ms": 400},  # slow
    {"latency_ms": 1200, "latency_jitter_ms": 1600},  # slow, some beyond the 2 s request timeout
    {"drop_connection_rate": 0.2},
    {"drop_connection_rate": 0.5, "latency_ms": 50},
    {"message_status": {"status": 503, "rate": 0.05}},
    {"message_status": {"status": 500, "rate": 0.2}},
    {"message_status": {"status": 429, "rate": 0.05}, "status": 504, "rate": 0.1},
]


def scenario_chaos(ctx: Ctx) -> Result:
    r = Result("chaos")
    wd = _scenario_dir(ctx, "chaos")
    started = time.monotonic()
    n = ctx.events
    em = start_emulator(wd)
    prefix, group = _prefix("chaos"), new_group()
    rng = random.Random(ctx.seed + 2)
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 20_000, encoding="mixed", registry_url=em.url,
                    total=n, chunk=1000)
    sampler = Sampler()
    stop = threading.Event()
    modes_used: Counter[int] = Counter()

    def chaos() -> None:
        while not stop.is_set():
            i = rng.randrange(len(CHAOS_MODES))
            try:
                em.clear_faults()
                if CHAOS_MODES[i]:
                    em.faults(**CHAOS_MODES[i])
                modes_used[i] += 1
            except httpx.HTTPError:
                pass
            stop.wait(rng.uniform(0.3, 1.5))
        try:
            em.clear_faults()
        except httpx.HTTPError:
            pass

    monkey = threading.Thread(target=chaos, daemon=True, name="chaos")
    stream.start()
    sampler.start()
    monkey.start()
    c = None
    try:
        c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                            env={"CAPILLARY_AEP__DELIVERY__REQUEST_TIMEOUT_S": "2"}, name="chaos")
        sampler.add("chaos", c)
        limit = max(240.0, n / 150)
        produced = wait_for(lambda: not stream.is_alive(), limit, 1.0)
        acked = wait_for(lambda: c.metric("capillary_aep_records_acknowledged_total") >= stream.acked
                         or not c.proc.alive(), limit, 1.0)
        chaos_s = time.monotonic() - started
        stop.set()
        monkey.join(10)
        delivered = _wait_delivered(em, stream, 120)
        drained = _drained([c], 60)
        retries = labelled(c, "capillary_aep_retries_total")
        dead = c.metric("capillary_aep_records_dead_lettered_total")
        sampler.finish()
        code = c.stop()
        stats = em.stats()
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        r.check(f">= {n} events", stream.acked >= n)
        r.check("produced in time", produced)
        r.check("all acknowledged under chaos", acked)
        r.check("all delivered", delivered)
        r.check("drained", drained)
        r.check("exit 0", code == 0)
        r.check("faults fired", sum(retries.values()) > 0)
        r.check("duplicates bounded", r.numbers["duplicates"] <= len(stream.want))
        r.check("nothing dead-lettered (metric)", dead == 0)
        req = stats.get("requests", {})
        r.extra.update(chaos_s=chaos_s, mode_switches=sum(modes_used.values()),
                       dcs_requests=sum(req.values()), answers=dict(sorted(req.items())),
                       faulted_requests=stats.get("faulted_requests", 0),
                       dropped=stats.get("dropped_connections", 0),
                       retries={k: int(v) for k, v in sorted(retries.items())},
                       events_per_s=stream.acked / max(chaos_s, 1e-9))
    finally:
        stop.set()
        stream.finish(5)
        sampler.finish()
    return r


# == 3. outage ====================================================================================
def scenario_outage(ctx: Ctx) -> Result:
    r = Result("outage")
    wd = _scenario_dir(ctx, "outage")
    started = time.monotonic()
    warm, outage, after = (5.0, 20.0, 5.0) if ctx.quick else (10.0, 60.0, 10.0)
    rate, cap, batch = 1000.0, 5000, 1000
    port = free_port()
    em = start_emulator(wd, port=port)
    prefix, group = _prefix("outage"), new_group()
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    # No registry encoding: the emulator (also the Schema Registry) is stopped for half the outage.
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 30_000, encoding="mixed", rate=rate)
    sampler = Sampler()
    received: Counter[str] = Counter()
    token_requests = 0
    try:
        c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                            env={"CAPILLARY_AEP__DELIVERY__MAX_BUFFERED_RECORDS": str(cap),
                                 "CAPILLARY_AEP__KAFKA__CONSUME_BATCH": str(batch)}, name="outage")
        sampler.add("outage", c)
        stream.start()
        sampler.start()
        time.sleep(warm)
        t_down = sampler.now()
        em.faults(status=503)  # phase 1: the inlet answers 503 to everything
        time.sleep(2)  # requests already answered 207 before the fault are acknowledged meanwhile
        acked_before = c.metric("capillary_aep_records_acknowledged_total")
        paused = wait_for(lambda: c.metric("capillary_aep_paused_partitions") > 0, outage / 2, 0.2)
        t_paused = sampler.now()
        time.sleep(max(0.0, t_down + outage / 2 - sampler.now()))
        received.update(em.ids())  # nothing is accepted during the 503s: this count is final
        first = em.stats()
        token_requests += first.get("token_requests", 0)
        em.proc.stop()  # phase 2: nothing listens (connection refused), IMS and registry gone too
        time.sleep(max(0.0, t_down + outage - sampler.now()))
        t_up = sampler.now()
        acked_during = c.metric("capillary_aep_records_acknowledged_total") - acked_before
        em = start_emulator(wd, port=port)  # same address: old tokens are unknown → 401 → refresh
        resumed = wait_for(lambda: c.metric("capillary_aep_records_acknowledged_total") > acked_before + acked_during,
                           60, 0.2)
        t_resumed = sampler.now()
        time.sleep(after)
        stream.finish()
        delivered = _wait_delivered(em, stream, 300, earlier=received)
        drained = _drained([c], 60)
        resumed_consumption = wait_for(lambda: c.metric("capillary_aep_paused_partitions") == 0, 30, 0.5)
        sampler.finish()
        code = c.stop()
        stats = em.stats()
        received.update(em.ids())
        stats["token_requests"] = token_requests + stats.get("token_requests", 0)
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=dict(received),
               stats=stats, stream=stream, sampler=sampler, started=started)
        # Memory during the outage, from 5 s after the pause (the buffer is full by then) to its end.
        settled = sampler.between(t_paused + 5, t_up)
        quarter = max(1, len(settled) // 4)
        rss_early = max((s.rss for s in settled[:quarter]), default=0) / MB
        rss_late = max((s.rss for s in settled[-quarter:]), default=0) / MB
        buf_outage = max((s.buffered for s in sampler.between(t_down, t_up)), default=0)
        r.check("partitions paused", paused)
        r.check("buffer at the cap", buf_outage <= cap + batch)
        r.check("RSS flat during outage", bool(settled) and rss_late - rss_early <= max(16.0, 0.1 * rss_early))
        r.check("nothing acknowledged while down", acked_during == 0)
        r.check("delivery resumed", resumed)
        r.check("consumption resumed", resumed_consumption)
        r.check("all delivered", delivered)
        r.check("drained", drained)
        r.check("exit 0", code == 0)
        r.extra.update(outage_s=t_up - t_down, paused_after_s=t_paused - t_down, resumed_after_s=t_resumed - t_up,
                       buffered_max_outage=buf_outage, rss_outage_early_mb=rss_early, rss_outage_late_mb=rss_late,
                       produced_during_outage=int(rate * (t_up - t_down)), cap=cap,
                       dcs_answers_down=dict(sorted(first.get("requests", {}).items())),
                       dcs_answers_after=dict(sorted(stats.get("requests", {}).items())))
    finally:
        stream.finish(5)
        sampler.finish()
    return r


# == 4. token =====================================================================================
def scenario_token(ctx: Ctx) -> Result:
    r = Result("token")
    wd = _scenario_dir(ctx, "token")
    started = time.monotonic()
    ttl, traffic = 3.0, (20.0 if ctx.quick else 65.0)
    em = start_emulator(wd, "--token-ttl", str(int(ttl)))
    prefix, group = _prefix("token"), new_group()
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 40_000, encoding="mixed", registry_url=em.url,
                    rate=400)
    sampler = Sampler()
    try:
        t_start = time.monotonic()
        c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                            name="token")
        sampler.add("token", c)
        stream.start()
        sampler.start()
        time.sleep(traffic)
        stream.finish()
        delivered = _wait_delivered(em, stream, 120)
        drained = _drained([c], 60)
        refreshes = labelled(c, "capillary_aep_token_refreshes_total")
        token_retries = labelled(c, "capillary_aep_retries_total").get("token_refresh", 0)
        auth_failed = c.metric("capillary_aep_auth_failed")
        sampler.finish()
        code = c.stop()
        lifetime = time.monotonic() - t_start
        stats = em.stats()
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        req = stats.get("requests", {})
        tokens = stats.get("token_requests", 0)
        # Refreshed at half the lifetime (refresh margin = min(300 s, ttl/2)): one per ttl/2 seconds.
        expected = lifetime / (ttl / 2)
        r.check("traffic >= 60 s" if not ctx.quick else "traffic >= 20 s", traffic >= (20 if ctx.quick else 60))
        r.check("all delivered", delivered)
        r.check("drained", drained)
        r.check("exit 0", code == 0)
        r.check("no 401/403 from the inlet", not req.get("401") and not req.get("403"))
        r.check("credentials never failed", auth_failed == 0)
        r.check("token requests ~ one per half-lifetime", 0.6 * expected <= tokens <= 1.2 * expected + 3)
        r.check("fewer token requests than inlet requests", tokens < stats.get("batch_requests", 0))
        r.extra.update(ttl_s=ttl, traffic_s=traffic, connector_lifetime_s=lifetime, expected_tokens=expected,
                       batch_requests=stats.get("batch_requests", 0), dcs_answers=dict(sorted(req.items())),
                       token_refreshes={k: int(v) for k, v in refreshes.items()}, token_retries=int(token_retries),
                       tokens_issued=stats.get("tokens_issued", 0))
    finally:
        stream.finish(5)
        sampler.finish()
    return r


# == 5. group =====================================================================================
def scenario_group(ctx: Ctx) -> Result:
    r = Result("group")
    wd = _scenario_dir(ctx, "group")
    started = time.monotonic()
    duration, gap = (60.0, (5.0, 10.0)) if ctx.quick else (180.0, (8.0, 18.0))
    em = start_emulator(wd)
    prefix, group = _prefix("group"), new_group()
    rng = random.Random(ctx.seed + 5)
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 50_000, encoding="mixed", registry_url=em.url,
                    rate=500)
    sampler = Sampler()
    members: dict[str, ConnectorProc] = {}
    events: list[str] = []
    exit_codes: list[int | None] = []
    seq = 0

    def join() -> None:
        nonlocal seq
        name = f"m{seq}"
        seq += 1
        members[name] = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                                        env=FAST_GROUP, name=name)
        sampler.add(name, members[name])
        events.append(f"+{name}@{sampler.now():.0f}")

    def leave(kind: str) -> None:
        name = rng.choice(sorted(members))
        c = members.pop(name)
        if kind == "term":
            exit_codes.append(c.stop())
        else:
            c.proc.kill()
            c.proc.stop()
        sampler.remove(name)
        events.append(f"{'-' if kind == 'term' else 'x'}{name}@{sampler.now():.0f}")

    try:
        stream.start()
        sampler.start()
        join()
        join()
        next_leave = rng.choice(["term", "kill"])
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(min(rng.uniform(*gap), max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            if len(members) < 2 or (len(members) < 3 and rng.random() < 0.5):
                join()
            else:
                leave(next_leave)
                next_leave = "kill" if next_leave == "term" else "term"
        if not members:
            join()
        stream.finish()
        alive = list(members.values())
        delivered = _wait_delivered(em, stream, 300)
        drained = _drained(alive, 60)
        sampler.finish()
        for name, c in list(members.items()):
            exit_codes.append(c.stop())
            events.append(f"-{name}(end)")
        stats = em.stats()
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        terms = sum(1 for e in events if e.startswith("-m") and "(end)" not in e)
        kills = sum(1 for e in events if e.startswith("x"))
        r.check("all delivered", delivered)
        r.check("drained", drained)
        r.check("graceful leaves exit 0", all(code == 0 for code in exit_codes))
        r.check("joins, SIGTERM and SIGKILL leaves happened", seq >= 3 and terms >= 1 and kills >= 1)
        r.extra.update(churn_s=duration, joins=seq, sigterm_leaves=terms, sigkill_leaves=kills,
                       exit_codes=",".join(str(x) for x in exit_codes))
        r.details["timeline"] = events
    finally:
        stream.finish(5)
        sampler.finish()
    return r


# == 6. degraded ==================================================================================
# The degraded inlet of issue 15 (tests/test_delivery_faults.py uses the same mix on 5,000 events):
# whole-request 500/503/429 (half the 429s with Retry-After: 1), 2 % dropped connections, 0–30 ms
# jitter, and 2 % of the messages of otherwise successful 207s failing with a per-message 500.
DEGRADED_INLET: dict[str, Any] = {
    "status_mix": [{"status": 500, "rate": 0.10}, {"status": 503, "rate": 0.05},
                   {"status": 429, "rate": 0.05, "retry_after": "1"}, {"status": 429, "rate": 0.05}],
    "drop_connection_rate": 0.02,
    "latency_jitter_ms": 30,
    "message_status": {"status": 500, "rate": 0.02},
}


def scenario_degraded(ctx: Ctx) -> Result:
    """A backlog of 20,000 JSON events (12 partitions) drained through the degraded inlet: time to
    deliver all, events/s, duplicate messages and requests by status."""
    r = Result("degraded")
    wd = _scenario_dir(ctx, "degraded")
    started = time.monotonic()
    n = 20_000
    em = start_emulator(wd)
    prefix, group = _prefix("degraded"), new_group()
    ensure_topics(ctx.bootstrap, all_topics(prefix), 2)  # 6 topics × 2 partitions
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 60_000, encoding="json", total=n, chunk=1000)
    sampler = Sampler()
    try:
        stream.start()
        stream.join(300)
        em.faults(**DEGRADED_INLET)
        t0 = time.monotonic()
        c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                            name="degraded")
        sampler.add("degraded", c)
        sampler.start()
        acked = wait_for(lambda: c.metric("capillary_aep_records_acknowledged_total") >= stream.acked
                         or not c.proc.alive(), 300, 0.25)
        took = time.monotonic() - t0
        inflight_limit_min = c.metric("capillary_aep_inflight_limit")
        message_retries = c.metric("capillary_aep_message_retries_total")
        stats = em.stats()
        em.clear_faults()
        delivered = _wait_delivered(em, stream, 60)
        sampler.finish()
        t_stop = time.monotonic()
        code = c.stop()
        stop_s = time.monotonic() - t_stop
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        r.check("all acknowledged", acked and c.metric("capillary_aep_records_acknowledged_total") >= n
                if c.proc.alive() else acked)
        r.check("all delivered", delivered)
        r.check("within 80 s", took < 80)
        r.check("duplicates <= 2 % of events", r.numbers["duplicates"] <= 0.02 * n)
        r.check("exit 0 on SIGTERM", code == 0)
        r.extra.update(time_to_deliver_all_s=round(took, 1), events_per_s=round(n / took),
                       duplicate_messages=r.numbers["duplicates"], message_retries=int(message_retries),
                       requests_by_status=dict(sorted(stats.get("requests", {}).items())),
                       messages_accepted=stats.get("messages_accepted", 0),
                       profile_records=stats.get("profile_records", 0), inflight_limit_end=inflight_limit_min,
                       sigterm_to_exit_s=round(stop_s, 1))
    finally:
        stream.finish(5)
        sampler.finish()
    return r


# == 7. budget ====================================================================================
def scenario_budget(ctx: Ctx) -> Result:
    """A backlog replayed under a send budget (delivery.max_messages_per_s): the inlet's rate per
    second stays at the budget (printed as a timeline), and everything arrives."""
    r = Result("budget")
    wd = _scenario_dir(ctx, "budget")
    started = time.monotonic()
    n, budget = (10_000 if ctx.quick else 30_000), 2_000
    em = start_emulator(wd)
    prefix, group = _prefix("budget"), new_group()
    ensure_topics(ctx.bootstrap, all_topics(prefix))
    stream = Stream(ctx.bootstrap, prefix, seed=ctx.seed * 1000 + 70_000, encoding="json", total=n, chunk=1000)
    sampler = Sampler()
    try:
        stream.start()
        stream.join(300)
        c = start_connector(wd, bootstrap=ctx.bootstrap, emulator_url=em.url, prefix=prefix, group=group,
                            env={"CAPILLARY_AEP__DELIVERY__MAX_MESSAGES_PER_S": str(budget),
                                 "CAPILLARY_AEP__BATCH__MAX_RECORDS": "500"}, name="budget")
        sampler.add("budget", c)
        sampler.start()
        acked = wait_for(lambda: c.metric("capillary_aep_records_acknowledged_total") >= stream.acked
                         or not c.proc.alive(), 300, 0.25)
        waited = c.metric("capillary_aep_governor_wait_seconds_total")
        delivered = _wait_delivered(em, stream, 60)
        sampler.finish()
        code = c.stop()
        stats = em.stats()
        verify(r, bootstrap=ctx.bootstrap, prefix=prefix, group=group, want=stream.want, received=em.ids(),
               stats=stats, stream=stream, sampler=sampler, started=started)
        per_s = {int(k): v for k, v in stats.get("accepted_per_second", {}).items()}
        first = min(per_s) if per_s else 0
        timeline = [per_s.get(s, 0) for s in range(first, max(per_s) + 1)] if per_s else []
        windows = [sum(timeline[i:i + 5]) for i in range(max(1, len(timeline) - 4))]
        r.check("all acknowledged", acked)
        r.check("all delivered", delivered)
        r.check("every 5 s window <= budget x 6 + one request", max(windows, default=0) <= budget * 6 + 1000)
        r.check("the budget held the rate", waited > 0)
        r.check("exit 0", code == 0)
        r.extra.update(budget=budget, seconds=len(timeline), mean_rate=round(sum(timeline) / max(1, len(timeline))),
                       max_5s_window=max(windows, default=0), governor_wait_s=round(waited, 1),
                       rate_per_second=timeline)
        print("  rate per second at the inlet: " + " ".join(str(v) for v in timeline), flush=True)
    finally:
        stream.finish(5)
        sampler.finish()
    return r


SCENARIOS: dict[str, Callable[[Ctx], Result]] = {
    "crash": scenario_crash, "chaos": scenario_chaos, "outage": scenario_outage, "token": scenario_token,
    "group": scenario_group, "degraded": scenario_degraded, "budget": scenario_budget,
}


# == main =========================================================================================
def machine() -> str:
    mem = psutil.virtual_memory().total / 1024**3
    return (f"{platform.node()} · nproc={os.cpu_count()} · RAM {mem:.1f} GiB · Python {platform.python_version()} · "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")


def table(results: list[Result]) -> str:
    rows = ["| Scenario | Verdict | Produced | Unique delivered | Missing | Duplicates | DLQ | Max buffered | "
            "RSS MiB start/max/end | Token requests | Duration |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        n = r.numbers
        rss = n.get("rss_mb", (0, 0, 0))
        rows.append(f"| {r.name} | {'PASS' if r.passed else 'FAIL'} | {n.get('produced', 0):,} | "
                    f"{n.get('unique_delivered', 0):,} / {n.get('expected', 0):,} | {n.get('missing', '?')} | "
                    f"{n.get('duplicates', '?'):,} | {n.get('dlq', '?')} | {n.get('max_buffered', 0):,.0f} | "
                    f"{rss[0]:.0f} / {rss[1]:.0f} / {rss[2]:.0f} | {n.get('token_requests', '?')} | "
                    f"{n.get('duration_s', 0):.0f} s |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="all", choices=["all", *SCENARIOS])
    ap.add_argument("--events", type=int, default=None, help="chaos events (default 100000; --quick 20000)")
    ap.add_argument("--quick", action="store_true", help="a few-minute version of every scenario")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None, help="logs (default bench/results/faults-<time>/)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (default: in workdir)")
    ap.add_argument("--ours-code", metavar="REV", default=None,
                    help="run the connectors of git revision REV (the broker, emulator and checks stay current)")
    args = ap.parse_args(argv)

    workdir = args.workdir or ROOT / "bench" / "results" / f"faults-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    events = args.events or (20_000 if args.quick else 100_000)
    if args.ours_code:
        sys.path.insert(0, str(ROOT / "bench"))
        from run import export_tree

        OURS_CODE[0] = export_tree(args.ours_code, workdir)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # same path as Ctrl-C: stop the children, report what finished

    signal.signal(signal.SIGTERM, on_term)
    print(f"# fault scenarios {'(quick) ' if args.quick else ''}— {machine()}", flush=True)
    print(f"# logs: {workdir}", flush=True)
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        broker, bootstrap = start_broker(workdir)
        track(broker)
        ctx = Ctx(bootstrap, workdir, args.quick, events, args.seed)
        for name in names:
            print(f"# {name} …", flush=True)
            try:
                r = SCENARIOS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one scenario's crash is its FAIL, not the run's
                r = Result(name, error=f"{type(exc).__name__}: {exc}")
                (workdir / f"{name}-error.txt").write_text(traceback.format_exc())
            finally:
                # This scenario's emulators and connectors (the broker stays: it was tracked first).
                with _CHILDREN_LOCK:
                    mine = [p for p in _CHILDREN if p is not broker]
                    _CHILDREN[:] = [broker]
                for p in reversed(mine):
                    try:
                        p.stop(timeout=15)
                    except Exception:  # noqa: BLE001
                        p.kill()
            results.append(r)
            print(r.line(), flush=True)
    except KeyboardInterrupt:
        print("# interrupted", flush=True)
    finally:
        stop_children()
    total = time.monotonic() - t0
    print(f"\n# total {total:.0f} s\n")
    print(table(results))
    out = args.json or workdir / "results.json"
    out.write_text(json.dumps({"machine": machine(), "quick": args.quick, "events": events, "seed": args.seed,
                               "total_s": total,
                               "results": [{"name": r.name, "passed": r.passed, "checks": r.checks,
                                            "numbers": r.numbers, "extra": r.extra, "details": r.details,
                                            "error": r.error,
                                            "line": r.line()} for r in results]}, indent=2, default=str))
    return 0 if results and len(results) == len(names) and all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
