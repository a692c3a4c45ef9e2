"""The connector benchmark: one command, on loopback, with the embedded broker and the emulator.

    python bench/run.py [--mode all|rate|peer|latency|steady|ceiling|drain|emulator|smoke]
                        [--events 200000] [--drain-events 1000000] [--steady-rate 5000,2500]
                        [--steady-seconds 20] [--latency-ms 50[,150,...]] [--rounds 1]
                        [--base-code REV] [--no-peer] [--json FILE]
                        [--cpus N | --ours-cpus N --base-cpus N] [--ours-toml TOML] [--base-toml TOML]

Modes (``all`` runs every one of them, sharing one broker and one backlog):

* ``rate``     pre-produce N events (the realistic type mix; Avro with registry framing and JSON),
               run one connector (a supervisor and its ``processing.processes`` pipeline processes,
               "auto" = one per CPU it may use) until every event is acknowledged; then the Quix Streams
               peer (``bench/peer_quix.py``) on the same events with the same emulator.
* ``latency``  the same backlog with the emulator adding ``--latency-ms`` to every inlet request; a
               comma list (``0,50,150``) runs each, ``--rounds`` times, interleaved (latency by
               latency, and ``--base-code REV`` before ours in each), for with/without and
               before/after figures from one run.
* ``steady``   a fresh topic fed at ``--steady-rate`` events/s for ``--steady-seconds``; p50/p99 of
               record birth (``createdAt`` = the producer's send time) → the inlet's receipt of the
               request carrying it (emulator clock, same host).
* ``ceiling``  the connector's pipeline in-process with the HTTP send disabled (``bench/ceiling.py``),
               so the report can print end-to-end / ceiling.
* ``drain``    peak memory (PSS summed over the connector's process tree: supervisor and every
               pipeline process) and rate while draining a ``--drain-events`` backlog (ours only
               unless ``--drain-peer`` / ``--drain-base``).
* ``emulator`` the emulator timed alone (``python -m connector.dev.emulator.bench``), to show it is not
               the bottleneck.
* ``peer``     only the peer on the backlog.
* ``smoke``    CI: a small backlog (default 20k), ours only; fails if the run fails or loses
               events (acknowledged ≠ produced, messages missing at the inlet, offsets not committed),
               never on speed.

With ``--base-code REV``, the ``rate``, ``latency`` and ``steady`` modes (and ``drain`` with
``--drain-base``) also run our connector from git revision REV (worker ``base``, its own config via
``--base-toml``) just before ours: before/after in the same run, side by side in the report's
``base`` and ``ours/base`` columns. ``--cpus N`` (or ``--ours-cpus``/``--base-cpus``) pins a
connector to N CPUs with ``taskset`` (the broker, emulator and peer stay unpinned), so that its
"auto" process or worker count resolves to N: the 1-core comparison on a 2-core box.

Every drain of ours reports each process's CPU share (cores, first to last acknowledgement): the
supervisor and each pipeline process by index (a build before 4ad4d77: the consumer process
``connector`` and its transform ``worker-<n>``), each pipeline process by thread role (loop,
senders, librdkafka, other), broker, emulator and the box; per pipeline the fraction of the drain
its loop found nothing fetched (input idle: ``capillary_aep_input_wait_seconds_total``) and was held
on full buffers (``capillary_aep_input_held_seconds_total``); what bounds the rate ("bound by":
the CPU when the box, or the CPUs the connector is pinned to, are ≥ 90 % busy, else per pipeline
input, delivery or its own core); and the request lanes (connector/delivery/lanes.py) by pipeline: the
mean fraction of the drain a lane was idle, filling, sending (its request in flight), blocked (its
request in flight and a batch ready behind it), each lane's blocked fraction and share of the
records, and the batches in flight per pipeline (time-weighted mean and distribution).

Every run is bounded in time (``--run-timeout``) and count, and every child process (broker,
emulators, connectors) is stopped by pid when the bench ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONNECTOR_ENV,
    PY,
    ROOT,
    Emulator,
    EventFactory,
    MemoryPeak,
    PacedProducer,
    Procs,
    RunResult,
    Watcher,
    busy_box,
    connector_toml,
    cpu_seconds,
    free_port,
    iso_to_ms,
    machine,
    merge_toml,
    percentile,
    produce_backlog,
)

from connector.dev.procs import scrape
from connector.kafka.topics import all_topics

MODES = ("all", "rate", "peer", "latency", "steady", "ceiling", "drain", "emulator", "smoke")
MB = 1_000_000


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# == workers ===============================================================================
class Worker:
    """One worker process under test (ours or the peer)."""

    name = ""
    poll_interval = 0.25

    def __init__(self, ctx: Context, group: str, prefix: str, emulator: Emulator) -> None:
        self.ctx, self.group, self.prefix, self.emulator = ctx, group, prefix, emulator
        self.proc: subprocess.Popen[bytes] | None = None
        self.launch = 0.0
        self.baseline_messages = 0  # messages sent before the emulator's counters were last reset
        self.baseline_merged = 0  # of ours: profile updates merged into others' records before that

    def start(self) -> None:
        raise NotImplementedError

    def acked(self) -> int:
        raise NotImplementedError

    def sent_messages(self) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        return self.ctx.procs.stop(self.proc, timeout=60) if self.proc is not None else None

    def checks(self, res: RunResult, stats: dict[str, Any]) -> None:
        """Loss checks after a run (the emulator counters are for this run only)."""

    def wait_acked(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                if self.acked() >= n:
                    return True
            except (httpx.HTTPError, OSError, ValueError):
                pass
            time.sleep(self.poll_interval)
        return False


class Ours(Worker):
    name = "ours"
    poll_interval = 1.0  # a /metrics scrape costs the connector CPU: not more than once a second

    def code(self) -> Path | None:
        return self.ctx.ours_code

    def toml(self) -> str:
        return str(self.ctx.args.ours_toml)

    def cpus(self) -> int | None:
        return self.ctx.args.ours_cpus  # type: ignore[no-any-return]

    def start(self) -> None:
        self.metrics_port = free_port()
        cfg = self.ctx.workdir / f"connector-{self.group}.toml"
        assert self.ctx.emulator is not None
        cfg.write_text(merge_toml(connector_toml(bootstrap=self.ctx.bootstrap, emulator_url=self.emulator.url,
                                                 prefix=self.prefix, group=self.group, metrics_port=self.metrics_port,
                                                 registry_url=self.ctx.emulator.url), self.toml()))
        self.launch = time.monotonic()
        self.proc = self.ctx.procs.start(f"{self.name}-{self.group}",
                                         [*pinned(self.cpus()), PY, "-m", "connector", "run", "--config", str(cfg)],
                                         env={**CONNECTOR_ENV, **dict(kv.split("=", 1) for kv in self.ctx.args.ours_env)},
                                         cwd=self.code())
        if self.ctx.args.profile:
            # Sampling profiler attached from outside (its own process): collapsed stacks per thread,
            # written when the connector exits. Figures of a profiled run are not comparable.
            out = self.ctx.workdir / f"py-spy-{self.group}.txt"
            self.ctx.procs.start(f"py-spy-{self.group}", [_py_spy(), "record", "--pid", str(self.proc.pid),
                                                          "--format", "raw", "--threads", "--subprocesses", "--rate", "200",
                                                          "--nonblocking", "-o", str(out)],
                                 stop_signal=signal.SIGINT)
            say(f"  profiling with py-spy → {out}")

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def acked(self) -> int:
        return int(self.metrics().get("capillary_aep_records_acknowledged_total", 0))

    def sent_messages(self) -> int:
        return int(self.metrics().get("capillary_aep_records_delivered_total", 0))

    def merged_messages(self) -> int:
        return int(self.metrics().get("capillary_aep_profile_updates_merged_total", 0))

    def checks(self, res: RunResult, stats: dict[str, Any]) -> None:
        m = self.metrics()
        dead = int(m.get("capillary_aep_records_dead_lettered_total", 0))
        # Profile updates merged into another's record count as delivered but reach the inlet inside it.
        delivered = (int(m.get("capillary_aep_records_delivered_total", 0)) - self.baseline_messages
                     - int(m.get("capillary_aep_profile_updates_merged_total", 0)) + self.baseline_merged)
        res.extra["dead_lettered"] = dead
        res.extra["retries"] = int(m.get("capillary_aep_retries_total", 0))
        n = m.get("capillary_aep_http_request_duration_seconds_count", 0)
        if n:
            res.extra["mean_request_ms"] = round(m["capillary_aep_http_request_duration_seconds_sum"] / n * 1000, 1)
        if dead:
            res.problems.append(f"{dead} records dead-lettered")
        if stats["messages_accepted"] < delivered:
            res.problems.append(f"inlet accepted {stats['messages_accepted']} messages, connector delivered {delivered}")


class Peer(Worker):
    name = "peer"

    def start(self) -> None:
        self.progress = self.ctx.workdir / f"peer-{self.group}.json"
        self.progress.unlink(missing_ok=True)
        args = [PY, str(ROOT / "bench" / "peer_quix.py"), "--bootstrap", self.ctx.bootstrap,
                "--registry", self.ctx.emulator.url, "--dcs", self.emulator.url, "--ims", self.emulator.url,
                "--group", self.group, "--topics", ",".join(all_topics(self.prefix)),
                "--progress", str(self.progress), "--commit-interval", str(self.ctx.args.peer_commit_interval)]
        self.launch = time.monotonic()
        self.proc = self.ctx.procs.start(f"peer-{self.group}", args)

    def status(self) -> dict[str, Any]:
        try:
            return orjson.loads(self.progress.read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {"records": 0, "messages": 0, "failed": 0}

    def acked(self) -> int:
        return int(self.status()["records"])

    def sent_messages(self) -> int:
        return int(self.status()["messages"])

    def checks(self, res: RunResult, stats: dict[str, Any]) -> None:
        st = self.status()
        if st["failed"]:
            res.problems.append(f"{st['failed']} messages rejected by the inlet")
        sent = st["messages"] - self.baseline_messages
        if stats["messages_accepted"] < sent:
            res.problems.append(f"inlet accepted {stats['messages_accepted']} messages, peer sent {sent}")


class Base(Ours):
    """Our connector from an older revision (``--base-code``), for before/after in the same run."""

    name = "base"

    def code(self) -> Path | None:
        return self.ctx.base_code

    def toml(self) -> str:
        return str(self.ctx.args.base_toml)

    def cpus(self) -> int | None:
        return self.ctx.args.base_cpus  # type: ignore[no-any-return]


def pinned(cpus: int | None) -> list[str]:
    """The command prefix that runs a connector on the first ``cpus`` CPUs the bench may use
    (``taskset -c``), so that ``processing.processes = "auto"`` (and the old ``processing.workers``)
    resolve to ``cpus`` inside it; the broker and the emulator stay unpinned. None: no prefix."""
    if not cpus:
        return []
    mine = sorted(os.sched_getaffinity(0))
    if cpus > len(mine):
        raise SystemExit(f"cannot pin a connector to {cpus} CPUs: the bench may use {len(mine)} ({mine})")
    return ["taskset", "-c", ",".join(str(c) for c in mine[:cpus])]


WORKERS = {"ours": Ours, "peer": Peer, "base": Base}


def _py_spy() -> str:
    local = Path(PY).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


# == the bench context =====================================================================
class Context:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Procs(workdir)
        self.bootstrap = ""
        self.emulator: Emulator | None = None
        self.factory: EventFactory | None = None
        self.backlogs: dict[str, int] = {}  # prefix → records produced
        self.run_id = uuid.uuid4().hex[:6]
        self.ours_code: Path | None = None  # --ours-code: run our connector from an exported older tree
        if args.ours_code:
            self.ours_code = export_tree(args.ours_code, workdir)
        self.base_code: Path | None = export_tree(args.base_code, workdir) if args.base_code else None

    def setup(self) -> None:
        from common import start_broker

        say(f"work directory {self.workdir}")
        self.bootstrap = start_broker(self.procs)
        self.broker_pid = self.procs.procs[-1].pid
        say(f"broker (tansu) on {self.bootstrap}")
        self.emulator = Emulator(self.procs, "emulator")
        say(f"emulator on {self.emulator.url} (--no-store-bodies)")
        pool = min(self.args.template_pool, max(self.args.events, 1000))
        t0 = time.monotonic()
        self.factory = EventFactory(self.emulator.url, pool, seed=self.args.seed, json_share=self.args.json_share)
        say(f"{pool} event templates encoded in {time.monotonic() - t0:.1f}s: {self.factory.encodings}")

    def backlog(self, name: str, n: int) -> str:
        prefix = f"bench.{self.run_id}.{name}."
        if prefix not in self.backlogs:
            assert self.factory is not None
            say(f"producing a backlog of {n:,} events to {prefix}* ...")
            took = produce_backlog(self.bootstrap, self.factory, n, prefix, partitions=self.args.partitions)
            say(f"  produced in {took:.1f}s ({n / took:,.0f}/s)")
            self.backlogs[prefix] = n
        return prefix

    def group(self, worker: str, scenario: str) -> str:
        return f"bench-{self.run_id}-{scenario}-{worker}"


def export_tree(rev: str, workdir: Path) -> Path:
    """``connector/`` and ``schemas/`` of git revision ``rev``, exported under the work directory;
    ``python -m connector`` started there runs that code (the current directory comes first)."""
    out = workdir / f"code-{rev}"
    if not out.exists():
        out.mkdir(parents=True)
        # schemas/ moved into connector/ (package data) in 35a5630: export it only where it exists.
        top = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev], capture_output=True,
                             text=True, check=True).stdout.split()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *(p for p in ("connector", "schemas")
                                                                          if p in top)],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


# == scenarios =============================================================================
def run_backlog(ctx: Context, worker_name: str, scenario: str, prefix: str, n: int, emulator: Emulator,
                latency_ms: float = 0.0) -> RunResult:
    res = RunResult(worker_name, scenario, n)
    res.extra["calib_ms"] = busy_box()["calib_ms"]
    res.extra["latency_ms"] = latency_ms
    emulator.reset()
    if latency_ms:
        emulator.faults(latency_ms=latency_ms)
    w: Worker = WORKERS[worker_name](ctx, ctx.group(worker_name, scenario), prefix, emulator)
    say(f"{scenario}: {worker_name} draining {n:,} events"
        + (f" with {latency_ms:.0f} ms added inlet latency" if latency_ms else "") + " ...")
    w.start()
    assert w.proc is not None
    res.launch = w.launch
    others = {"broker": ctx.broker_pid, "emulator": emulator.proc.pid}
    metrics_url = f"http://127.0.0.1:{w.metrics_port}/metrics" if isinstance(w, Ours) else None
    watcher = Watcher(emulator, w.proc.pid, others=others, metrics_url=metrics_url)
    watcher.start()
    memory = MemoryPeak(w.proc.pid)
    memory.start()
    try:
        done = w.wait_acked(n, ctx.args.run_timeout)
        if done:
            res.peak_rss_mb = memory.stop()
            res.extra["peak_pss_by_process_mb"] = memory.peak_parts
            time.sleep(0.15)  # let the watcher see the final count
        else:
            res.problems.append("worker exited early" if not w.alive() else
                                f"not all acknowledged within {ctx.args.run_timeout:.0f}s (got {w.acked()})")
    finally:
        watcher.stop()
        memory.stop()
    stats = emulator.stats()
    first, last = watcher.first_ack(), watcher.last_ack()
    if done and first and last:
        res.first_ack, cpu_first = first
        res.last_ack, res.cpu_s, _ = last
        res.cpu_steady_s = res.cpu_s - cpu_first
        res.extra.update(watcher.utilization(res.first_ack, res.last_ack))
    res.requests = stats["batch_requests"]
    res.messages = stats["messages_accepted"]
    res.bytes = stats["bytes_received"]
    res.max_request_bytes = stats["max_request_bytes"]
    res.duplicates = stats["duplicate_ids"]
    if watcher.rss:
        t0 = res.launch
        step = max(1, len(watcher.rss) // 12)
        res.extra["rss_curve_mb"] = [(round(t - t0), round(mb)) for t, mb in watcher.rss[::step]]
    _checks(w, res, stats)
    if latency_ms:
        emulator.faults(latency_ms=0)
    if ctx.args.verify_commits and worker_name == "ours" and done:
        time.sleep(1.5)  # auto.commit.interval (1 s) so the stored offsets reach the broker
    code = w.stop()
    res.extra["exit_code"] = code
    if code not in (0, None) and worker_name == "ours":
        res.problems.append(f"connector exited with {code}")
    if ctx.args.verify_commits and worker_name == "ours" and done:
        behind = committed_behind(ctx.bootstrap, w.group, prefix)
        res.extra["partitions_not_committed_to_end"] = len(behind)
        if behind:
            res.problems.append(f"committed offsets behind the end on {len(behind)} partitions: {behind}")
    res.ok = done and not res.problems
    say(f"  {worker_name}: {summary_line(res)}"
        + (f"; mean inlet request {res.extra['mean_request_ms']} ms" if "mean_request_ms" in res.extra else ""))
    say_utilization(res)
    return res


def say_utilization(res: RunResult) -> None:
    """The lines under a run's summary: memory, each process's CPU, each pipeline's loop, lanes."""
    if "rss_curve_mb" in res.extra:
        say(f"    memory (s, MB PSS of the process tree): {res.extra['rss_curve_mb']}")
    if res.extra.get("peak_pss_by_process_mb"):
        say(f"    peak PSS by process (MB): {res.extra['peak_pss_by_process_mb']}")
    if "cpu_share" in res.extra:
        pin = res.extra.get("connector_cpus")
        say(f"    CPU share while draining (cores): {res.extra['cpu_share']}"
            + (f"; the connector may use {pin} CPU(s)" if pin else ""))
        for proc, roles in res.extra.get("threads", {}).items():
            say(f"    {proc} by thread (cores): {roles}")
        for pipe, p in res.extra.get("pipelines", {}).items():
            say(f"    pipeline {pipe} (fraction of the drain): input idle {p.get('input_wait', 0):.0%}, held "
                f"{p.get('held', 0):.0%}, working {p.get('working', 0):.0%}; {p.get('cpu', 0):.2f} of a core")
        if res.extra.get("loop"):
            say(f"    pipeline loops (mean fraction of the drain; gauges summed): {res.extra['loop']}")
        if res.extra.get("bound_by"):
            say(f"    bound by: {res.extra['bound_by']}")
        if res.extra.get("lane_states"):
            say(f"    request lanes (mean fraction of the drain): {res.extra['lane_states']}; blocked by lane "
                f"(pipeline/lane) {res.extra.get('lane_blocked')}; records by lane "
                f"{res.extra.get('lane_records_share')}")
        if res.extra.get("inflight_dist"):
            say(f"    batches in flight (per pipeline): mean {res.extra['inflight_mean']}, time at n: "
                f"{res.extra['inflight_dist']}")


