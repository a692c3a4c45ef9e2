"""The Capillary event Avro schemas shipped in ``schemas/``, loaded once.

Layout: ``schemas/common/<Type>.avsc`` holds one shared named type each (``CustomerIdentifiers``,
``EnteredBy``, ...); ``schemas/<eventName>.avsc`` holds one event envelope that refers to the shared
types by full name. Each event schema is made self-contained by inlining every shared type at its
first use (Avro's rule: the first occurrence defines, later ones refer), so it can be parsed on its
own, registered in a Schema Registry, and fingerprinted for single-object encoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"  # package data: installed with the wheel
NAMESPACE = "com.capillary.events"


class SchemaLoadError(Exception):
    """The schema directory is missing or one of its files is not a valid Avro schema."""


class LocalSchemas:
    """Parsed event schemas by Capillary event name and by CRC-64-AVRO fingerprint."""

    def __init__(self, schemas: dict[str, dict[str, Any]]) -> None:
        self._raw = schemas  # event name → self-contained schema JSON (shared types inlined)
        self._parsed: dict[str, Any] = {}
        self._json: dict[str, str] = {}
        self._fingerprints: dict[str, bytes] = {}
        self._by_fp: dict[bytes, str] = {}
        for name, schema in schemas.items():
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
            self._fingerprints[name] = fp
            self._by_fp[fp] = name

    @classmethod
    def load(cls, dir: str | Path | None = None) -> LocalSchemas:
        root = Path(dir) if dir is not None else DEFAULT_DIR
        if not root.is_dir():
            raise SchemaLoadError(f"Avro schema directory {str(root)!r} does not exist")
        shared: dict[str, Any] = {}
        common = root / "common"
        for path in sorted(common.glob("*.avsc")) if common.is_dir() else ():
            schema = _read_json(path)
            shared[_full_name(schema)] = schema
        events: dict[str, dict[str, Any]] = {}
        for path in sorted(root.glob("*.avsc")):
            inlined = _inline(_read_json(path), shared, set())
            try:
                parse_schema(inlined, _write_hint=False)
            except Exception as exc:  # noqa: BLE001 - fastavro raises several types for bad schemas
                raise SchemaLoadError(f"{path.name}: {exc}") from None
            events[path.stem] = inlined
        if not events:
            raise SchemaLoadError(f"no event schemas (*.avsc) in {str(root)!r}")
        return cls(events)

    def event_names(self) -> list[str]:
        return sorted(self._raw)

    def parsed(self, event_name: str) -> Any:
        """The fastavro parsed schema of one event (parsed on first use, then cached)."""
        parsed = self._parsed.get(event_name)
        if parsed is None:
            parsed = self._parsed[event_name] = parse_schema(self._raw[self._known(event_name)])
        return parsed

    def schema_json(self, event_name: str) -> str:
        """The full self-contained schema (docs and defaults kept) as compact, deterministic JSON."""
        text = self._json.get(event_name)
        if text is None:
            text = self._json[event_name] = json.dumps(
                self._raw[self._known(event_name)], separators=(",", ":"), ensure_ascii=False
            )
        return text

    def fingerprint(self, event_name: str) -> bytes:
        """8-byte CRC-64-AVRO fingerprint of the Parsing Canonical Form, little-endian."""
        return self._fingerprints[self._known(event_name)]

    def by_fingerprint(self, fp: bytes) -> Any | None:
        name = self._by_fp.get(bytes(fp))
        return self.parsed(name) if name is not None else None

    def event_name_of(self, fp: bytes) -> str | None:
        return self._by_fp.get(bytes(fp))

    def encode(self, event_name: str, record: dict[str, Any]) -> bytes:
        """Schemaless Avro body of one record."""
        buf = BytesIO()
        schemaless_writer(buf, self.parsed(event_name), record)
        return buf.getvalue()

    def encode_single_object(self, event_name: str, record: dict[str, Any]) -> bytes:
        """Avro single-object encoding: ``C3 01`` + fingerprint + schemaless body."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint(event_name) + self.encode(event_name, record)

    def decode_single_object(self, value: bytes) -> tuple[str, dict[str, Any]]:
        """Inverse of :meth:`encode_single_object` (for tests and tools): ``(event name, record)``."""
        if value[:2] != SINGLE_OBJECT_MAGIC or len(value) < 10:
            raise ValueError("not an Avro single-object encoded value")
        name = self._by_fp.get(value[2:10])
        if name is None:
            raise ValueError(f"fingerprint {value[2:10].hex()} matches no local schema")
        buf = BytesIO(value)
        buf.seek(10)
        return name, schemaless_reader(buf, self.parsed(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.event_names())

    def _known(self, event_name: str) -> str:
        if event_name not in self._raw:
            raise KeyError(f"no Avro schema for event {event_name!r}")
        return event_name


@lru_cache(maxsize=1)
def default_schemas() -> LocalSchemas:
    return LocalSchemas.load()


def encode_single_object(event_name: str, record: dict[str, Any], schemas: LocalSchemas | None = None) -> bytes:
    """Encode ``record`` with the event's schema (packaged schemas unless ``schemas`` is given)."""
    return (schemas or default_schemas()).encode_single_object(event_name, record)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaLoadError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or "name" not in doc:
        raise SchemaLoadError(f"{path}: not a named Avro schema")
    return doc


def _full_name(schema: dict[str, Any]) -> str:
    name = schema["name"]
    return name if "." in name else f"{schema.get('namespace', NAMESPACE)}.{name}"


def _inline(node: Any, shared: dict[str, Any], defined: set[str]) -> Any:
    """Copy ``node`` replacing the first reference to each shared type by its definition."""
    if isinstance(node, str):
        full = node if "." in node else f"{NAMESPACE}.{node}"
        if full in shared and full not in defined:
            defined.add(full)
            return _inline(shared[full], shared, defined)
        return node
    if isinstance(node, list):
        return [_inline(n, shared, defined) for n in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            defined.add(_full_name(node))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("type", "items", "values", "fields"):
                out[key] = _inline(value, shared, defined)
            else:
                out[key] = value  # names, docs and defaults are never type references
        return out
    return node
