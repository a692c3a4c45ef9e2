"""How the supervisor reads its pipeline processes: each child answers on its own Unix socket (an
abstract address, nothing on disk) with its metrics and health in one pickled document; the
supervisor's one ``/metrics`` merges them, each series labelled with its ``pipeline`` index.

A labelled series per process, not a sum: a restarted child starts its counters at zero, which
``rate()`` reads as a counter reset of that series; a sum over children would go backwards.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from connector.runtime.thread_names import name_os_thread

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
ANSWER_TIMEOUT_S = 2.0  # a child that cannot answer in this long counts as not alive

Status = dict[str, Any]  # {"families": [Metric], "live": {check: bool}, "ready": {...}, "detail": str}


def listener(index: int) -> socket.socket:
    """The socket child ``index`` answers on; made by the supervisor, inherited by every child it forks
    for that index."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(_address(os.getpid(), index))
    sock.listen(8)
    return sock


def _address(supervisor_pid: int, index: int) -> str:
    return f"\0capillary-aep-{supervisor_pid}-{index}"  # abstract (nothing on disk), one namespace per replica


def serve_status(sock: socket.socket, status: Callable[[], Status]) -> None:
    """In the child: answer each connection with ``status()`` on a thread of its own."""

    def serve() -> None:
        name_os_thread()
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    body = pickle.dumps(status(), protocol=pickle.HIGHEST_PROTOCOL)
                    conn.sendall(_LENGTH.pack(len(body)) + body)
                except Exception:
                    log.exception("could not answer the supervisor")

    threading.Thread(target=serve, name="status", daemon=True).start()


class ChildLink:
    """The supervisor's side: ask child ``index`` for its status (None if it does not answer)."""

    def __init__(self, index: int, supervisor_pid: int) -> None:
        self.index = index
        self._address = _address(supervisor_pid, index)

    def status(self, timeout: float = ANSWER_TIMEOUT_S) -> Status | None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self._address)
                head = _read(sock, _LENGTH.size)
                doc: Status = pickle.loads(_read(sock, _LENGTH.unpack(head)[0]))
                return doc
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


def _read(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = sock.recv(min(left, 1 << 20))
        if not part:
            raise EOFError("the child closed the connection")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class MergedMetrics(Collector):
    """One exposition for the replica: the supervisor's own families (``pipeline="supervisor"``) and
    each child's (``pipeline="<index>"``), one family per name as the text format requires."""

    def __init__(self, own: CollectorRegistry, children: Callable[[], Iterable[tuple[str, Status]]]) -> None:
        self._own = own
        self._children = children

    def describe(self) -> list[Metric]:  # names vary with the children: not checked at registration
        return []

    def collect(self) -> Iterator[Metric]:
        merged: dict[tuple[str, str], Metric] = {}

        def add(families: Iterable[Metric], label: str) -> None:
            for fam in families:
                out = merged.get((fam.name, fam.type))
                if out is None:
                    out = merged[(fam.name, fam.type)] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                out.samples.extend(Sample(s.name, {**s.labels, "pipeline": label}, s.value, s.timestamp, s.exemplar)
                                   for s in fam.samples)

        add(self._own.collect(), "supervisor")
        for label, status in self._children():
            add(status["families"], label)
        yield from merged.values()
