"""``/metrics``, ``/healthz`` and ``/readyz`` on one small threaded HTTP server.

* ``/healthz``: the process is alive and its loop is not stuck (it went round recently).
* ``/readyz``: partitions are assigned, the credentials are accepted, the inlet has not been
  failing for longer than ``delivery.unhealthy_after_s``, and (for authenticated inlets) a token
  is held.

Both answer a small JSON document saying which check failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connector.runtime.thread_names import name_os_thread

log = logging.getLogger(__name__)

Check = Callable[[], dict[str, bool]]


def serve_health(
    listen: str, registry: CollectorRegistry, liveness: Check, readiness: Check,
    detail: Callable[[], str] | None = None, *, start: bool = True,
) -> ThreadingHTTPServer:
    """``detail`` says in words why the process is not ready (e.g. why it is stopping), or ""."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                checks = (liveness if path == "/healthz" else readiness)()
                ok = all(checks.values())
                doc: dict[str, object] = {"ok": ok, "checks": checks}
                # Only a process that is not ready has a reason (the supervisor asks its children for it).
                why = detail() if detail is not None and path == "/readyz" and not ok else ""
                if why:
                    doc["detail"] = why
                self._send(200 if ok else 503, orjson.dumps(doc), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    if start:
        start_serving(server)
    return server


def start_serving(server: ThreadingHTTPServer) -> None:
    """Serve a bound server on a thread of its own (bind first, then fork, then serve: the children
    must not inherit a serving thread)."""

    def serve() -> None:
        name_os_thread()
        server.serve_forever()

    threading.Thread(target=serve, name="health", daemon=True).start()
    host, port = server.server_address[:2]
    log.info("metrics and health on http://%s:%s/metrics", host, port)