def _checks(w: Worker, res: RunResult, stats: dict[str, Any]) -> None:
    if not w.alive():
        return
    try:
        w.checks(res, stats)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        res.problems.append(f"could not read the worker's counters: {exc}")


def run_steady(ctx: Context, worker_name: str, emulator: Emulator, rate: float, base: int) -> RunResult:
    """A fresh topic fed at a steady rate; latency from record birth to the inlet. ``base``: the
    first record index (distinct eventIds per run)."""
    assert ctx.factory is not None
    seconds = ctx.args.steady_seconds
    total = int(rate * seconds)
    scenario = f"steady{rate:.0f}"
    res = RunResult(worker_name, scenario, total)
    prefix = f"bench.{ctx.run_id}.{scenario}-{worker_name}."
    from connector.dev.produce import ensure_topics

    ensure_topics(ctx.bootstrap, all_topics(prefix), ctx.args.partitions)
    emulator.reset()
    w: Worker = WORKERS[worker_name](ctx, ctx.group(worker_name, scenario), prefix, emulator)
    say(f"steady: {worker_name} at {rate:,.0f} events/s for {seconds:.0f}s ...")
    w.start()
    assert w.proc is not None
    res.launch = w.launch
    warmup = 500
    produce_backlog(ctx.bootstrap, ctx.factory, warmup, prefix, ctx.args.partitions, start=base)
    if not w.wait_acked(warmup, 120):
        res.problems.append("warm-up records not acknowledged")
        w.stop()
        res.ok = False
        return res
    w.baseline_messages = w.sent_messages()
    if isinstance(w, Ours):
        w.baseline_merged = w.merged_messages()
    emulator.reset()
    cpu0 = cpu_seconds(w.proc.pid)
    memory = MemoryPeak(w.proc.pid)
    memory.start()
    producer = PacedProducer(ctx.bootstrap, ctx.factory, prefix, rate, seconds, base + warmup)
    producer.start()
    producer.join(seconds + 60)
    res.cpu_steady_s = cpu_seconds(w.proc.pid) - cpu0  # over the paced window (the whole process tree)
    try:
        behind = warmup + producer.produced - w.acked()
    except (httpx.HTTPError, OSError, ValueError):
        behind = -1
    res.extra["backlog_when_producer_stopped"] = behind
    if behind > rate * 2:
        res.extra["fell_behind"] = True  # saturated: latency grew through the run
    done = w.wait_acked(warmup + producer.produced, max(60.0, behind / 1000 + 60))
    res.peak_rss_mb = memory.stop()
    res.extra["peak_pss_by_process_mb"] = memory.peak_parts
    if not done:
        res.problems.append(f"not all acknowledged after the producer stopped (got {w.acked()})")
    stats = emulator.stats()
    res.requests, res.messages, res.bytes = stats["batch_requests"], stats["messages_accepted"], stats["bytes_received"]
    res.max_request_bytes, res.duplicates = stats["max_request_bytes"], stats["duplicate_ids"]
    res.extra["producer_behind_s"] = round(producer.behind_s, 3)
    res.extra["produced"] = producer.produced
    _checks(w, res, stats)
    code = w.stop()
    res.extra["exit_code"] = code
    lat: list[float] = []
    start_ms = producer.started_ms
    for m in emulator.messages():
        entity = m["envelope"]["body"]["xdmEntity"]
        ts = entity.get("timestamp")
        if "eventType" not in entity or not isinstance(ts, str):
            continue
        born = iso_to_ms(ts)
        if born >= start_ms:
            lat.append(m["receivedTimeMs"] - born)
    lat.sort()
    res.latency_samples = len(lat)
    if lat:
        res.p50_ms, res.p99_ms = percentile(lat, 0.5), percentile(lat, 0.99)
        res.p999_ms, res.max_ms = percentile(lat, 0.999), lat[-1]
    if len(lat) < 0.9 * producer.produced:
        res.problems.append(f"only {len(lat)} latency samples for {producer.produced} events")
    # Throughput figures of a paced run are the producer's; report the window anyway.
    res.first_ack, res.last_ack = 0.0, float(seconds)
    res.ok = done and not res.problems
    say(f"  {worker_name}: p50 {res.p50_ms} ms, p99 {res.p99_ms} ms, p99.9 {res.p999_ms} ms, max {res.max_ms} ms "
        f"over {len(lat):,} events; {res.mean_request_messages:.0f} msgs/request; "
        f"CPU {res.cpu_steady_s / seconds * 100:.0f}% of a core"
        + (f"; mean inlet request {res.extra['mean_request_ms']} ms" if "mean_request_ms" in res.extra else "")
        + f"; problems: {res.problems or 'none'}")
    return res


