"""IMS OAuth server-to-server tokens (client_credentials on ``/ims/token/v3``).

The token is cached and shared by all sender threads; it is refreshed ``refresh_margin_s`` before
it expires (single flight: one thread refreshes, the others wait for it), and on demand when the
inlet answers 401/403. Neither the secret nor the token ever reaches a log line, a metric or an
exception message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from connector.config import ImsConfig
from connector.delivery.egress import describe_http_error
from connector.errors import AuthFailure, TransientError
from connector.telemetry.logs import register_token
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

# /ims/token/v3 answers seconds; legacy grants answer milliseconds. Anything this large is ms.
_MS_THRESHOLD = 1_000_000


class TokenProvider:
    def __init__(self, cfg: ImsConfig, client: httpx.Client, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.requests = 0

    def token(self) -> str:
        """A valid access token, fetched or refreshed if needed."""
        token = self._token
        if token is not None and self._clock() < self._expires_at:
            return token
        with self._lock:
            if self._token is not None and self._clock() < self._expires_at:
                return self._token
            return self._fetch()

    def invalidate(self, token: str) -> None:
        """Drop ``token`` if it is still the cached one (the inlet rejected it)."""
        with self._lock:
            if self._token == token:
                self._token = None
                self._expires_at = 0.0

    def valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at

    def _fetch(self) -> str:
        cfg = self._cfg
        self.requests += 1
        form = {
            "grant_type": "client_credentials",
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret.get_secret_value(),
            "scope": cfg.scopes,
        }
        url = f"{cfg.url.rstrip('/')}/ims/token/v3"
        try:
            resp = self._client.post(url, data=form, timeout=cfg.timeout_s)
        except httpx.HTTPError as exc:
            METRICS.token_refreshes.labels("error").inc()
            raise TransientError(f"IMS unreachable: {describe_http_error(exc)}") from None
        if resp.status_code == 200:
            try:
                body = resp.json()
                token = str(body["access_token"])
                expires_in = float(body.get("expires_in", 86_399))
            except (ValueError, KeyError, TypeError):
                METRICS.token_refreshes.labels("error").inc()
                raise TransientError("IMS answered 200 without a usable access_token") from None
            if expires_in > _MS_THRESHOLD:
                expires_in /= 1000.0
            margin = min(cfg.refresh_margin_s, expires_in / 2)
            self._token = token
            register_token(token)
            self._expires_at = self._clock() + expires_in - margin
            METRICS.token_refreshes.labels("ok").inc()
            log.info("IMS token obtained", extra={"expires_in_s": round(expires_in)})
            return token
        METRICS.token_refreshes.labels("error").inc()
        error = _oauth_error(resp)
        if resp.status_code in (429,) or resp.status_code >= 500:
            raise TransientError(f"IMS answered {resp.status_code}", retry_after=None)
        raise AuthFailure(f"IMS rejected the client credentials: HTTP {resp.status_code} {error}")


def _oauth_error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return str(body.get("error", ""))[:100]
    return ""
