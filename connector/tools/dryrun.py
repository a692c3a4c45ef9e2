"""``capillary-aep transform FILE``: a dry run. Reads Capillary events and prints, one JSON line
each, the streaming envelopes the connector would send — or why a record would be dead-lettered.

Input: one JSON document (pretty-printed or not), a JSON array, JSON lines, an Avro object
container file, or a file of single-object-encoded Avro records (one per line is not possible for
binary, so one record per file). ``-`` reads stdin.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import IO, Any

import orjson
from fastavro import reader as avro_reader

from connector.config import XdmConfig
from connector.decode.decoder import Decoder
from connector.errors import DecodeError, Stage
from connector.processing.record import Encoded, Outcome, RecordProcessor, Rejected

AVRO_CONTAINER_MAGIC = b"Obj\x01"


def read_events(data: bytes, decoder: Decoder) -> Iterator[tuple[int, Any]]:
    """(record number, event dict or a DecodeError) for every record of ``data``."""
    if data.startswith(AVRO_CONTAINER_MAGIC):
        for n, record in enumerate(avro_reader(BytesIO(data)), 1):
            yield n, record
        return
    stripped = data.lstrip()
    if stripped.startswith(b"{") and _one_document(stripped):
        stripped = data = b"[" + stripped + b"]"  # one (pretty-printed) event: a list of one
    if stripped[:1] in (b"\x00", b"\xc3") or stripped.startswith(b"["):
        try:
            for ev in decoder.decode(data):
                yield 1, ev
        except DecodeError as exc:
            yield 1, exc
        return
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            for ev in decoder.decode(line):
                yield n, ev
        except DecodeError as exc:
            yield n, exc


def _one_document(data: bytes) -> bool:
    """Whether ``data`` is one JSON document (e.g. the pretty-printed samples), not JSON lines."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def placeholder_xdm_config(**overrides: Any) -> XdmConfig:
    """An ``XdmConfig`` with placeholder routes (tenant ``capillary``): the dry run's default, and the
    tests' and benchmarks' configuration."""
    values: dict[str, Any] = {
        "tenant_id": "capillary",
        "event": {"dataset_id": "5f1e0c0ffee0000000000001",
                  "schema_id": "https://ns.adobe.com/capillary/schemas/capillary-loyalty-events",
                  "flow_id": "d3b07384-d9a0-4c9b-8f3e-2c1a0e4b5f60"},
        "profile": {"dataset_id": "5f1e0c0ffee0000000000002",
                    "schema_id": "https://ns.adobe.com/capillary/schemas/capillary-loyalty-profiles",
                    "flow_id": "d3b07384-d9a0-4c9b-8f3e-2c1a0e4b5f61"},
    }
    values.update(overrides)
    return XdmConfig(**values)


def dry_run(data: bytes, processor: RecordProcessor, out: IO[bytes], err: IO[str]) -> tuple[int, int]:
    """Write envelopes to ``out`` and rejections to ``err``; returns (messages, rejected records).
    The records go through the connector's own decode → transform → encode (connector.processing.record)."""
    sent = rejected = 0
    for n, item in read_events(data, processor.decoder):
        if isinstance(item, DecodeError):
            outcome: Outcome = Rejected(Stage.DECODE, "DecodeError", item.reason, item.detail)
        else:
            outcome = processor.events([item], "file")
        if type(outcome) is Rejected:
            rejected += 1
            err.write(f"record {n}: dead letter ({outcome.stage}/{outcome.reason}): {outcome.detail}\n")
        elif type(outcome) is Encoded:
            for body in outcome.bodies:
                out.write(body + b"\n")
            sent += len(outcome.bodies)
    return sent, rejected
