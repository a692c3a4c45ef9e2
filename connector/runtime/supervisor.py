"""One replica, N pipelines: the supervisor forks one process per pipeline and watches them.

The parent has imported everything and frozen it out of the GC before it forks (the children share
those pages copy-on-write); each child builds a whole pipeline of its own (connector.pipeline.loop): its own
consumer-group member, lanes, buffers and share of the send budget. The supervisor

1. forks the children, each with its index, a crash marker (connector.runtime.crash_marker) and the
   board of records suspected of killing a process, shared with all of them;
2. restarts a child that dies by a signal or an unexpected exit: at once when the marker names the
   record it died on (that record is a suspect now), else after a backoff; when children keep dying
   with no record to blame (``MAX_DEATHS`` within ``DEATH_WINDOW_S``) it stops them all with
   ``ExitCode.WORKERS``;
3. stops them all when one stops on its own with a documented exit code (the registry unreachable,
   the dead-letter topic unusable, …): that code is the replica's, as it was with one process;
4. on SIGTERM/SIGINT, passes SIGTERM to every child, which drains and commits within
   ``delivery.drain_timeout_s`` + 5 s; a child still there after that (and a margin) is killed.

It holds no Kafka client and no HTTP client: there is nothing in it to lose.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from socket import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from connector.errors import ExitCode
from connector.runtime.crash_marker import STRIKES, CrashMarker, SuspectBoard
from connector.runtime.heap import load_libc
from connector.runtime.link import ChildLink, listener

log = logging.getLogger(__name__)

# Exit codes a pipeline chooses (connector.errors.ExitCode): the replica stops with the same code.
DELIBERATE = frozenset({ExitCode.CONFIG, ExitCode.REGISTRY, ExitCode.CONSUMER, ExitCode.DLQ, ExitCode.SENDER,
                        ExitCode.INTERNAL})
MAX_DEATHS = 4  # deaths with no record to blame within DEATH_WINDOW_S before the replica gives up
DEATH_WINDOW_S = 120.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_MARGIN_S = 3.0  # beyond the children's own bound before they are killed
_PR_SET_PDEATHSIG = 1

# Child body: (index, its crash marker, the suspects board, its status socket) → exit code. Runs in
# the forked child.
Body = Callable[[int, CrashMarker, SuspectBoard, socket], int]


@dataclass
class _Child:
    index: int
    marker: CrashMarker = field(default_factory=CrashMarker)
    pid: int = 0
    started: float = 0.0
    restart_at: float | None = None


class SupervisorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # the supervisor's own CPU and memory, beside each pipeline's
        p = "capillary_aep_"
        self.processes = Gauge(p + "pipeline_processes", "Pipeline processes this replica runs "
                               "(processing.processes)", registry=r)
        self.running = Gauge(p + "pipeline_processes_running", "Pipeline processes alive now", registry=r)
        self.restarts = Counter(p + "pipeline_restarts", "Pipeline processes that died and were restarted, "
                                "by whether the record they died on was known", ["cause"], registry=r)
        for cause in ("record", "unknown"):  # both series from the start: increase() sees the first restart
            self.restarts.labels(cause)


class Supervisor:
    def __init__(self, processes: int, body: Body, stop_timeout_s: float) -> None:
        self.children = [_Child(i) for i in range(processes)]
        self.metrics = SupervisorMetrics()
        self.metrics.processes.set(processes)
        self.board = SuspectBoard()  # records that killed processes, shared with every child
        self.exit_code: int = ExitCode.OK
        self.stop_reason = ""
        self._body = body
        self._stop_timeout_s = stop_timeout_s
        self._pid = os.getpid()
        self._listeners = [listener(i) for i in range(processes)]
        self.links = [ChildLink(i, os.getpid()) for i in range(processes)]
        self._deaths: list[float] = []  # times of deaths with no record to blame
        self._stopping = threading.Event()
        self._kill_at: float | None = None
        self._inherited: list[int] = []  # descriptors a child must close (e.g. the health server's socket)

    # == lifecycle ===========================================================================
    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s: stopping the pipeline processes", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def start(self) -> None:
        gc.freeze()  # what the parent built so far stays shared with the children (copy-on-write)
        for child in self.children:
            self._spawn(child)

    def close_in_children(self, fd: int) -> None:
        self._inherited.append(fd)

    def run(self) -> int:
        """Watch the children until they have all stopped; the replica's exit code."""
        while True:
            self._reap()
            now = time.monotonic()
            if self._stopping.is_set():
                if not any(c.pid for c in self.children):
                    break
                if self._kill_at is None:
                    self._signal_all(signal.SIGTERM)
                    self._kill_at = now + self._stop_timeout_s + STOP_MARGIN_S
                elif now > self._kill_at:
                    log.error("pipeline processes %s did not stop in time: killing them",
                              [c.index for c in self.children if c.pid])
                    self._signal_all(signal.SIGKILL)
                    self._kill_at = float("inf")
            else:
                for child in self.children:
                    if child.restart_at is not None and now >= child.restart_at:
                        self._spawn(child)
            self.metrics.running.set(sum(1 for c in self.children if c.pid))
            self._stopping.wait(0.05)
        return self.exit_code

    def stop(self, code: int = ExitCode.OK, reason: str = "") -> None:
        if code and self.exit_code == ExitCode.OK:
            self.exit_code, self.stop_reason = code, reason
        self._stopping.set()

    def close(self) -> None:
        """Release the status sockets (a second supervisor in this process may then bind them)."""
        for sock in self._listeners:
            sock.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # == children ============================================================================
    def _spawn(self, child: _Child) -> None:
        child.marker.reset()
        child.restart_at = None
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's stack
            code: int = ExitCode.INTERNAL
            try:
                self._become_child(child.index)
                code = self._body(child.index, child.marker, self.board, self._listeners[child.index])
            except BaseException:
                logging.getLogger("connector").exception("unexpected error in pipeline process %d; exiting with code %d",
                                                         child.index, code)
            finally:
                logging.shutdown()
                os._exit(int(code))
        child.pid, child.started = pid, time.monotonic()
        log.info("pipeline process %d started (pid %d)", child.index, pid)

    def _become_child(self, index: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl = getattr(load_libc(), "prctl", None)
        if prctl is not None:  # the supervisor killed outright: its children drain and stop too
            prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != self._pid:  # it died before prctl took effect
            os._exit(ExitCode.OK)
        for fd in self._inherited:
            try:
                os.close(fd)
            except OSError:
                pass
        for i, sock in enumerate(self._listeners):
            if i != index:
                sock.close()

    def _reap(self) -> None:
        for child in self.children:  # by pid: other children of this process are not ours to reap
            if not child.pid:
                continue
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0
            if pid:
                child.pid = 0
                self._died(child, os.waitstatus_to_exitcode(status))

    def _died(self, child: _Child, code: int) -> None:
        how = describe_exit(code)
        if self.stopping:
            log.info("pipeline process %d stopped (%s)", child.index, how)
            if code in DELIBERATE and self.exit_code == ExitCode.OK:
                self.exit_code = code
            return
        if code in DELIBERATE:
            log.error("pipeline process %d stopped with %s (%s): stopping the others", child.index, how,
                      ExitCode(code).name)
            self.stop(code, f"pipeline process {child.index} stopped: {ExitCode(code).name}")
            return
        culprit = child.marker.culprit()
        now = time.monotonic()
        if culprit is not None:
            deaths = self.board.strike(culprit, how)
            log.error("pipeline process %d died (%s) processing %s[%d]@%d (%d time%s): restarting it; %s", child.index,
                      how, *culprit, deaths, "" if deaths == 1 else "s",
                      "the record is dead-lettered as crashed_processing" if deaths >= STRIKES else
                      "the record is processed once more, and dead-lettered if it kills again")
            if deaths <= STRIKES + 1:  # a record dead-lettered on its next reading cannot kill again
                self.metrics.restarts.labels("record").inc()
                child.restart_at = now
                return
        self.metrics.restarts.labels("unknown").inc()
        self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW_S] + [now]
        if len(self._deaths) >= MAX_DEATHS:
            log.error("pipeline processes died %d times in %.0f s with no record to blame (last: %d, %s): stopping "
                      "(exit code %d)", len(self._deaths), DEATH_WINDOW_S, child.index, how, ExitCode.WORKERS)
            self.stop(ExitCode.WORKERS, "pipeline processes keep dying")
            return
        delay = BACKOFF_S[min(len(self._deaths) - 1, len(BACKOFF_S) - 1)]
        log.error("pipeline process %d died (%s) outside any record: restarting it in %.0f s", child.index, how, delay)
        child.restart_at = now + delay

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.pid:
                try:
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass


def describe_exit(code: int | None) -> str:
    """``signal SIGSEGV`` or ``exit code 70`` (negative codes are signals, as os.waitstatus_to_exitcode says)."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
