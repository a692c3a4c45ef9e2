"""The connector's exceptions, pipeline stages and exit codes, each defined once.

The pipeline decides what to do by the type it catches, never by a message or a status code::

    ConnectorError
    ├── ConfigError              bad configuration: the process does not start (exit 2), key and reason named
    ├── DecodeError              a record that can never be decoded         → dead-letter (stage "decode")
    ├── TransformError           a record that can never become valid XDM   → dead-letter ("transform"/"validate")
    │                            (connector.transform.errors: the transform imports nothing of the pipeline)
    ├── TransientError           goes away by itself: retry with backoff; never dead-letter, never commit
    │   └── RegistryUnavailable  the Schema Registry cannot be reached       → stop without committing (exit 3)
    ├── AuthFailure              IMS or the inlet rejects our credentials    → pause, unhealthy, probe every 30 s
    ├── WorkerCrashed            not raised any more (kept for callers that catch it): pipeline processes
    │                            that keep dying with no record to blame are the supervisor's to
    │                            judge (connector.runtime.supervisor → exit 5, ExitCode.WORKERS); one
    │                            dying on a record makes it a suspect, dead-lettered at stage
    │                            "process", reason "crashed_processing", once it kills two
    └── PlatformError            a Platform API call of ``provision`` failed  (connector.provision.platform; exit 8)

Problems that are states rather than exceptions (a stalled partition, an unusable dead-letter topic, a
sender that keeps failing) are reported by the pipeline: log line, metric, and an :class:`ExitCode`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


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


class WorkerCrashed(ConnectorError):
    """Processes keep dying with no record to blame: stop rather than spin (exit 5). No longer raised:
    the supervisor (connector.runtime.supervisor) counts its pipeline processes' deaths and stops the
    replica with ``ExitCode.WORKERS`` itself."""


class Stage(StrEnum):
    """Where a record was dead-lettered (the ``dlq.stage`` header, the metrics' ``stage`` label)."""

    DECODE = "decode"
    TRANSFORM = "transform"
    VALIDATE = "validate"  # pre-flight XDM validation
    DELIVER = "deliver"  # AEP rejected it, or it cannot fit in a request
    PROCESS = "process"  # decode → transform → encode as a whole: the process died on it (crashed_processing)


class ExitCode(IntEnum):
    """Exit codes of the ``capillary-aep`` commands (README, docs/operations.md). ``run`` commits what
    was acknowledged before it stops, whatever the code, and nothing else."""

    OK = 0
    CONFIG = 2  # invalid configuration
    REGISTRY = 3  # the Schema Registry cannot be reached
    CONSUMER = 4  # fatal consumer error (e.g. max.poll.interval.ms exceeded)
    WORKERS = 5  # pipeline processes keep dying: 4 deaths with no record to blame within 120 s
    DLQ = 6  # the dead-letter topic cannot take letters (authorization, unknown topic, size)
    SENDER = 7  # the sender keeps failing with an internal error
    PLATFORM = 8  # provision, backfill: a Platform API call failed
    BATCH_FAILED = 9  # backfill: AEP reports a batch failed (the hand-over point is not moved)
    HANDOVER = 10  # backfill: the consumer group is active or already has other committed offsets
    INTERNAL = 11  # an unexpected error, logged as one line (JSON with logging in JSON) with its cause
