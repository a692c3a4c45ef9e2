"""Emulated Adobe IMS (§7, §9.2): client_credentials tokens that DCS then checks.

Tokens are JWT-shaped (``header.payload.signature``) with ``created_at``/``expires_in`` claims in
milliseconds-as-strings, as aio-lib-ims expects; the emulator itself only trusts its own table
of issued tokens, so a forged or revoked token is "invalid" even if its claims look fine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Literal

import orjson

from connector.dev.emulator.config import ImsClientConfig

TokenState = Literal["ok", "missing", "invalid", "expired", "wrong_org"]


@dataclass(slots=True)
class IssuedToken:
    client_id: str
    org_id: str
    expires_at_ms: int


@dataclass(slots=True)
class TokenError(Exception):
    status: int
    error: str
    description: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_form(body: bytes, query_string: bytes) -> dict[str, str]:
    """Query string and urlencoded body merged; the body wins on conflict (§9.2)."""
    params = dict(urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


class TokenIssuer:
    def __init__(self, clients: list[ImsClientConfig], ttl_s: float) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.ttl_s = ttl_s
        self._tokens: dict[str, IssuedToken] = {}
        self._key = secrets.token_bytes(32)

    def issue(self, params: dict[str, str]) -> dict[str, object]:
        """Validate an OAuth client_credentials request; return the v3 response body or raise TokenError."""
        grant = params.get("grant_type")
        client_id = params.get("client_id")
        secret = params.get("client_secret")
        if not grant:
            raise TokenError(400, "invalid_request", "missing required parameter: grant_type")
        if grant != "client_credentials":
            raise TokenError(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")
        if not client_id:
            raise TokenError(400, "invalid_request", "missing required parameter: client_id")
        if not secret:
            raise TokenError(400, "invalid_request", "missing required parameter: client_secret")
        client = self.clients.get(client_id)
        if client is None:
            raise TokenError(400, "invalid_client", "invalid client_id parameter")
        if not any(hmac.compare_digest(secret, s) for s in client.client_secrets):
            raise TokenError(401, "invalid_client", "invalid client_secret parameter")
        requested = [s for s in params.get("scope", "").replace(" ", ",").split(",") if s]
        if client.scopes is not None:
            bad = [s for s in requested if s not in client.scopes]
            if bad:
                raise TokenError(400, "invalid_scope", f"invalid scope: {','.join(bad)}")
        scope = ",".join(requested) if requested else ",".join(client.scopes or [])
        return self._mint(client, scope)

    def _mint(self, client: ImsClientConfig, scope: str) -> dict[str, object]:
        now_ms = int(time.time() * 1000)
        ttl_ms = max(1, int(self.ttl_s * 1000))
        header = {"alg": "HS256", "typ": "JWT", "x5u": "ims_na1-key-emulator.cer", "kid": "ims_na1-key-emulator"}
        payload = {
            "id": secrets.token_hex(16),
            "type": "access_token",
            "client_id": client.client_id,
            "user_id": f"{client.client_id}@techacct.adobe.com",
            "as": "ims-na1",
            "aa_id": f"{client.client_id}@techacct.adobe.com",
            "org": client.org_id,
            "created_at": str(now_ms),
            "expires_in": str(ttl_ms),
            "scope": scope,
        }
        signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}"
        sig = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(sig)}"
        self._tokens[token] = IssuedToken(client.client_id, client.org_id, now_ms + ttl_ms)
        self._prune(now_ms)
        return {"access_token": token, "token_type": "bearer", "expires_in": max(1, int(self.ttl_s))}

    def _prune(self, now_ms: int) -> None:
        # Keep expired tokens for an hour so their use is reported as "expired", not "invalid".
        if len(self._tokens) > 1000:
            horizon = now_ms - 3_600_000
            self._tokens = {t: i for t, i in self._tokens.items() if i.expires_at_ms > horizon}

    def check(self, authorization: str | None, org_id: str) -> TokenState:
        if not authorization:
            return "missing"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "missing"
        info = self._tokens.get(token)
        if info is None:
            return "invalid"
        if info.expires_at_ms <= time.time() * 1000:
            return "expired"
        if info.org_id != org_id:
            return "wrong_org"
        return "ok"

    def revoke_all(self) -> int:
        n = len(self._tokens)
        self._tokens.clear()
        return n

    @property
    def active(self) -> int:
        now_ms = time.time() * 1000
        return sum(1 for i in self._tokens.values() if i.expires_at_ms > now_ms)
