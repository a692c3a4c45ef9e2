"""Worker processes that run decode → transform → encode (connector.process) on chunks of record values.

These three stages are the CPU cost of the connector (~100 µs per event on a 2.8 GHz core; the rest of
the pipeline ~15 µs) and they hold the GIL, so threads cannot share them. With ``processing.workers
= N`` they run in N child processes: the consumer thread ships record values out and gets encoded
XDM messages back (pickled bytes: a few µs per record), while offsets, batching, HTTP and the DLQ
stay on the parent, where the consumer lives.

Order and state: a partition is served by one worker at a time (``connector.placement`` moves it
only once its old worker has answered every chunk holding it) and each worker answers its chunks
in order, so per-partition order is kept; the transform's program cache is per worker (as it is
per replica). A chunk's outcomes carry everything the parent needs to batch or dead-letter the
record; the parent drops outcomes of partitions revoked meanwhile (epochs, see ``offsets``).

A worker that dies (OOM kill, a crash in a C extension) is restarted and its outstanding chunks are
sent again, the one it was on split until the record that kills it is found and dead-lettered
(connector/isolation.py). A worker says when it is ready; if workers die before that
``_MAX_CRASHES`` times within ``_CRASH_WINDOW_S`` (they cannot start: no record is to blame),
:class:`WorkerCrashed` stops the connector without committing the records concerned (a crash loop
is then visible to the orchestrator instead of silently spinning).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import math
import multiprocessing as mp
import os
import pickle
import queue
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from connector.errors import Stage, WorkerCrashed
from connector.heap import HeapTrimmer, tune_malloc
from connector.isolation import Isolation, describe_exit
from connector.metrics import METRICS
from connector.process import Empty, Encoded, Outcome, ProcessorSpec, RecordProcessor, Rejected
from connector.thread_names import name_os_thread

log = logging.getLogger(__name__)

_PIPE_BYTES = 4 << 20  # a chunk each way fits: neither side waits for the other to read
_MAX_CRASHES = 3
_CRASH_WINDOW_S = 60.0
_STOP_TIMEOUT_S = 5.0
# The one consumer process spends ~60 µs per event (bench/run.py's per-process shares: ~0.4 core at
# 6–7k events/s) and a worker ~125 µs: the consumer is saturated when about two cores of workers
# are busy. Four leave headroom; more would idle (~35–40 MB each) — more cores want more replicas.
MAX_AUTO_WORKERS = 4


# Outcomes cross the pipes as (kind, plain tuple): a NamedTuple pickles through its Python-level
# __getnewargs__ and __new__, ~3.9 µs a record both ways against ~1.3 for a plain tuple rebuilt
# with tuple.__new__ (in C).
_KINDS: tuple[type, ...] = (Encoded, Empty, Rejected)
_KIND_NO = {kind: no for no, kind in enumerate(_KINDS)}


def pack(outcomes: list[Outcome]) -> list[tuple[int, tuple[Any, ...]]]:
    kind_no = _KIND_NO
    return [(kind_no[type(o)], tuple(o)) for o in outcomes]


def unpack(packed: list[tuple[int, tuple[Any, ...]]]) -> list[Outcome]:
    new, kinds = tuple.__new__, _KINDS
    return [new(kinds[k], fields) for k, fields in packed]


# == worker processes ===========================================================================

def _worker_main(inbox: Connection, outbox: Connection, spec: ProcessorSpec) -> None:
    # The parent owns shutdown: a Ctrl-C or SIGTERM to the process group must not kill a worker
    # while the parent drains. A parent that dies closes the pipe, and the worker ends on EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_malloc()
    name_os_thread(mp.current_process().name)  # "transform-N": the process's name in top and ps
    sys.setswitchinterval(0.001)  # the receiving thread gets the GIL back quickly after each read
    from connector.logs import setup_logging

    setup_logging(spec.log_level, spec.log_format)
    # Writer schemas come with the chunks that need them (the parent asks the registry): a worker
    # does no I/O, and a registry outage is handled where the consumer is.
    schemas: dict[int, str | None] = {}
    processor = RecordProcessor(spec, schemas.get if spec.decode.schema_registry_url else None)
    limit_memory(spec.memory_limit_mb)
    try:
        outbox.send_bytes(_READY)  # from here on, a death is blamed on the chunk we are on
    except (BrokenPipeError, OSError):
        return
    # Chunks are read on a thread so the parent's send never waits for us to finish a chunk while
    # we wait for it to read our answer (two blocked writers on two full pipes).
    chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def receive() -> None:
        name_os_thread()
        try:
            while True:
                chunks.put(inbox.recv_bytes())
        except (EOFError, OSError, MemoryError):  # the parent left, or no memory for a chunk under the
            chunks.put(None)  # memory limit: end, rather than wait forever (the parent restarts us, re-sends)

    threading.Thread(target=receive, name="receive", daemon=True).start()
    gc.freeze()
    trim = HeapTrimmer()
    while (raw := chunks.get()) is not None:
        seq, values, new_schemas = pickle.loads(raw)
        if new_schemas:
            schemas.update(new_schemas)
        if seq == 0:
            continue  # schemas only (sent to a restarted worker)
        started = time.perf_counter()
        outcomes = processor.run(values)  # no lookup here can fail: schemas come with the chunks
        answer = (seq, pack(outcomes), time.perf_counter() - started)
        try:
            outbox.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            return
        del raw, values, outcomes, answer
        trim(time.monotonic())


_READY = pickle.dumps((0, None, 0.0), protocol=pickle.HIGHEST_PROTOCOL)  # seq 0: started, no chunk


def limit_memory(allowance_mb: int) -> int | None:
    """Cap this process's address space at what it maps now plus ``allowance_mb`` (RLIMIT_AS), so
    a record that wants more gets MemoryError — a dead letter — instead of growing until the OOM
    killer ends the pod. Address space, not RSS: the forkserver's shared pages count, so the
    allowance is on top of them. Returns the limit in bytes, None if none was set."""
    if allowance_mb <= 0:
        return None
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + (allowance_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (OSError, ValueError) as exc:  # not Linux, or a hard limit already lower: run without ours
        log.warning("cannot limit the worker's memory (%s): running without processing.worker_memory_limit_mb",
                    exc)
        return None
    return limit


def _grow_pipe(conn: Connection) -> None:
    """Linux pipes hold 64 KB: a 500 KB chunk would make the writer wait for the reader's GIL-bound
    thread many times over (seen as the consumer thread blocked in send). Ask for more; the
    system cap (/proc/sys/fs/pipe-max-size, 1 MB by default) applies to unprivileged users."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for size in (_PIPE_BYTES, 1 << 20):
        try:
            fcntl.fcntl(conn.fileno(), set_size, size)
            return
        except OSError:
            continue


