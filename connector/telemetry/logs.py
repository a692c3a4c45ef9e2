"""Logging: JSON lines when not on a terminal (for log shippers), plain text on a TTY.

A filter masks every registered secret (the IMS client secret, access tokens) wherever it would
appear in a message or its arguments, as a last line of defence: the code never logs them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_SECRETS: set[str] = set()
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        _SECRETS.add(value)


def register_settings_secrets(settings: Any) -> None:
    """Every secret of a loaded configuration: Kafka security, Schema Registry credentials, the
    IMS client secret, the password of a proxy URL. Duck-typed, so the ingress, the connector and
    the provisioning settings all fit; every command that loads settings calls it."""
    from connector.kafka.security import secret_values

    kafka = getattr(settings, "kafka", None)
    if kafka is not None:
        for value in secret_values(kafka.security):
            register_secret(value)
    decode = getattr(settings, "decode", None)
    if decode is not None:
        for value in decode.secret_values():
            register_secret(value)
    aep = getattr(settings, "aep", None)
    if aep is not None:
        for value in aep.http.secret_values():
            register_secret(value)
        ims = getattr(aep, "ims", None)
        if ims is not None:
            register_secret(ims.client_secret.get_secret_value())


def register_token(value: str) -> None:
    """The current access token replaces the previous one (tokens rotate; the set must not grow)."""
    _TOKEN[0] = value


_TOKEN = [""]


def redact(text: str) -> str:
    if _TOKEN[0] and _TOKEN[0] in text:
        text = text.replace(_TOKEN[0], "**********")
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "**********")
    return text


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS or _TOKEN[0]:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


def _redacted(value: Any) -> Any:
    """``value`` with every string in it redacted, at any depth (a field may hold a dict or a list)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redacted(v) for v in value]
    return value


# Fields every line of this process carries (a pipeline process's index: set_context).
_CONTEXT: dict[str, Any] = {}


def set_context(**fields: Any) -> None:
    """Stamp every later log line of this process with ``fields`` (JSON keys; ``k=v`` in text)."""
    _CONTEXT.update(fields)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_CONTEXT,
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc[key] = _redacted(value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(doc, default=lambda v: redact(str(v))).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines; tracebacks are redacted too (the filter only sees the message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if _CONTEXT:  # after the level and logger: "… INFO    connector.pipeline.loop [pipeline=1]: …"
            head, sep, rest = line.partition(": ")
            line = f"{head} [{' '.join(f'{k}={v}' for k, v in _CONTEXT.items())}]{sep}{rest}"
        return redact(line)


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactFilter())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RateLimitedLog:
    """At most one log line per key and interval for retry loops that may spin many times a
    second: the first occurrence is logged at once, later ones are counted and the count is
    carried on the next line that gets through."""

    def __init__(self, logger: logging.Logger, interval_s: float, level: int = logging.WARNING,
                 clock: Any = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, key: str, msg: str, *args: Any) -> bool:
        now = self._clock()
        if now < self._next.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._next[key] = now + self._interval_s
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += " (%d more like this in the last %.0fs)"
            args = (*args, skipped, self._interval_s)
        self._logger.log(self._level, msg, *args)
        return True
