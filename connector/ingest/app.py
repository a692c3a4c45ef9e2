"""The webhook ingress: a Starlette app under uvicorn (httptools, uvloop), like the emulator.

``POST /capillary/events`` runs, cheapest check first: authentication (401) → declared size (413)
→ admission against the per-client and global in-flight caps (429) → body read within
``body_timeout_s`` (408) → validation (400/413) → produce and wait for the broker (200, or 503 with
``Retry-After``). ``/healthz`` and ``/readyz`` sit on the same port, unauthenticated; ``/metrics``
only on ``ingest.metrics_listen`` (``edge.py``: that listener, the header deadline, HTTPS).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from importlib.util import find_spec
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from connector.ingest.auth import Authenticator
from connector.ingest.config import IngestSettings
from connector.ingest.metrics import THROTTLE_CAPS, IngestMetrics
from connector.ingest.producer import DeliveryFailed, ProducerBridge
from connector.ingest.signature import FULL, Signatures
from connector.ingest.validate import Door, Record, Rejected
from connector.runtime.asgi import GracefulServer

log = logging.getLogger(__name__)
EVENTS_PATH = "/capillary/events"
_JSON = "application/json"


_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_SIGNATURE_DETAIL = {"missing": "no signature or timestamp header", "bad": "the signature does not match",
                     "stale": "the signature's timestamp is outside the accepted window",
                     "replayed": "this signed request was already received"}


class Gate:
    """Caps on admitted-and-unanswered requests and their body bytes: over either → 429, never a queue.
    Bytes are charged as they arrive (:class:`Charge`), so a slow upload holds only what it sent.
    Before the global caps,
    each remote address and each credential may hold at most ``per_address`` / ``per_credential``
    requests (0: no cap of its own), so one client cannot take every slot."""

    def __init__(self, max_requests: int, max_bytes: int, per_address: int = 0, per_credential: int = 0) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.per_address, self.per_credential = per_address, per_credential
        self.requests = self.bytes = 0
        self.by_address: dict[str, int] = {}
        self.by_credential: dict[str, int] = {}

    def admit(self, nbytes: int, address: str = "", credential: str = "") -> str | None:
        """``None`` when admitted (then :meth:`release` once answered), else the cap that refused."""
        if self.per_address and self.by_address.get(address, 0) >= self.per_address:
            return "address"
        if self.per_credential and credential and self.by_credential.get(credential, 0) >= self.per_credential:
            return "credential"
        if self.requests >= self.max_requests:
            return "requests"
        if self.bytes + nbytes > self.max_bytes:
            return "bytes"
        self.requests += 1
        self.bytes += nbytes
        if self.per_address:
            self.by_address[address] = self.by_address.get(address, 0) + 1
        if self.per_credential and credential:
            self.by_credential[credential] = self.by_credential.get(credential, 0) + 1
        return None

    def grow(self, nbytes: int) -> bool:
        """Charge an admitted request ``nbytes`` more, if the byte cap can take them."""
        if self.bytes + nbytes > self.max_bytes:
            return False
        self.bytes += nbytes
        return True

    def release(self, nbytes: int, address: str = "", credential: str = "") -> None:
        self.requests -= 1
        self.bytes -= nbytes
        if self.per_address:
            _decrement(self.by_address, address)
        if self.per_credential and credential:
            _decrement(self.by_credential, credential)


# A request is admitted with at most this charge and grows by at least this much at a time: one
# step covers a typical Capillary event in one go, and a slow upload holds little more than it sent.
CHARGE_STEP = 64 * 1024


class Charge:
    """What one admitted request holds of the byte budget: its declared length when that is at
    most one step, else a step, grown as the body arrives (never past ``ceiling``: the declared
    length, or max_body_bytes for a chunked body)."""

    __slots__ = ("gate", "amount", "ceiling")

    def __init__(self, gate: Gate, ceiling: int) -> None:
        self.gate, self.ceiling = gate, ceiling
        self.amount = min(ceiling, CHARGE_STEP)

    def cover(self, size: int) -> bool:
        """Make the charge cover ``size`` bytes received; False when the budget cannot take them."""
        if size <= self.amount:
            return True
        more = min(self.ceiling, max(size, self.amount + CHARGE_STEP)) - self.amount
        if more <= 0 or not self.gate.grow(more):
            return False
        self.amount += more
        return True


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]  # the table holds only clients with something in flight


class _EveryFewSeconds:
    """Log a kind of client error at most once per interval, with how many were not logged."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(kind, (0.0, 0))
        if now - last < self.interval_s:
            self._last[kind] = (last, skipped + 1)
            return
        self._last[kind] = (now, 0)
        log.warning(msg + (f" ({skipped} similar not logged)" if skipped else ""), *args)