def run_ceiling(ctx: Context, prefix: str, n: int) -> RunResult:
    assert ctx.emulator is not None
    res = RunResult("ceiling", "ceiling", n)
    group = ctx.group("ceiling", "ceiling")
    cfg = ctx.workdir / f"ceiling-{group}.toml"
    # Authentication off and an unused inlet address: the ceiling never sends a request.
    cfg.write_text(connector_toml(bootstrap=ctx.bootstrap, emulator_url=ctx.emulator.url, prefix=prefix,
                                  group=group, metrics_port=None, authenticated=False,
                                  dcs_url="http://127.0.0.1:9"))
    say(f"ceiling: the pipeline in-process without HTTP on {n:,} events ...")
    res.launch = time.monotonic()
    out = subprocess.run([PY, str(ROOT / "bench" / "ceiling.py"), "--config", str(cfg), "--events", str(n),
                          "--timeout", str(ctx.args.run_timeout)],
                         capture_output=True, text=True, timeout=ctx.args.run_timeout + 60, cwd=str(ROOT))
    (ctx.workdir / "ceiling.log").write_text(out.stderr)
    try:
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        res.ok = False
        res.problems.append(f"ceiling run failed: {out.stderr[-500:]}")
        return res
    if doc.get("last_ack") is None:
        res.ok = False
        res.problems.append(f"ceiling run did not finish: {doc}")
        return res
    res.first_ack, res.last_ack = doc["first_ack"], doc["last_ack"]
    res.cpu_s, res.cpu_steady_s = doc["cpu"], doc["cpu"] - doc["cpu_first"]
    res.peak_rss_mb = doc["peak_rss_mb"]
    res.requests, res.messages, res.bytes, res.max_request_bytes = (doc["requests"], doc["messages"], doc["bytes"],
                                                                     doc["max_bytes"])
    say(f"  ceiling: {summary_line(res)}")
    return res