class _Worker:
    __slots__ = ("busy", "inbox", "known", "no", "outbox", "outstanding", "process", "ready")

    def __init__(self, no: int, ctx: Any, spec: ProcessorSpec) -> None:
        self.no = no
        in_r, self.inbox = ctx.Pipe(duplex=False)
        self.outbox, out_w = ctx.Pipe(duplex=False)
        _grow_pipe(self.inbox)
        _grow_pipe(self.outbox)
        self.process = ctx.Process(target=_worker_main, args=(in_r, out_w, spec), name=f"transform-{no}",
                                   daemon=True)
        self.process.start()
        in_r.close()
        out_w.close()
        self.outstanding: dict[int, bytes] = {}  # seq → pickled chunk, until answered
        self.ready = False  # said it has started: a death from now on is blamed on its first chunk
        self.known: set[int] = set()  # schema ids this worker was sent
        self.busy = METRICS.worker_busy.labels(str(no))  # time on chunks, as the worker measured it

    def send(self, seq: int, payload: bytes) -> None:
        self.outstanding[seq] = payload
        try:
            self.inbox.send_bytes(payload)
        except OSError:  # it died: collect() sees its pipe close, restarts it and re-sends this
            pass

    def stop(self, timeout: float) -> None:
        try:
            self.inbox.close()
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.outbox.close()


