"""Decode stage: record value bytes → Capillary event dicts. Pure: schema lookups that need I/O are
injected (``registry_lookup``), so this module never touches the network itself.

Three encodings are recognised by their first bytes:

* Confluent wire format: ``00`` + 4-byte big-endian schema id + Avro body (writer schema from the
  Schema Registry, parsed once per id and cached);
* Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + Avro body (writer schema
  from the local ``schemas/`` directory);
* JSON: an object (one event) or an array of objects (several events), as Capillary's own Kafka
  blocks and webhooks publish.

Avro records are read with writer→reader resolution against the local schema of the same name when
one exists, so producers on an older or newer schema version keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import orjson
from fastavro import schemaless_reader

from connector.avro_schemas import LocalSchemas
from connector.errors import DecodeError

WIRE_MAGIC = 0
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_JSON_STARTS = frozenset(b"{[ \t\r\n")

# schema id → parsed writer schema, or None if the registry does not know the id.
RegistryLookup = Callable[[int], Any]


class Decoder:
    """Turns one record value into a list of event dicts (one for Avro, one or more for JSON)."""

    def __init__(self, local: LocalSchemas | None, registry_lookup: RegistryLookup | None = None) -> None:
        self._local = local
        self._registry_lookup = registry_lookup
        self._by_id: dict[int, tuple[Any, Any]] = {}  # schema id → (writer, reader)
        self._readers: dict[str, Any] = {}
        if local is not None:
            for name in local.event_names():
                parsed = local.parsed(name)
                self._readers[parsed["name"]] = parsed

    def decode(self, value: bytes | None) -> list[dict[str, Any]]:
        if not value:
            raise DecodeError("empty_value", "record has no value")
        first = value[0]
        if first == WIRE_MAGIC:
            return [self._decode_wire(value)]
        if value[:2] == SINGLE_OBJECT_MAGIC:
            return [self._decode_single_object(value)]
        if first in _JSON_STARTS:
            return self._decode_json(value)
        raise DecodeError("unknown_format", f"first byte 0x{first:02x} is neither Avro framing nor JSON")

    def _decode_wire(self, value: bytes) -> dict[str, Any]:
        if len(value) < 5:
            raise DecodeError("corrupt_avro", "wire-format record shorter than its 5-byte header")
        schema_id = int.from_bytes(value[1:5], "big")
        schemas = self._by_id.get(schema_id)
        if schemas is None:
            if self._registry_lookup is None:
                raise DecodeError("no_registry", f"schema id {schema_id}: no schema registry configured")
            writer = self._registry_lookup(schema_id)  # may raise RegistryUnavailable (transient)
            if writer is None:
                raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not in the registry")
            reader = self._readers.get(writer.get("name")) if isinstance(writer, dict) else None
            if reader is not None and reader == writer:
                # fastavro drops a reader schema equal to the writer's, but only after comparing the
                # two (deeply) on every record: as costly as decoding. Decide once per schema id.
                reader = None
            schemas = self._by_id[schema_id] = (writer, reader)
        return self._read(value, 5, *schemas)

    def _decode_single_object(self, value: bytes) -> dict[str, Any]:
        if len(value) < 10:
            raise DecodeError("corrupt_avro", "single-object record shorter than its 10-byte header")
        writer = self._local.by_fingerprint(value[2:10]) if self._local is not None else None
        if writer is None:
            raise DecodeError("unknown_fingerprint", f"fingerprint {value[2:10].hex()} matches no local schema")
        return self._read(value, 10, writer, None)

    @staticmethod
    def _read(value: bytes, start: int, writer: Any, reader: Any) -> dict[str, Any]:
        buf = BytesIO(value)
        buf.seek(start)
        try:
            record = schemaless_reader(buf, writer, reader) if reader is not None else schemaless_reader(buf, writer)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
            raise DecodeError("corrupt_avro", f"{type(exc).__name__}: {exc}"[:300]) from None
        if buf.tell() != len(value):
            raise DecodeError("corrupt_avro", f"{len(value) - buf.tell()} trailing bytes after the Avro record")
        if not isinstance(record, dict):
            raise DecodeError("corrupt_avro", "Avro value is not a record")
        return record

    @staticmethod
    def _decode_json(value: bytes) -> list[dict[str, Any]]:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", str(exc)[:300]) from None
        if isinstance(doc, dict):
            return [doc]
        if isinstance(doc, list) and doc and all(isinstance(e, dict) for e in doc):
            return doc
        raise DecodeError("invalid_json", "JSON value is not an object or a non-empty array of objects")