def run_emulator_alone(ctx: Context) -> dict[str, Any]:
    say("emulator alone: python -m connector.dev.emulator.bench --requests 200 --concurrency 4 ...")
    out = subprocess.run([PY, "-m", "connector.dev.emulator.bench", "--requests", "200", "--concurrency", "4"],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    text = out.stdout + out.stderr
    (ctx.workdir / "emulator-bench.log").write_text(text)
    doc: dict[str, Any] = {"ok": out.returncode == 0, "output": text.strip().splitlines()[-2:]}
    m = re.search(r"([\d,]+) messages/s, ([\d.]+) requests/s", text)
    if m:
        doc["messages_per_s"] = int(m.group(1).replace(",", ""))
        doc["requests_per_s"] = float(m.group(2))
    m = re.search(r"= ([\d.]+) us/message; one core would sustain ~([\d,]+)", text)
    if m:
        doc["cpu_us_per_message"] = float(m.group(1))
        doc["one_core_messages_per_s"] = int(m.group(2).replace(",", ""))
    say(f"  emulator alone: {doc.get('messages_per_s')} messages/s, {doc.get('cpu_us_per_message')} µs CPU/message")
    return doc


def committed_behind(bootstrap: str, group: str, prefix: str) -> dict[str, tuple[int, int]]:
    """Partitions whose committed offset is short of the end (ends read back: tansu's high
    watermark is approximate)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = c.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in all_topics(prefix) if t in meta for p in meta[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()
    r = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group}-ends", "enable.auto.commit": False})
    ends = dict.fromkeys(committed, 0)
    try:
        r.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in committed])
        idle = time.monotonic()
        deadline = idle + 120
        while time.monotonic() - idle < 1.5 and time.monotonic() < deadline:
            msgs = r.consume(5000, 0.2)
            if msgs:
                idle = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    key = (m.topic(), m.partition())
                    ends[key] = max(ends[key], m.offset() + 1)
    finally:
        r.close()
    return {f"{t}[{p}]": (committed[(t, p)], e) for (t, p), e in ends.items() if e > max(committed[(t, p)], 0)}


# == report ================================================================================
def summary_line(r: RunResult) -> str:
    return (f"{r.steady_rate:,.0f} events/s steady ({r.rate_with_startup:,.0f} with start-up), "
            f"{r.cpu_per_1k:.3f} CPU s/1k, peak memory {r.peak_rss_mb:.0f} MB, "
            f"{r.mean_request_messages:.0f} msgs / {r.mean_request_kb:.0f} KB per request "
            f"(max {r.max_request_bytes / 1000:.0f} KB), {r.requests_per_s:.1f} req/s; "
            f"problems: {r.problems or 'none'}")


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None or v != v:
        return "—"
    return f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}"


def report(results: dict[str, Any]) -> str:
    """The figures against their targets: ours, the ``--base-code`` build (when run) and the peer side
    by side, with the ratios."""
    rows: list[tuple[str, str, str, str, str]] = []  # label, ours, base, peer, target
    ratios: list[tuple[str, str]] = []  # ours/base, ours/peer
    R = results.get("runs", {})  # noqa: N806

    def get(key: str) -> RunResult | None:
        return R.get(key)

    def add(label: str, ours: float | None, peer: float | None, target: str, digits: int = 0,
            base: float | None = None) -> None:
        rows.append((label, fmt(ours, digits), fmt(base, digits), fmt(peer, digits), target))
        ratios.append((ratio(ours, base), ratio(ours, peer)))

    def text(label: str, ours: str, base: str = "", peer: str = "", target: str = "") -> None:
        rows.append((label, ours, base, peer, target))
        ratios.append(("", ""))

    def v(r: RunResult | None, attr: str) -> Any:
        return getattr(r, attr) if r else None

    for scen, label in (("rate", f"backlog {results['args']['events']:,}"),
                        ("smoke", f"smoke backlog {results['args']['events']:,}")):
        o, p, b = get(f"{scen}/ours"), get(f"{scen}/peer"), get(f"{scen}/base")
        if not o and not p:
            continue
        add(f"{label}: steady events/s (first→last ack)", v(o, "steady_rate"), v(p, "steady_rate"), "≥ 2.5× peer",
            base=v(b, "steady_rate"))
        add(f"{label}: events/s incl. start-up", v(o, "rate_with_startup"), v(p, "rate_with_startup"), "",
            base=v(b, "rate_with_startup"))
        add(f"{label}: CPU s per 1k events", v(o, "cpu_per_1k"), v(p, "cpu_per_1k"), "≤ 0.07 and ≤ 0.5× peer", 3,
            base=v(b, "cpu_per_1k"))
        add(f"{label}: connector CPUs in use (cores)", cpu_tree(o), cpu_tree(p), "", 2, base=cpu_tree(b))
        add(f"{label}: box CPUs in use (cores)", cpu_box(o), cpu_box(p), "", 2, base=cpu_box(b))
        if (o and o.extra.get("pipelines")) or (b and b.extra.get("pipelines")):
            text(f"{label}: pipelines: input idle / held / cores", pipelines_cell(o), pipelines_cell(b), "",
                 "idle → input-bound, held → delivery-bound")
            text(f"{label}: bound by", (o.extra.get("bound_by") or "—") if o else "—",
                 (b.extra.get("bound_by") or "—") if b else "")
        add(f"{label}: peak memory MB (PSS)", v(o, "peak_rss_mb"), v(p, "peak_rss_mb"), "", base=v(b, "peak_rss_mb"))
        add(f"{label}: mean request, messages", v(o, "mean_request_messages"), v(p, "mean_request_messages"), "",
            base=v(b, "mean_request_messages"))
        add(f"{label}: mean request, KB", v(o, "mean_request_kb"), v(p, "mean_request_kb"), "≥ 500",
            base=v(b, "mean_request_kb"))
        add(f"{label}: max request, KB", o.max_request_bytes / 1000 if o else None,
            p.max_request_bytes / 1000 if p else None, "≤ 1,048", base=b.max_request_bytes / 1000 if b else None)
        add(f"{label}: requests/s", v(o, "requests_per_s"), v(p, "requests_per_s"), "", 1, base=v(b, "requests_per_s"))
    c, o = get("ceiling"), get("rate/ours") or get("smoke/ours")
    if c:
        add("ceiling (no HTTP): steady events/s", c.steady_rate, None, "")
        if o:
            text("end-to-end / ceiling", f"{o.steady_rate / c.steady_rate:.2f}" if c.steady_rate else "—",
                 target="≥ 0.75")
    for ms in results["args"]["latencies"]:
        for key in sorted({k.split("/")[0] for k in R if k.startswith(f"latency{ms:g}")}):
            o, p, b = get(f"{key}/ours"), get(f"{key}/peer"), get(f"{key}/base")
            tag = key.removeprefix(f"latency{ms:g}")
            add(f"+{ms:.0f} ms inlet latency{tag}: steady events/s", v(o, "steady_rate"), v(p, "steady_rate"), "",
                base=v(b, "steady_rate"))
            add(f"+{ms:.0f} ms inlet latency{tag}: CPU s per 1k events", v(o, "cpu_per_1k"), v(p, "cpu_per_1k"), "",
                3, base=v(b, "cpu_per_1k"))
    for r in results["args"]["steady_rates"]:
        o, p, b = get(f"steady{r:.0f}/ours"), get(f"steady{r:.0f}/peer"), get(f"steady{r:.0f}/base")
        if not o and not p:
            continue
        add(f"steady {r:,.0f}/s: p50 record→inlet ms", v(o, "p50_ms"), v(p, "p50_ms"), "", base=v(b, "p50_ms"))
        add(f"steady {r:,.0f}/s: p99 record→inlet ms", v(o, "p99_ms"), v(p, "p99_ms"),
            "< 150" if r == 2500 else "", base=v(b, "p99_ms"))
        secs = results["args"]["steady_seconds"]
        pct = [x.cpu_steady_s / secs * 100 if x else None for x in (o, p, b)]
        add(f"steady {r:,.0f}/s: connector CPU, % of a core", pct[0], pct[1], "", base=pct[2])
        add(f"steady {r:,.0f}/s: peak memory MB (PSS)", v(o, "peak_rss_mb"), v(p, "peak_rss_mb"), "",
            base=v(b, "peak_rss_mb"))
        if any(x is not None and x.extra.get("fell_behind") for x in (o, p, b)):
            def kept(x: RunResult | None) -> str:
                return "—" if x is None else "no" if x.extra.get("fell_behind") else "yes"

            text(f"steady {r:,.0f}/s: kept up with the producer?", kept(o), kept(b) if b else "", kept(p),
                 "no = saturated, latency grows")
    o, p, b = get("drain/ours"), get("drain/peer"), get("drain/base")
    if o or p:
        n = results["args"]["drain_events"]
        add(f"drain {n:,}: peak memory MB (PSS, whole tree)", v(o, "peak_rss_mb"), v(p, "peak_rss_mb"), "< 250",
            base=v(b, "peak_rss_mb"))
        if o and o.extra.get("peak_pss_by_process_mb"):
            text(f"drain {n:,}: at the peak, by process (MB)", pss_cell(o), pss_cell(b) if b else "")
        add(f"drain {n:,}: steady events/s", v(o, "steady_rate"), v(p, "steady_rate"), "", base=v(b, "steady_rate"))
        add(f"drain {n:,}: mean request, KB", v(o, "mean_request_kb"), v(p, "mean_request_kb"), "≥ 500",
            base=v(b, "mean_request_kb"))
    e = results.get("emulator_alone")
    if e:
        o = get("rate/ours") or get("smoke/ours")
        need = o.messages / (o.last_ack - o.first_ack) if o and o.last_ack > o.first_ack else None
        text("emulator alone: messages/s (ours needed)", fmt(e.get("messages_per_s")), peer=fmt(need),
             target="emulator ≫ need")
    with_base = any(k.endswith("/base") for k in R)
    head = ["row", "ours", *(["base", "ours/base"] if with_base else []), "peer", "ours/peer", "target"]
    table = [[lb, o_, *([b_, rb] if with_base else []), p_, rp, t]
             for (lb, o_, b_, p_, t), (rb, rp) in zip(rows, ratios, strict=True)]
    w = [max(len(x[i]) for x in [*table, head]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |",
             "|" + "|".join("-" * (w[i] + 2) for i in range(len(head))) + "|"]
    for x in table:
        lines.append("| " + " | ".join((x[i].ljust(w[i]) if i == 0 else x[i].rjust(w[i])) for i in range(len(head)))
                     + " |")
    return "\n".join(lines)


def cpu_tree(r: RunResult | None) -> float | None:
    """Cores our connector's processes used while draining (the peer: its one process)."""
    share = r.extra.get("cpu_share", {}) if r else {}
    return share.get("connector_tree") if "connector_tree" in share else (r.cpu_steady_s / (r.last_ack - r.first_ack)
                                                                         if r and r.last_ack > r.first_ack else None)


def cpu_box(r: RunResult | None) -> float | None:
    return r.extra.get("cpu_share", {}).get("box") if r else None


def pipelines_cell(r: RunResult | None) -> str:
    """``idle/held/cores`` of each pipeline, ``0: 5%/0%/0.93 · 1: …``."""
    if r is None or not r.extra.get("pipelines"):
        return "—"
    return " · ".join(f"{i}: {p.get('input_wait', 0):.0%}/{p.get('held', 0):.0%}/{p.get('cpu', 0):.2f}"
                      for i, p in r.extra["pipelines"].items())


def pss_cell(r: RunResult) -> str:
    return " · ".join(f"{k} {mb:.0f}" for k, mb in r.extra.get("peak_pss_by_process_mb", {}).items())


def run_table(results: dict[str, Any]) -> str:
    """One line per backlog run, in the order run: the rate beside its utilization and calibration."""
    head = ("run", "+ms", "events/s", "CPU s/1k", "req", "msg/req", "in flight", "lanes idle/fill/send/blocked",
            "pipes", "idle", "held", "own cores", "CPUs", "box cores", "calib ms", "PSS MB")
    rows = []
    for key, r in results["runs"].items():
        if r.scenario.startswith("steady") or r.worker == "ceiling":
            continue
        ls = r.extra.get("lane_states")
        rows.append((key, fmt(r.extra.get("latency_ms")), fmt(r.steady_rate), fmt(r.cpu_per_1k, 3), fmt(r.requests),
                     fmt(r.mean_request_messages), fmt(r.extra.get("inflight_mean"), 2),
                     "/".join(f"{ls[s]:.2f}" for s in ("idle", "filling", "sending", "blocked")) if ls else "—",
                     fmt(len(r.extra["pipelines"]) if r.extra.get("pipelines") else None),
                     fmt(r.extra.get("loop", {}).get("input_wait"), 2), fmt(r.extra.get("loop", {}).get("held"), 2),
                     fmt(cpu_tree(r), 2), fmt(r.extra.get("connector_cpus")),
                     fmt(r.extra.get("cpu_share", {}).get("box"), 2), fmt(r.extra.get("calib_ms")), fmt(r.peak_rss_mb)))
    w = [max(len(x[i]) for x in [*rows, head]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |",
             "|" + "|".join("-" * (w[i] + 2) for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(x[i].ljust(w[i]) if i == 0 else x[i].rjust(w[i]) for i in range(len(head))) + " |"
              for x in rows]
    return "\n".join(lines)


# == main ==================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="all")
    ap.add_argument("--events", type=int, default=None, help="backlog size (default 200000; smoke 20000)")
    ap.add_argument("--drain-events", type=int, default=1_000_000)
    ap.add_argument("--drain-peer", action="store_true", help="also run the peer on the drain backlog")
    ap.add_argument("--steady-rate", default="5000,2500",
                    help="events/s of the steady mode; a comma list runs each (default 5000,2500)")
    ap.add_argument("--steady-seconds", type=float, default=20)
    ap.add_argument("--latency-ms", default="50",
                    help="inlet latency of the latency mode, ms; a comma list runs each (e.g. 0,50,150)")
    ap.add_argument("--rounds", type=int, default=1, help="latency mode: repeat the list this many times")
    ap.add_argument("--base-code", default=None, metavar="REV",
                    help="rate and latency modes: also run our connector from git revision REV, before ours")
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    ap.add_argument("--peer-commit-interval", type=float, default=1.0)
    ap.add_argument("--partitions", type=int, default=4, help="partitions per topic (6 topics)")
    ap.add_argument("--json-share", type=float, default=0.5, help="share of events encoded as JSON (rest Avro)")
    ap.add_argument("--template-pool", type=int, default=50_000, help="distinct encoded events to cycle through")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--run-timeout", type=float, default=None, help="bound per worker run (default from N)")
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    ap.add_argument("--ours-toml", default="",
                    help="TOML merged into our connector's config, e.g. 'processing.processes = 1' (a key given "
                         "wins; tables the bench writes may be named again)")
    ap.add_argument("--base-toml", default="", help="TOML merged into the --base-code connector's config (not ours), "
                                                     "e.g. 'processing.workers = 0'")
    ap.add_argument("--cpus", type=int, default=None, metavar="N",
                    help="pin both connectors (ours and --base-code, not the broker, emulator or peer) to N CPUs "
                         "(taskset -c): processing.processes = \"auto\" (and the old workers) resolve to N")
    ap.add_argument("--ours-cpus", type=int, default=None, metavar="N", help="pin our connector to N CPUs")
    ap.add_argument("--base-cpus", type=int, default=None, metavar="N", help="pin the --base-code connector to N CPUs")
    ap.add_argument("--drain-base", action="store_true", help="also run the --base-code connector on the drain backlog")
    ap.add_argument("--ours-env", action="append", default=[], metavar="K=V",
                    help="extra environment for our connector (experiments; repeatable)")
    ap.add_argument("--ours-code", default=None, metavar="REV",
                    help="run our connector from git revision REV (before/after comparisons; not the ceiling)")
    ap.add_argument("--profile", action="store_true",
                    help="attach py-spy to our connector (collapsed stacks in the work directory)")
    ap.add_argument("--workdir", default=None, help="logs and configs (default: a new temp directory)")
    args = ap.parse_args(argv)
    if args.events is None:
        args.events = 20_000 if args.mode == "smoke" else 200_000
    if args.run_timeout is None:
        # 1,000 events/s at least: the peer drains ~1.6–3.5k events/s on a slow 2-core box.
        args.run_timeout = max(120.0, max(args.events, args.drain_events if args.mode in ("all", "drain") else 0)
                               / 1000)
    args.ours_cpus = args.ours_cpus or args.cpus
    args.base_cpus = args.base_cpus or args.cpus
    args.verify_commits = args.mode == "smoke"
    args.steady_rates = [float(x) for x in str(args.steady_rate).split(",") if x.strip()]
    args.latencies = [float(x) for x in str(args.latency_ms).split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capillary-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = Context(args, workdir)
    mode = args.mode
    peers = [] if args.no_peer or mode == "smoke" else ["peer"]
    results: dict[str, Any] = {"machine": machine(), "box_before": busy_box(), "command": " ".join(sys.argv),
                               "args": dict(vars(args)), "runs": {}}
    say(f"machine: {results['machine']}; load: {results['box_before']}")
    started = time.monotonic()
    ok = True
    try:
        if mode == "emulator":
            results["emulator_alone"] = run_emulator_alone(ctx)
        else:
            ctx.setup()
            assert ctx.emulator is not None
            runs: dict[str, RunResult] = results["runs"]
            if mode in ("all", "rate", "peer", "latency", "ceiling", "smoke"):
                prefix = ctx.backlog("backlog", args.events)
                if mode in ("all", "ceiling"):
                    runs["ceiling"] = run_ceiling(ctx, prefix, args.events)
                if mode in ("all", "rate", "smoke"):
                    scen = "smoke" if mode == "smoke" else "rate"
                    if ctx.base_code is not None and mode != "smoke":
                        runs[f"{scen}/base"] = run_backlog(ctx, "base", scen, prefix, args.events, ctx.emulator)
                    runs[f"{scen}/ours"] = run_backlog(ctx, "ours", scen, prefix, args.events, ctx.emulator)
                if mode in ("all", "rate", "peer") and (peers or mode == "peer"):
                    runs["rate/peer"] = run_backlog(ctx, "peer", "rate", prefix, args.events, ctx.emulator)
                if mode in ("all", "latency"):
                    names = [*(["base"] if ctx.base_code is not None else []), "ours", *peers]
                    for rnd in range(args.rounds):
                        for ms in args.latencies:
                            scen = f"latency{ms:g}" + (f"-r{rnd + 1}" if args.rounds > 1 else "")
                            for wn in names:
                                runs[f"{scen}/{wn}"] = run_backlog(ctx, wn, scen, prefix, args.events, ctx.emulator,
                                                                   latency_ms=ms)
            if mode in ("all", "steady"):
                em2 = Emulator(ctx.procs, "emulator-steady", store_bodies=True)
                say(f"emulator for the steady runs on {em2.url} (--store-bodies: per-message receipt times)")
                base = 10_000_000  # record indexes of the steady runs (distinct eventIds from the backlogs)
                for r in args.steady_rates:
                    for wn in [*(["base"] if ctx.base_code is not None else []), "ours", *peers]:
                        runs[f"steady{r:.0f}/{wn}"] = run_steady(ctx, wn, em2, r, base)
                        base += 1_000_000
                ctx.procs.stop(em2.proc)
            if mode in ("all", "drain"):
                prefix = ctx.backlog("drain", args.drain_events)
                for wn in [*(["base"] if ctx.base_code is not None and args.drain_base else []), "ours",
                           *(peers if args.drain_peer else [])]:
                    runs[f"drain/{wn}"] = run_backlog(ctx, wn, "drain", prefix, args.drain_events, ctx.emulator)
            ctx.procs.stop_all()
            if mode == "all":
                results["emulator_alone"] = run_emulator_alone(ctx)
            ok = all(r.ok for r in runs.values())
    finally:
        ctx.procs.stop_all()
    results["box_after"] = busy_box()
    results["wall_s"] = round(time.monotonic() - started, 1)
    table = report(results)
    print("\n== capillary-aep-connector benchmark ==")
    print(f"machine: {results['machine']}")
    print(f"box load before/after: {results['box_before']} / {results['box_after']} "
          "(calib_ms ≈ 80-100 on an idle core)")
    print(f"command: {results['command']}   wall time: {results['wall_s']}s   logs: {workdir}")
    print(table)
    print(run_table(results))
    for key, r in results["runs"].items():
        if r.problems:
            print(f"✗ {key}: {'; '.join(r.problems)}")
    if args.json:
        out = {**results, "runs": {k: r.as_dict() for k, r in results["runs"].items()}, "table": table}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"figures written to {args.json}")
    print("✓ all runs complete, no events lost" if ok else "✗ a run failed or lost events (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