class Ingress:
    """``POST /capillary/events`` as a plain ASGI app (the hot path skips Starlette's request and
    response objects and middleware, ~35-40 us a request, more than the handler itself costs), plus
    the state it uses: auth, validation, admission, the producer and the metrics."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics | None = None) -> None:
        cfg = settings.ingest
        self.cfg = cfg
        self.metrics = m = metrics or IngestMetrics()
        self.auth = Authenticator(cfg)
        self.door = Door(cfg, settings.max_message_bytes)
        self.gate = Gate(cfg.max_inflight_requests, cfg.max_inflight_bytes, cfg.max_inflight_per_address,
                         cfg.max_inflight_per_credential)
        # One credential is configured per mode; its key is the mode (basic: the user name). With
        # auth_mode "none" there is no credential and only the address cap applies.
        self._credential = {"none": ""}.get(cfg.auth_mode, f"{cfg.auth_mode}:{cfg.basic_username}")
        m.inflight_requests.set_function(lambda: self.gate.requests)
        m.inflight_bytes.set_function(lambda: self.gate.bytes)
        self.producer = ProducerBridge(settings.producer_config(), cfg.produce_timeout_s, m)
        self.started = False
        self.stopping = False
        self._log = _EveryFewSeconds()
        self._status = m.status
        self._events = {label: m.events.labels(label) for label in (*self.door.labels, "other")}
        self._observe_request = m.request_seconds.observe
        self._observe_produce = m.produce_seconds.observe
        self._observe_accepted = m.accepted_seconds.observe
        self._retry_after = [(b"retry-after", str(cfg.retry_after_s).encode())]
        self._challenge = [(b"www-authenticate", self.auth.challenge.encode())] if self.auth.challenge else []
        limit = cfg.max_body_bytes
        self._too_large = _doc({"error": "body_too_large", "detail": f"the body is larger than {limit} bytes"})
        self._overloaded = _doc({"error": "overloaded", "detail": "too many requests in flight; retry later"})
        self._client_overloaded = _doc({"error": "overloaded",
                                        "detail": "too many requests in flight from this client; retry later"})
        self._body_late = _doc({"error": "request_timeout",
                                "detail": f"the body was not received within {cfg.body_timeout_s:g} s"})
        self._throttled = {cap: m.throttled.labels(cap) for cap in THROTTLE_CAPS}
        self.signatures = Signatures(cfg) if cfg.signing_secret.get_secret_value() else None
        # Header names to look for; b"" (never an ASGI header name) when signatures are off.
        self._sig_header = self.signatures.header if self.signatures else b""
        self._ts_header = self.signatures.timestamp_header if self.signatures else b""
        self._close = [(b"connection", b"close")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            status, body, headers = await self._respond(scope, receive)
        except Exception:
            log.exception("unexpected error handling a webhook request")
            status, body, headers = 500, b'{"error":"internal_error"}', []
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                *headers]})
        await send({"type": "http.response.body", "body": body})
        self._status[status].inc()
        took = time.perf_counter() - started
        self._observe_request(took)
        if status == 200:
            self._observe_accepted(took)

    async def _respond(self, scope: Scope, receive: Receive) -> _Answer:
        auth_value = declared = signature = timestamp = None
        auth_header, sig_header, ts_header = self.auth.header, self._sig_header, self._ts_header
        for name, value in scope["headers"]:
            if name == auth_header:
                auth_value = value
            elif name == b"content-length":
                declared = value
            elif name == sig_header:
                signature = value
            elif name == ts_header:
                timestamp = value
        failure = self.auth.check(auth_value)
        if failure is not None:
            self.metrics.auth_failures.labels(failure).inc()
            self._log("auth", "401 for %s: %s credentials", _peer(scope), failure)
            return 401, _doc({"error": "unauthorized", "detail": f"{failure} credentials"}), self._challenge
        signed_at = 0
        if self.signatures is not None:
            checked = self.signatures.check_headers(signature, timestamp)
            if not isinstance(checked, int):
                return self._signature_refused(scope, checked)
            signed_at = checked
        limit = self.cfg.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return 413, self._too_large, []
        charge = Charge(self.gate, int(declared) if declared is not None else limit)
        address = _peer(scope)
        refused = "stopping" if self.stopping else self.gate.admit(charge.amount, address, self._credential)
        if refused is not None:
            self._throttled[refused].inc()
            if refused in ("address", "credential"):
                self._log("cap", "429 for %s: its per-%s cap of requests in flight is reached", address, refused)
                return 429, self._client_overloaded, self._retry_after
            return 429, self._overloaded, self._retry_after
        remembered = None
        answer: _Answer = 500, b"", []
        try:
            try:
                async with asyncio.timeout(self.cfg.body_timeout_s):
                    body = await _read_body(receive, limit, charge)
            except TimeoutError:
                # A slow (or stalled) upload: answer, close the connection, free the slot (finally).
                self.metrics.timeouts.labels("body").inc()
                self._log("body_timeout", "408 for %s: body not received within %g s", address,
                          self.cfg.body_timeout_s)
                return 408, self._body_late, self._close
            if body is None:
                return 413, self._too_large, []
            if body is _NO_ROOM:  # the rest of the body is not read: close rather than drain it
                self._throttled["bytes"].inc()
                return 429, self._overloaded, self._retry_after + self._close
            if self.signatures is not None:
                verified = self.signatures.verify(signature or b"", signed_at, body)
                if not isinstance(verified, bytes):
                    return self._signature_refused(scope, verified)
                remembered = verified
            answer = await self._store(scope, body)
            return answer
        except ClientDisconnect:
            return 400, b'{"error":"client_disconnected"}', []  # nobody is listening; nothing was produced
        finally:
            self.gate.release(charge.amount, address, self._credential)
            if remembered is not None and answer[0] != 200:
                self.signatures.forget(remembered)  # type: ignore[union-attr] # set only with signatures on
                # Not stored: the sender may retry this very request.

    async def _store(self, scope: Scope, body: bytes) -> _Answer:
        """Validate and produce an admitted, authenticated body."""
        try:
            records = self.door.parse(body)
        except Rejected as exc:
            for err in exc.errors or [{"reason": exc.reason}]:
                self.metrics.rejected_events.labels(err["reason"]).inc()
            self._log("rejected", "%d for %s: %s", exc.status, _peer(scope), exc.detail)
            return exc.status, _doc(exc.body()), []
        if not records:
            return 200, b'{"accepted":0}', []
        produce_started = time.perf_counter()
        try:
            await self.producer.deliver(records)
        except DeliveryFailed as exc:
            self.metrics.produce_failures.labels(exc.cause).inc()
            if exc.permanent:
                return 413, _doc({"error": "event_too_large", "detail": f"the broker refused it: {exc.detail}"}), []
            self._log("produce", "503: %s", exc)
            detail = f"not every event is acknowledged by Kafka ({exc.cause}); retry later"
            return 503, _doc({"error": "kafka_unavailable", "detail": detail}), self._retry_after
        self._observe_produce(time.perf_counter() - produce_started)
        self._count(records)
        return 200, b'{"accepted":%d}' % len(records), []

    def _signature_refused(self, scope: Scope, reason: str) -> _Answer:
        if reason == FULL:  # not the sender's fault: retried once older signatures expire
            self._throttled["signatures"].inc()
            self._log("signatures", "429: the replay memory holds ingest.signature_max_remembered signatures")
            return 429, self._overloaded, self._retry_after
        self.metrics.signature_failures.labels(reason).inc()
        self._log("signature", "401 for %s: signature %s", _peer(scope), reason)
        return 401, _doc({"error": "unauthorized", "detail": _SIGNATURE_DETAIL[reason]}), self._challenge

    def connection_refused(self) -> None:
        """A request over ``max_connections`` (answered 429 by the protocol, not by this app)."""
        self._throttled["connections"].inc()
        self._status[429].inc()
        self._log("connections", "429: ingest.max_connections (%d) connections are open", self.cfg.max_connections)

    def _count(self, records: list[Record]) -> None:
        if len(records) == 1:
            self._events[records[0].label].inc()
            return
        for label, n in Counter(r.label for r in records).items():
            self._events[label].inc(n)

    async def healthz(self, request: Request) -> Response:
        return _checks({"producer_polled": time.monotonic() - self.producer.last_poll < 10})

    async def readyz(self, request: Request) -> Response:
        return _checks({"started": self.started and not self.stopping, **self.producer.ready()})


_NO_ROOM = b"<no room in the byte budget>"  # a sentinel, compared by identity


async def _read_body(receive: Receive, limit: int, charge: Charge) -> bytes | None:
    """The whole body; ``None`` once it exceeds ``limit`` (chunked bodies have no Content-Length),
    ``_NO_ROOM`` when the byte budget cannot take the next chunk."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if not charge.cover(size):
            return _NO_ROOM
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _doc(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _checks(checks: dict[str, bool]) -> Response:
    ok = all(checks.values())
    return Response(_doc({"ok": ok, "checks": checks}), status_code=200 if ok else 503, media_type=_JSON)


def create_app(settings: IngestSettings, metrics: IngestMetrics | None = None) -> ASGIApp:
    """The ASGI app: POST /capillary/events straight to :class:`Ingress`, everything else (health,
    404/405, lifespan) through Starlette. ``/metrics`` is not here: see :func:`serve`."""
    ingress = Ingress(settings, metrics)
    ingress.tls = None  # type: ignore[attr-defined]  # serve() sets a TlsReloader when HTTPS is on

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ingress.producer.start(asyncio.get_running_loop())
        ingress.started = True
        host, port = settings.ingest.host_port
        scheme = "https" if settings.ingest.tls_cert_file else "http"
        log.info("capillary webhook ingress on %s://%s:%d%s (auth: %s) → kafka %s", scheme, host, port, EVENTS_PATH,
                 settings.ingest.auth_mode, settings.kafka.bootstrap_servers)
        reloader = asyncio.get_running_loop().create_task(ingress.tls.run()) if ingress.tls else None
        yield
        if reloader is not None:
            reloader.cancel()
        ingress.stopping = True
        left = await ingress.producer.close(settings.ingest.produce_timeout_s)
        if left:
            log.warning("%d record(s) of unanswered requests were not delivered at shutdown", left)
        log.info("capillary webhook ingress stopped")

    starlette = Starlette(routes=[
        Route(EVENTS_PATH, ingress, methods=["POST"]),
        Route("/healthz", ingress.healthz, methods=["GET"]),
        Route("/readyz", ingress.readyz, methods=["GET"]),
    ], lifespan=lifespan)
    starlette.state.ingress = ingress

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == EVENTS_PATH and scope["method"] == "POST":
            await ingress(scope, receive, send)
        else:
            await starlette(scope, receive, send)

    app.ingress = ingress  # type: ignore[attr-defined] # state kept on the ASGI app object
    return app


_Server = GracefulServer


def uvicorn_config(settings: IngestSettings, metrics: IngestMetrics | None = None) -> uvicorn.Config:
    from connector.ingest.edge import TlsReloader, handshake_deadline_loop, header_deadline_protocol, server_tls_context

    cfg = settings.ingest
    host, port = cfg.host_port
    app = create_app(settings, metrics)
    ingress: Ingress = app.ingress  # type: ignore[attr-defined] # state kept on the ASGI app object
    timeouts = ingress.metrics.timeouts.labels("header")
    http: Any = "h11"  # (without httptools: no header deadline and no connection limit)
    if find_spec("httptools"):
        http = header_deadline_protocol(cfg.header_timeout_s, timeouts.inc, cfg.max_connections,
                                        ingress.connection_refused, cfg.retry_after_s)
    tls: dict[str, Any] = {}
    if cfg.tls_cert_file:  # our context (TLS 1.2+, AEAD suites), not uvicorn's
        tls = {"ssl_context_factory": lambda _config, _default: server_tls_context(cfg.tls_cert_file, cfg.tls_key_file)}
    if find_spec("uvloop"):
        import uvloop

        loop_class: type[asyncio.AbstractEventLoop] = uvloop.Loop
    else:
        loop_class = asyncio.SelectorEventLoop
    forwarded: dict[str, Any] = {"proxy_headers": False}  # the middleware costs every request
    if cfg.forwarded_allow_ips:
        forwarded = {"proxy_headers": True, "forwarded_allow_ips": cfg.forwarded_allow_ips}
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=handshake_deadline_loop(cfg.header_timeout_s, loop_class),  # type: ignore[arg-type] # uvicorn takes a loop factory too
        http=http,
        **tls,
        **forwarded,
        access_log=False,
        log_level="warning",
        lifespan="on",
        # In-flight requests get their answer (at most one produce deadline) before the producer closes.
        timeout_graceful_shutdown=int(settings.ingest.produce_timeout_s) + 2,
        server_header=False,
    )
    if cfg.tls_cert_file:
        ingress.tls = TlsReloader(cfg, lambda: config.ssl)  # type: ignore[attr-defined] # state kept on the ASGI app object
    return config


