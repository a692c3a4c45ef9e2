"""What the ingress needs to face the internet, around the ASGI app: a deadline on every
connection for its TLS handshake and request headers, HTTPS with a modern policy and certificate
files re-read when they change, and ``/metrics`` on its own listener (never on the webhook port).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from connector.ingest.config import IngestConfig, tls_problem

log = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and an AEAD cipher only: no CBC (padding-oracle history), no
# SHA-1 MAC, no static-RSA key exchange. TLS 1.3's suites are all AEAD; set_ciphers leaves them be.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The ingress's HTTPS policy: TLS 1.2 or 1.3, :data:`TLS12_CIPHERS`, no compression, no
    renegotiation. (uvicorn's context is Python's default, which admits CBC suites; older uvicorn
    versions set "TLSv1", CBC-SHA1 among them.)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def handshake_deadline_loop(timeout_s: float, base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    """An event loop class whose TLS servers drop a handshake not done within ``timeout_s``
    (asyncio's default is 60 s and uvicorn passes none: a client that connects and sends nothing
    would hold its socket that long)."""

    class HandshakeDeadlineLoop(base):  # type: ignore[valid-type,misc] # a loop class chosen at run time
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", timeout_s)
            return await super().create_server(*args, **kwargs)  # type: ignore[no-any-return]

    return HandshakeDeadlineLoop

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    b"content-length: 28\r\nconnection: close\r\n\r\n"
                    b'{"error":"request_timeout"}\n')


_OVER_CONNECTION_LIMIT = (b'{"error":"overloaded","detail":"too many connections open; retry later"}')


def _over_connection_limit(retry_after_s: int) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_OVER_CONNECTION_LIMIT)),
               (b"retry-after", b"%d" % retry_after_s), (b"connection", b"close")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": _OVER_CONNECTION_LIMIT})

    return app


def header_deadline_protocol(timeout_s: float, on_timeout: Callable[[], None], max_connections: int = 0,
                             on_refused: Callable[[], None] = lambda: None,
                             retry_after_s: int = 5) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline on request headers: from the connection's
    accept, the TLS handshake included (or the first byte of a later request on it) to the end of
    the headers. A client that has not
    sent its headers by then gets a 408 and the connection is closed; ``on_timeout`` counts it.
    (uvicorn itself only times out idle keep-alive connections: a client trickling a header byte a
    second would hold its connection for ever.) The body has its own deadline in the app.

    With ``max_connections``, a request on a connection beyond that many open ones is answered
    429 with ``Retry-After`` and the connection closed (``on_refused`` counts it), before the app
    sees it. (uvicorn's ``limit_concurrency`` answers a plain 503 and logs every one.)"""
    refuse = _over_connection_limit(retry_after_s)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Made at accept; over TLS connection_made comes after the handshake, which counts too.
            self._accepted_at = self.loop.time()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override] # uvicorn's protocol types the transport more loosely
            super().connection_made(transport)
            self._arm(max(0.0, timeout_s - (self.loop.time() - self._accepted_at)))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            if max_connections and len(self.connections) > max_connections:
                on_refused()
                self.app = refuse  # this connection's app only; it is closed after the answer
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, delay: float = timeout_s) -> None:
            self._header_timer = self.loop.call_later(delay, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request of this connection is being answered; its body has its own deadline
            on_timeout()
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return HeaderDeadlineProtocol


class TlsReloader:
    """Re-reads the certificate and key into the server's live ``SSLContext`` when either file
    changes (new handshakes use the new pair; open connections keep theirs). A pair that does not
    load (half-written, mismatched) is logged and the previous one stays in service."""

    def __init__(self, cfg: IngestConfig, context: Callable[[], ssl.SSLContext | None]) -> None:
        self.cert_file, self.key_file = cfg.tls_cert_file, cfg.tls_key_file
        self.interval_s = cfg.tls_reload_interval_s
        self._context = context
        self._stamp = self._stat()
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.cert_file, self.key_file):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def check(self) -> bool:
        """Reload if the files changed since the last look; True when a new pair was loaded."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        context = self._context()
        problem = tls_problem(self.cert_file, self.key_file)
        if context is None or problem:
            log.error("TLS certificate files changed but cannot be used (%s); still serving the previous "
                      "certificate", problem or "no TLS context")
            self._stamp = stamp  # retried when they change again
            return False
        context.load_cert_chain(self.cert_file, self.key_file)
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:
                log.exception("TLS certificate reload failed; still serving the previous certificate")


def start_metrics_server(host: str, port: int, registry: object) -> tuple[WSGIServer, threading.Thread]:
    """``/metrics`` (prometheus_client's own threaded server) on ``host:port``; raises OSError when
    the address cannot be bound."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)  # type: ignore[arg-type] # prometheus_client accepts any CollectorRegistry
    return server, thread
