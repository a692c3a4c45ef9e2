"""Test helpers: the shared process and polling helpers (connector/dev/procs.py, also used by the demo
and the benchmarks), and fake consumed records for tests and benches that run without Kafka."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from connector.dev.procs import (
    ROOT,
    ManagedProcess,
    broker_binary,
    free_port,
    port_open,
    python_module,
    start_broker,
    wait_until,
)

__all__ = ["ROOT", "FakeMessage", "FakeSource", "ManagedProcess", "broker_binary", "free_port", "held_without_gc",
           "loopback_http", "port_open", "python_module", "start_broker", "wait_until", "zigzag"]


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


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


# An HTTP answer for a loopback server: (method, path, request body) → (status, answer body).
Answer = Callable[[str, str, bytes], "tuple[int, bytes]"]


@contextmanager
def loopback_http(answer: Answer) -> Iterator[str]:
    """A real HTTP/1.1 server on a free loopback port (its base URL), answering with ``answer``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, out = answer(self.command, self.path, body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_PATCH = _any  # noqa: N815 - http.server's names

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def held_without_gc(work: Callable[[], None]) -> int:
    """Bytes still allocated after ``work`` with the cyclic GC off: what reference counting alone
    did not free (objects kept only by reference cycles count)."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
