"""Request authentication as Capillary's webhook settings configure it.

Every comparison is constant-time (``hmac.compare_digest`` on bytes) and checks every part, so the
time taken says nothing about how much of a guess was right. Nothing here logs or returns the
presented or expected credential; callers only learn ``None`` (accepted) or a short reason label.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Literal

from connector.ingest.config import IngestConfig

Failure = Literal["missing", "invalid"]


class Authenticator:
    def __init__(self, cfg: IngestConfig) -> None:
        self.mode = cfg.auth_mode
        header = "authorization" if cfg.auth_mode in ("bearer", "basic") else cfg.auth_header.lower()
        self.header = header.encode("latin-1")  # ASGI header names are lower-case bytes
        self._token = cfg.auth_token.get_secret_value().encode()
        self._user = cfg.basic_username.encode()
        self._password = cfg.basic_password.get_secret_value().encode()
        realm = 'realm="capillary-aep-ingest"'
        self.challenge = {"bearer": f"Bearer {realm}", "basic": f'Basic {realm}, charset="UTF-8"'}.get(self.mode)

    def check(self, value: bytes | None) -> Failure | None:
        """``None`` when the request is authenticated, else why not (a metric label). ``value`` is
        the request's ``self.header`` header, as bytes, or ``None`` when it has none."""
        if self.mode == "none":
            return None
        if not value:
            return "missing"
        value = value.strip()
        if self.mode == "header":
            return None if hmac.compare_digest(value, self._token) else "invalid"
        scheme, _, credential = value.partition(b" ")
        credential = credential.strip()
        if self.mode == "bearer":
            ok = hmac.compare_digest(credential, self._token)
            return None if ok and scheme.lower() == b"bearer" else "invalid"
        if scheme.lower() != b"basic":
            return "invalid"
        try:
            user, sep, password = base64.b64decode(credential, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return "invalid"
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        return None if (user_ok & password_ok & bool(sep)) else "invalid"