class WorkerPool:
    """N worker processes; ``submit`` a chunk to the worker that owns its partitions, ``collect``
    answers as they come (per worker in submission order)."""

    def __init__(self, workers: int, spec: ProcessorSpec,
                 registry_lookup: Callable[[int], Any] | None = None) -> None:
        # Never fork a process that runs librdkafka threads: workers are forked from a fresh server
        # process that imported this module once, so they start fast and share its pages.
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload([__name__, "connector.process", "connector.decode", "connector.transform.validate",
                                          "connector.preload"])
        self._spec = spec
        self._workers = [_Worker(i, self._ctx, spec) for i in range(workers)]
        self._seq = 0
        self._crashes: list[float] = []  # deaths before ready, within _CRASH_WINDOW_S
        self._isolation = Isolation(self._next_seq)
        self._lookup = registry_lookup
        self._schemas: dict[int, str] = {}  # schema id → writer schema text (or ForeignSchema), as found in the registry

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def submit(self, worker_no: int, values: list[bytes | None]) -> int:
        """Queue a chunk at a worker; raises :class:`RegistryUnavailable` before sending anything
        if a writer schema it needs cannot be fetched."""
        w = self._workers[worker_no]
        new_schemas = self._schemas_for(w, values) if self._lookup is not None else None
        seq = self._next_seq()
        w.send(seq, pickle.dumps((seq, values, new_schemas), protocol=pickle.HIGHEST_PROTOCOL))
        return seq

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _schemas_for(self, w: _Worker, values: list[bytes | None]) -> dict[int, str | None] | None:
        """Writer schemas of the chunk's wire-format records that ``w`` has not been sent yet (None:
        not in the registry, asked again with the next chunk that needs it)."""
        out: dict[int, str | None] | None = None
        known = w.known
        for v in values:
            if v and v[0] == 0 and len(v) >= 5:
                sid = int.from_bytes(v[1:5], "big")
                if sid in known or (out is not None and sid in out):
                    continue
                text = self._schemas.get(sid)
                if text is None:
                    text = self._lookup(sid)  # type: ignore[misc] # _lookup is set: the caller checked
                    if text is not None:
                        self._schemas[sid] = text
                if out is None:
                    out = {}
                out[sid] = text
        if out:
            known.update(sid for sid, text in out.items() if text is not None)
        return out

    @property
    def outstanding(self) -> int:
        return sum(len(w.outstanding) for w in self._workers)

    def pending(self, worker_no: int) -> list[int]:
        """Sequence numbers of the chunks a worker has not answered yet."""
        chunk_of = self._isolation.chunk_of
        return list(dict.fromkeys(chunk_of(seq) for seq in self._workers[worker_no].outstanding))

    def busy(self, worker_no: int) -> int:
        """Chunks sent to a worker and not answered yet."""
        return len(self._workers[worker_no].outstanding)

    def collect(self, timeout: float, on_answer: Callable[[int, list[Outcome]], None]) -> int:
        """Hand every available answer to ``on_answer(seq, outcomes)``; wait up to ``timeout`` for
        the first one. Raises :class:`WorkerCrashed`."""
        busy = {w.outbox: w for w in self._workers if w.outstanding}
        if not busy:
            return 0
        n = 0
        for conn in wait(list(busy), timeout):
            w = busy[conn]  # type: ignore[index] # wait() returns the connections it was given
            while True:
                try:
                    if not conn.poll(0):  # type: ignore[union-attr] # wait() returns the connections it was given
                        break
                    raw = conn.recv_bytes()  # type: ignore[union-attr] # wait() returns the connections it was given
                except (EOFError, OSError):
                    n += self._restart(w, on_answer)
                    break
                seq, packed, busy_s = pickle.loads(raw)
                if seq == 0:
                    w.ready = True
                    continue
                w.outstanding.pop(seq, None)
                w.busy.inc(busy_s)
                n += self._answer(seq, unpack(packed), on_answer)
        return n

    def _answer(self, seq: int, outcomes: list[Outcome], on_answer: Callable[[int, list[Outcome]], None]) -> int:
        whole = self._isolation.answered(seq, outcomes)
        if whole is None:
            return 0  # a piece of a chunk being narrowed down: the chunk is answered once whole
        on_answer(*whole)
        return 1

    def _restart(self, w: _Worker, on_answer: Callable[[int, list[Outcome]], None]) -> int:
        """Replace a dead worker; re-send its chunks, the one it died on split (or, a lone record
        that killed two, answered as ``crashed_processing``). Returns chunks answered."""
        w.stop(0.5)  # reaped: its exit code is known
        how = describe_exit(w.process.exitcode)
        outstanding = list(w.outstanding.items())
        answered = 0
        METRICS.worker_restarts.inc()
        if not w.ready:  # died starting: no record to blame
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < _CRASH_WINDOW_S] + [now]
            if len(self._crashes) >= _MAX_CRASHES:
                raise WorkerCrashed(f"transform workers died {len(self._crashes)} times in "
                                    f"{_CRASH_WINDOW_S:.0f}s before they were ready (last: {how})")
            log.error("transform worker %d died starting (%s); restarting it", w.no, how)
        elif outstanding:
            seq, payload = outstanding.pop(0)
            _, values, _ = pickle.loads(payload)
            if len(values) > 1:
                pieces = self._isolation.split(seq, len(values))
                log.error("transform worker %d died (%s) on a chunk of %d records; restarting it and sending "
                          "the chunk again in halves, to find the record", w.no, how, len(values))
                outstanding[:0] = [(p, pickle.dumps((p, values[a:b], None), protocol=pickle.HIGHEST_PROTOCOL))
                                   for p, a, b in pieces]
            elif self._isolation.strike(seq):
                log.error("a record killed two transform worker processes (last: %s): dead-lettering it as "
                          "crashed_processing", how)
                METRICS.records_crashed.inc()
                answered = self._answer(seq, [Rejected(Stage.PROCESS, "ProcessCrashed", "crashed_processing",
                                                       f"the process processing it died ({how})")], on_answer)
            else:
                log.error("transform worker %d died (%s) holding one record; restarting it and trying the "
                          "record once more", w.no, how)
                outstanding.insert(0, (seq, payload))
        else:
            log.error("transform worker %d died (%s); restarting it", w.no, how)
        fresh = _Worker(w.no, self._ctx, self._spec)
        self._workers[w.no] = fresh
        if self._schemas:  # what its predecessor had been sent, before the chunks that rely on it
            fresh.known.update(self._schemas)
            try:
                fresh.inbox.send_bytes(pickle.dumps((0, [], self._schemas), protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                pass  # died already: seen at the next collect()
        for seq, payload in outstanding:
            fresh.send(seq, payload)
        return answered

    def close(self) -> None:
        for w in self._workers:
            w.stop(_STOP_TIMEOUT_S)


def resolve_workers(setting: int | str, cgroup_root: str = "/sys/fs/cgroup") -> int:
    """``"auto"``: one worker per CPU this process may use, none on a single CPU (the consumer
    thread then does the work itself, with no pickling), and at most ``MAX_AUTO_WORKERS``. A
    container's CPU quota counts: Docker's ``--cpus`` and Kubernetes CPU limits leave every host CPU
    in the affinity mask."""
    if setting != "auto":
        return int(setting)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return 0 if cpus < 2 else min(cpus, MAX_AUTO_WORKERS)


def _cgroup_cpu_quota(root: str) -> float | None:
    """CPUs' worth of the cgroup's CFS quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), None if unlimited."""
    try:
        with open(f"{root}/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(f"{root}/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open(f"{root}/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
