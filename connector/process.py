"""Decode → transform → encode: one record's bytes to the JSON bodies of its XDM messages, or the
reason it can never become any. The one implementation, used by the transform workers (and the
consumer thread when there are none), ``capillary-aep transform`` and ``dlq replay --direct``.

No I/O: writer schemas come through ``registry_lookup``, the caller's (the pipeline's registry
client, or the schemas shipped to a worker with its chunks).

Outcomes are small typed records (NamedTuples: as cheap to build and pickle across the worker
pipes as plain tuples, and read by name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from connector.config import DecodeConfig, Settings, XdmConfig
from connector.errors import DecodeError, Stage
from connector.transform import TransformError


class Encoded(NamedTuple):
    """Send these: the record's messages as JSON bodies."""

    format: str  # how the record was encoded (decode.format_of)
    bodies: list[bytes]
    labels: list[tuple[str, str]]  # (kind, event type) per message, for the metrics
    size: int  # bytes the bodies take in a batch request
    dropped: tuple[str, ...] = ()  # identities left out by AEP's guardrails, one reason each


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

    @classmethod
    def from_settings(cls, s: Settings) -> ProcessorSpec:
        return cls(s.decode, s.xdm, s.aep.org_id, s.aep.source_name, s.batch.max_record_size, s.log.level,
                   s.log.format)


class RecordProcessor:
    """Values → outcomes. Raises :class:`RegistryUnavailable` (transient: nothing may be decided)."""

    def __init__(self, cfg: ProcessorSpec, registry_lookup: Callable[[int], str | None] | None = None) -> None:
        # Imported here, not at the top: the consumer process with workers never decodes, and the
        # Avro libraries (cavro brings numpy) would cost it ~15 MB. The forkserver preloads them.
        from connector.avro_schemas import LocalSchemas
        from connector.decode import Decoder, format_of
        from connector.transform import Transformer

        self.decoder = Decoder(LocalSchemas.load(cfg.decode.schemas_dir or None), registry_lookup)
        self.transformer = Transformer(cfg.xdm, org_id=cfg.org_id, source_name=cfg.source_name)
        self.max_record_size = cfg.max_record_size
        self._format_of = format_of

    def run(self, values: Iterable[bytes | None]) -> list[Outcome]:
        decode = self.decoder.decode
        format_of = self._format_of
        out: list[Outcome] = []
        append = out.append
        for value in values:
            try:
                events = decode(value)
            except DecodeError as exc:
                append(Rejected(Stage.DECODE, "DecodeError", exc.reason, exc.detail))
                continue
            append(self.events(events, format_of(value)))  # type: ignore[arg-type] # value is bytes here: decode raised on None
        return out

    def events(self, events: list[dict[str, Any]], fmt: str) -> Outcome:
        """Transform and encode the events of one record."""
        transformer = self.transformer
        transform = transformer.transform
        dropped: list[str] = []
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
            bodies = [dumps(x.envelope) for x in msgs]
        except TypeError as exc:  # a value JSON cannot carry (pre-flight validation off)
            return Rejected(Stage.TRANSFORM, "TransformError", "invalid_value", f"not JSON-serialisable: {exc}",
                            None, fmt)
        size = sum(map(len, bodies)) + len(bodies)
        if size > self.max_record_size:
            return Rejected(Stage.DELIVER, "RecordTooLarge", "record_too_large",
                            f"{size} bytes of XDM exceed the {self.max_record_size}-byte request limit", 413, fmt)
        return Encoded(fmt, bodies, [(x.kind, x.event_type) for x in msgs], size, tuple(dropped))
