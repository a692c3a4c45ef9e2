"""Decode → transform → encode: one record's bytes to the JSON bodies of its XDM messages, or the
reason it can never become any. The one implementation, used by every pipeline process's processing
stage, ``capillary-aep transform``, ``dlq replay --direct`` and ``backfill``.

No I/O: writer schemas come through ``registry_lookup``, the caller's (the pipeline's registry client).

Outcomes are small typed records (NamedTuples: as cheap to build as plain tuples, and read by name).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from connector.config import DecodeConfig, OfflineSettings, Settings, XdmConfig
from connector.errors import DecodeError, Stage, TransientError
from connector.transform import TransformError

log = logging.getLogger(__name__)

# Tests of crash isolation only: a record whose value contains this marker ends the process that
# processes it (exit code 86, or the signal named by the second variable), as a crash in a C
# extension would. Read by ProcessorSpec.from_settings.
CRASH_ON_ENV = "CAPILLARY_AEP_TEST_CRASH_ON"
CRASH_SIGNAL_ENV = "CAPILLARY_AEP_TEST_CRASH_SIGNAL"
CRASH_EXIT_CODE = 86


class Encoded(NamedTuple):
    """Send these: the record's messages as JSON bodies."""

    format: str  # how the record was encoded (decode.format_of)
    bodies: list[bytes]
    labels: list[tuple[str, str]]  # (kind, event type) per message, for the metrics
    size: int  # bytes the bodies take in a batch request
    dropped: tuple[str, ...] = ()  # identities left out by AEP's guardrails, one reason each
    declined: tuple[str, ...] = ()  # event types the transform's fast path handed to the generic path


class Empty(NamedTuple):
    """The event maps to nothing: acknowledge it."""

    format: str


class Rejected(NamedTuple):
    """Dead-letter the record."""

    stage: Stage
    error_class: str
    reason: str
    detail: str
    http_status: int | None = None
    format: str | None = None  # None: not even decoded


Outcome = Encoded | Empty | Rejected


@dataclass(frozen=True)
class ProcessorSpec:
    """What a processor needs (picklable: a worker builds its own from it)."""

    decode: DecodeConfig
    xdm: XdmConfig
    org_id: str
    source_name: str
    max_record_size: int
    log_level: str = "INFO"
    log_format: str = "auto"
    crash_on: tuple[bytes, int] | None = None  # tests only: (marker, signal or 0), see CRASH_ON_ENV

    @classmethod
    def from_settings(cls, s: Settings | OfflineSettings) -> ProcessorSpec:
        marker = os.environb.get(CRASH_ON_ENV.encode())
        crash_on = (marker, int(os.environ.get(CRASH_SIGNAL_ENV) or 0)) if marker else None
        return cls(s.decode, s.xdm, s.aep.org_id, s.aep.source_name, s.batch.max_record_size, s.log.level,
                   s.log.format, crash_on)


