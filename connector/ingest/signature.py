"""Request signatures: HMAC over ``<timestamp>.<body>`` with a replay window.

The sender sends ``<timestamp_header>: <unix seconds>`` and ``<signature_header>: <algorithm>=<hex
HMAC(secret, "<timestamp>.<body>")>`` (several ``algo=hex`` entries separated by commas are
allowed, so a sender can sign with an old and a new secret while the receiver switches). Checked in
two steps: the headers (presence, form, the timestamp within ±``signature_window_s``) before the
body is read, the MAC after it and before validation. A verified MAC is remembered until its
timestamp leaves the window, so the same signed request is refused the second time. The memory is
bounded: when it is full the request is refused (429), never an entry forgotten early, so the
window's promise holds. An entry is dropped again when its request is not answered 200, so a
sender may retry a failed request as it was.

Nothing here logs or returns the secret or the presented signature: callers get a reason label.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Literal

from connector.ingest.config import IngestConfig

Failure = Literal["missing", "bad", "stale", "replayed"]
REASONS: tuple[Failure, ...] = ("missing", "bad", "stale", "replayed")
FULL: Literal["full"] = "full"  # the replay memory cannot take one more entry: refused, retried later
_MAX_TIMESTAMP_DIGITS = 12  # unix seconds until the year 33658; longer is not a timestamp


class ReplayMemory:
    """MACs of accepted requests, each until its timestamp is out of the window (after that a replay
    is refused as stale anyway). Entries are bucketed by the second they expire; expired buckets
    are dropped at most once a second, so a lookup costs one set probe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}
        self._next_purge = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def full(self, now: float) -> bool:
        self._purge(now)
        return len(self._seen) >= self.limit

    def add(self, key: bytes, expires: int, now: float) -> Literal["replayed", "full"] | None:
        """Remember ``key`` until ``expires`` (unix seconds); why not, if it cannot be."""
        self._purge(now)
        if key in self._seen:
            return "replayed"
        if len(self._seen) >= self.limit:
            return "full"
        self._seen.add(key)
        self._buckets.setdefault(expires, []).append(key)
        return None

    def forget(self, key: bytes) -> None:
        self._seen.discard(key)  # its bucket entry goes at expiry (discard of an absent key is a no-op)

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + 1.0
        for second in [s for s in self._buckets if s < now]:
            for key in self._buckets.pop(second):
                self._seen.discard(key)


class Signatures:
    """The configured signature check (``ingest.signing_secret`` set)."""

    def __init__(self, cfg: IngestConfig, clock: Callable[[], float] = time.time) -> None:
        self.header = cfg.signature_header.lower().encode("latin-1")
        self.timestamp_header = cfg.timestamp_header.lower().encode("latin-1")
        self.window = cfg.signature_window_s
        self._key = cfg.signing_secret.get_secret_value().encode()
        self._digest = getattr(hashlib, cfg.signature_algorithm)
        self._scheme = cfg.signature_algorithm.encode() + b"="
        self._clock = clock
        self.memory = ReplayMemory(cfg.signature_max_remembered)

    def check_headers(self, signature: bytes | None, timestamp: bytes | None) -> Failure | Literal["full"] | int:
        """Before the body: the timestamp (unix seconds) when the headers can be right, else why not."""
        if not signature or not timestamp:
            return "missing"
        timestamp = timestamp.strip()
        if not timestamp.isdigit() or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
            return "bad"
        ts = int(timestamp)
        now = self._clock()
        if abs(now - ts) > self.window:
            return "stale"
        if self.memory.full(now):
            return FULL
        return ts

    def verify(self, signature: bytes, ts: int, body: bytes) -> Failure | Literal["full"] | bytes:
        """After the body: the remembered MAC (hand it to :meth:`forget` unless the request is
        answered 200) when one of the presented signatures matches and is new, else why not."""
        expected = hmac.new(self._key, b"%d." % ts + body, self._digest).hexdigest().encode()
        matched = False
        for entry in signature.split(b","):
            scheme, _, presented = entry.strip().partition(b"=")
            # Every entry is compared (no early exit), in constant time.
            matched |= hmac.compare_digest(presented.lower(), expected) & (scheme.lower() + b"=" == self._scheme)
        if not matched:
            return "bad"
        key = bytes.fromhex(expected.decode())
        refused = self.memory.add(key, ts + self.window, self._clock())
        return refused if refused is not None else key

    def forget(self, key: bytes) -> None:
        self.memory.forget(key)


def sign(secret: bytes, timestamp: int, body: bytes, algorithm: str = "sha256") -> str:
    """The signature header value a sender computes (used by the tests and the demo)."""
    return f"{algorithm}=" + hmac.new(secret, b"%d." % timestamp + body, getattr(hashlib, algorithm)).hexdigest()
