"""Exception tree. The pipeline decides what to do by the type it catches, not by status codes:

    ConnectorError
    ├── DecodeError          a record that can never be decoded        → dead-letter (stage "decode")
    ├── TransientError       retry with backoff; never dead-letter, never commit
    │   └── RegistryUnavailable   the schema registry cannot be reached
    └── AuthFailure          credentials rejected after a token refresh → stop consuming, unhealthy

``connector.transform.TransformError`` (stage "transform"/"validate") lives with the transform so
that it stays free of pipeline imports.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base class of the connector's own errors."""


class DecodeError(ConnectorError):
    """The record's bytes cannot be turned into an event. ``reason`` is a short, bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransientError(ConnectorError):
    """A failure that goes away by itself (network, 5xx, 429); ``retry_after`` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryUnavailable(TransientError):
    """The schema registry did not answer; the record is retried, not dead-lettered."""


class AuthFailure(ConnectorError):
    """IMS or the inlet rejected our credentials even after a fresh token."""