def serve(settings: IngestSettings) -> int:
    """Run until SIGTERM/SIGINT: stop accepting, answer what is in flight, flush, return 0."""
    from connector.config import ConfigError
    from connector.ingest.edge import start_metrics_server

    config = uvicorn_config(settings)
    metrics_server = None
    where = settings.ingest.metrics_host_port
    if where is not None:
        try:
            metrics_server, _ = start_metrics_server(*where, config.app.ingress.metrics.registry)  # type: ignore[attr-defined] # state kept on the ASGI app object
        except OSError as exc:
            raise ConfigError(f"ingest.metrics_listen: cannot listen on {settings.ingest.metrics_listen}: "
                              f"{exc.strerror or exc}") from None
        log.info("ingress metrics on http://%s:%d/metrics", *where)
    # Freeze the start-up heap and run the cyclic GC less often: each request allocates many
    # short-lived objects and none of them form cycles worth collecting early.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    server = _Server(config)
    connections = server.server_state.connections
    config.app.ingress.metrics.connections.set_function(lambda: len(connections))  # type: ignore[attr-defined] # state kept on the ASGI app object
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return 0 if server.started else 1


def run_ingest(settings: IngestSettings) -> int:
    """Process wiring for ``capillary-aep ingest``: logging with the secrets masked, then serve."""
    from prometheus_client import disable_created_metrics

    from connector.telemetry.logs import register_secret, setup_logging

    disable_created_metrics()  # process-wide: *_created series only double the scrape
    setup_logging(settings.log.level, settings.log.format)
    register_secret(settings.ingest.auth_token.get_secret_value())
    register_secret(settings.ingest.basic_password.get_secret_value())
    register_secret(settings.ingest.signing_secret.get_secret_value())
    from connector.kafka.security import secret_values

    for value in secret_values(settings.kafka.security):
        register_secret(value)
    if settings.ingest.auth_mode == "none":
        log.warning("ingest.auth_mode is 'none': anyone who can reach %s can write to Kafka", settings.ingest.listen)
    from connector.config import ConfigError

    try:
        return serve(settings)
    except ConfigError as exc:  # e.g. ingest.metrics_listen cannot be bound
        print(f"error: {exc}", file=sys.stderr)
        return 2
