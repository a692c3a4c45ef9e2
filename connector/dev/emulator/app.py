"""Starlette app factory and the uvicorn runner for the AEP + IMS + Schema Registry emulator."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from importlib.util import find_spec
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from connector.dev.emulator.batches import BatchApi
from connector.dev.emulator.config import EmulatorConfig
from connector.dev.emulator.control import control_routes
from connector.dev.emulator.dcs import TRANSPORT_KEY, Dcs
from connector.dev.emulator.faults import FaultState
from connector.dev.emulator.ims import TokenError, TokenIssuer, parse_form
from connector.dev.emulator.platform import PlatformApi
from connector.dev.emulator.registry import Registry
from connector.dev.emulator.store import Store
from connector.dev.emulator.validation import AsyncValidator
from connector.runtime.asgi import GracefulServer

IMS_ERRORS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied", 429: "too_many_requests"}


class Emulator:
    """All emulator state; one per app."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.store_bodies, cfg.max_stored_messages, cfg.max_stored_rejections,
                           cfg.check_null_or_empty)
        self.faults = FaultState()
        self.issuer = TokenIssuer(cfg.ims_clients, cfg.token_ttl_s)
        self.registry = Registry()
        self.validator = AsyncValidator()
        self.dcs = Dcs(cfg, self.store, self.faults, self.issuer, self.validator)
        self.platform = PlatformApi(self)
        self.batches = BatchApi(self)

    async def ims_token(self, request: Request) -> Response:
        store, faults = self.store, self.faults
        store.token_requests += 1
        body = await request.body()
        if faults.faults.ims_latency_ms:
            await asyncio.sleep(faults.faults.ims_latency_ms / 1000)
        forced = faults.take_ims_status()
        if forced is not None:
            store.token_failures[str(forced)] += 1
            error = IMS_ERRORS.get(forced, "server_error")
            return _json({"error": error, "error_description": "emulated IMS failure (fault injection)"}, forced)
        self.issuer.ttl_s = faults.faults.token_ttl_s or self.cfg.token_ttl_s
        try:
            out = self.issuer.issue(parse_form(body, request.scope.get("query_string", b"")))
        except TokenError as exc:
            store.token_failures[exc.error] += 1
            return _json({"error": exc.error, "error_description": exc.description}, exc.status)
        store.tokens_issued += 1
        return _json(out, 200)


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(cfg: EmulatorConfig) -> Starlette:
    em = Emulator(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        em.validator.stop()

    registry_methods = ["GET", "POST", "PUT", "DELETE"]

    async def registry(request: Request) -> Response:
        wanted = cfg.registry_authorization
        if wanted and request.headers.get("authorization", "") != wanted:
            return _json({"error_code": 40101, "message": "Unauthorized"}, 401)
        return await em.registry.handle(request)

    routes = [
        Route("/collection/batch/{inlet_id}", em.dcs.batch, methods=["POST"]),
        Route("/collection/{inlet_id}", em.dcs.single, methods=["POST"]),
        Route("/ims/token/v3", em.ims_token, methods=["POST"]),
        Route("/ims/token/v2", em.ims_token, methods=["POST"]),  # legacy, same semantics
        *control_routes(em),
        *em.platform.routes(),
        *em.batches.routes(),
        *(Route(f"/{head}{{rest:path}}", registry, methods=registry_methods)
          for head in ("subjects", "schemas", "config", "mode", "compatibility")),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.emulator = em
    return app


class EmulatorHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the transport in the scope so a fault can drop the
    connection without any response (ASGI itself has no way to do that)."""

    def on_headers_complete(self) -> None:
        self.scope[TRANSPORT_KEY] = self.transport  # type: ignore[literal-required] # our own key in uvicorn's scope
        super().on_headers_complete()


_Server = GracefulServer


def uvicorn_config(cfg: EmulatorConfig, host: str = "127.0.0.1", port: int = 8080,
                   **tls: Any) -> uvicorn.Config:
    """``tls``: uvicorn's ``ssl_certfile``/``ssl_keyfile``/``ssl_ca_certs``/``ssl_cert_reqs`` (HTTPS)."""
    return uvicorn.Config(
        create_app(cfg),
        host=host,
        port=port,
        loop="uvloop" if find_spec("uvloop") else "asyncio",
        http=EmulatorHttpProtocol,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        **tls,
    )


def tune_gc() -> None:
    """Every 1 MB batch allocates ~50k short-lived containers; with default thresholds the cyclic
    GC runs dozens of times per request and re-scans everything long-lived. Freezing the startup
    heap and raising the thresholds cut the per-message cost by about a third. (Process-wide, so
    only :func:`serve` does it, not :func:`create_app`.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def serve(cfg: EmulatorConfig, host: str = "127.0.0.1", port: int = 8080, **tls: Any) -> None:
    """Run the emulator until SIGTERM/SIGINT (then return normally)."""
    config = uvicorn_config(cfg, host, port, **tls)
    tune_gc()
    _Server(config).run()