class RecordProcessor:
    """Values → outcomes. Raises :class:`RegistryUnavailable` (transient: nothing may be decided)."""

    def __init__(self, cfg: ProcessorSpec, registry_lookup: Callable[[int], Any] | None = None) -> None:
        # Imported here, not at the top: commands that never decode (check, provision) should not
        # pay for the Avro libraries (cavro brings numpy, ~15 MB). The supervisor preloads them.
        from connector.decode.avro_guard import Limits
        from connector.decode.avro_schemas import LocalSchemas
        from connector.decode.decoder import Decoder, format_of
        from connector.transform import Transformer

        limits = Limits(cfg.decode.max_array_items, cfg.decode.max_decoded_ratio)
        self.decoder = Decoder(LocalSchemas.load(cfg.decode.schemas_dir or None), registry_lookup, limits)
        self.transformer = Transformer(cfg.xdm, org_id=cfg.org_id, source_name=cfg.source_name)
        self.max_record_size = cfg.max_record_size
        self._format_of = format_of
        self._logged: set[tuple[str, str]] = set()  # (stage, exception type) whose traceback was logged
        if cfg.crash_on:
            self.decoder.decode = _crashing(self.decoder.decode, *cfg.crash_on)  # type: ignore[method-assign,assignment]

    def run(self, values: Iterable[bytes | None], mark: Any = None) -> list[Outcome]:
        """One outcome per value. Whatever one record raises costs that record only (a dead letter
        naming the stage and the exception type), never the process; a :class:`TransientError`
        (the registry unreachable) is raised: nothing may be decided. ``mark[0]`` (shared memory,
        connector.runtime.crash_marker) is set to each record's index before it is processed."""
        decode = self.decoder.decode
        format_of = self._format_of
        out: list[Outcome] = []
        append = out.append
        for i, value in enumerate(values):
            if mark is not None:
                mark[0] = i
            fmt: str | None = None
            try:
                events = decode(value)
                fmt = format_of(value)  # type: ignore[arg-type] # value is bytes here: decode raised on None
                append(self.events(events, fmt))
            except DecodeError as exc:
                append(Rejected(Stage.DECODE, "DecodeError", exc.reason, exc.detail))
            except TransientError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug or a resource limit hit by this record alone
                append(self._unexpected(exc, Stage.DECODE if fmt is None else Stage.TRANSFORM, fmt))
        return out

    def _unexpected(self, exc: Exception, stage: Stage, fmt: str | None) -> Rejected:
        kind = type(exc).__name__
        if (stage, kind) not in self._logged and len(self._logged) < 100:
            self._logged.add((stage, kind))
            log.error("%s raised %s on a record: dead-lettering it as unexpected_error (traceback logged once per "
                      "stage and type)", stage, kind, exc_info=exc)
        return Rejected(stage, kind, "unexpected_error", f"{kind}: {exc}"[:300], None, fmt)

    def events(self, events: list[dict[str, Any]], fmt: str) -> Outcome:
        """Transform and encode the events of one record."""
        transformer = self.transformer
        transform = transformer.transform
        dropped: list[str] = []
        declined_before = transformer.declined_total
        try:
            if len(events) == 1:
                msgs = transform(events[0])
                dropped = transformer.dropped_identities
            else:
                msgs = []
                for ev in events:
                    msgs += transform(ev)
                    dropped += transformer.dropped_identities
        except TransformError as exc:
            stage = Stage.VALIDATE if exc.reason == "xdm_invalid" else Stage.TRANSFORM
            return Rejected(stage, "TransformError", exc.reason, exc.detail, None, fmt)
        if not msgs:
            return Empty(fmt)
        dumps = orjson.dumps
        try:
            # orjson hands back its output buffer with the slack it grew: ~8 KB of memory for a
            # 1.4 KB body (measured). A body lives as long as its record is buffered, thousands of
            # them: an exact-size copy (~0.3 µs) is what keeps a pipeline's memory to its data.
            bodies = [bytes(memoryview(dumps(x.envelope))) for x in msgs]
        except TypeError as exc:  # a value JSON cannot carry (pre-flight validation off)
            return Rejected(Stage.TRANSFORM, "TransformError", "invalid_value", f"not JSON-serialisable: {exc}",
                            None, fmt)
        size = sum(map(len, bodies)) + len(bodies)
        if size > self.max_record_size:
            return Rejected(Stage.DELIVER, "RecordTooLarge", "record_too_large",
                            f"{size} bytes of XDM exceed the {self.max_record_size}-byte request limit", 413, fmt)
        declined = () if transformer.declined_total == declined_before else tuple(
            str(ev.get("eventName") or "other") for ev in events)
        return Encoded(fmt, bodies, [(x.kind, x.event_type) for x in msgs], size, tuple(dropped), declined)


def _crashing(decode: Callable[[bytes | None], Any], marker: bytes, signum: int) -> Callable[[bytes | None], Any]:
    """``decode``, ending the process on a value that contains ``marker`` (see CRASH_ON_ENV)."""

    def decode_or_crash(value: bytes | None) -> Any:
        if value and marker in value:
            if signum:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            os._exit(CRASH_EXIT_CODE)
        return decode(value)

    return decode_or_crash
