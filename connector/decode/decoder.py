"""Decode stage: record value bytes → Capillary event dicts. Pure: schema lookups that need I/O are
injected (``registry_lookup``), so this module never touches the network itself.

Three encodings are recognised by their first bytes:

* Confluent wire format: ``00`` + 4-byte big-endian schema id + Avro body (writer schema from the
  Schema Registry, fetched once per id and cached);
* Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + Avro body (writer schema
  from the local ``schemas/`` directory);
* JSON: an object (one event) or an array of objects (several events), as Capillary's own Kafka
  blocks and webhooks publish.

Avro records are read with writer→reader resolution against the local schema of the same name when
one exists, so producers on an older or newer schema version keep working.

Two Avro readers are used. fastavro's ``schemaless_reader`` interprets the schema for every record
(about 40-60 µs for a 400-byte Capillary event), so when a writer schema needs no resolution (it has
the same Parsing Canonical Form as the local reader schema of its name, or there is no local reader)
the record is read by ``cavro`` instead: the schema compiled once (per process, by schema text,
then kept per schema id / fingerprint), about three times cheaper, returning the same dicts.
fastavro stays the reference reader:

* for writer→reader resolution (a writer schema that differs from the local reader's);
* for schemas where the two libraries are not known to agree: any ``logicalType`` (cavro leaves
  ``local-timestamp-*`` as numbers), arrays whose items can take zero bytes (cavro does not read
  negative Avro block counts, and on such items would loop), or a schema cavro refuses to parse;
* for every record cavro does not read cleanly (an error, bytes left over, not a record): the record
  is read again by fastavro, whose verdict (the record, or the ``corrupt_avro`` detail) is final.
  Corrupt records therefore cost two reads, and a record decodes exactly as fastavro decodes it
  (fastavro also accepts a few malformed encodings cavro rejects, e.g. a union index of -1).

What is never read (``connector.decode.avro_guard``, each a ``DecodeError``): a registry schema that is not
Avro (``not_avro_schema``), one that does not parse (``invalid_schema``), a recursive or too deeply
nested one (``recursive_schema``, ``schema_too_deep``: a deep record would overflow the readers' C
stacks), and a record whose declared counts the bytes cannot back or whose decoded objects would
be far larger than the record (``corrupt_avro``: a count or length past the end; ``too_many_items``, ``decoded_too_large``).
Refusals are remembered per schema id.

cavro is optional: it has wheels only for CPython ≤ 3.12 on x86-64 Linux (pyproject installs it only
there). Without it every record is read by fastavro, with the same results, about three times slower.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from io import BytesIO
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from connector.decode.avro_guard import ForeignSchema, Limits, Shape, needs_scan, scan, shape
from connector.decode.avro_schemas import LocalSchemas
from connector.errors import DecodeError

WIRE_MAGIC = 0
SINGLE_OBJECT_MAGIC = b"\xc3\x01"


def format_of(value: bytes) -> str:
    """The encoding label of a value that decoded (so it is not empty), from its framing bytes."""
    if value[0] == WIRE_MAGIC:
        return "avro-registry"
    return "avro-single" if value[:2] == SINGLE_OBJECT_MAGIC else "json"


_JSON_STARTS = frozenset(b"{[ \t\r\n")

# schema id → writer schema, or None if the registry does not know the id. The schema may be given
# as its JSON text (what ``connector.decode.registry.RegistryLookup`` returns), as decoded JSON, or as a
# fastavro parsed schema; a registry schema of another type is a ``ForeignSchema`` (dead-lettered).
RegistryLookup = Callable[[int], Any]
_MAX_REFUSED = 10_000  # schema ids remembered as unreadable (anyone can pick ids: the map is bounded)

try:
    import cavro
except ImportError:  # no wheel for this CPU or Python (pyproject's marker): fastavro reads every record
    cavro = None
HAVE_CAVRO = cavro is not None
if cavro is not None:
    _CAVRO_OPTIONS = cavro.Options(record_decodes_to_dict=True)
    # Read after the record: fails (EOFError) exactly when the record used up the whole body.
    _ONE_MORE_BYTE = cavro.Schema('{"type": "fixed", "name": "trailing", "size": 1}')
    _MemoryReader = cavro.MemoryReader

# (cavro schema or None, fastavro writer, fastavro reader or None, the writer's Shape)
_Plan = tuple[Any, Any, Any, Shape]


class Decoder:
    """Turns one record value into a list of event dicts (one for Avro, one or more for JSON)."""

    def __init__(self, local: LocalSchemas | None, registry_lookup: RegistryLookup | None = None,
                 limits: Limits | None = None) -> None:
        self._local = local
        self._registry_lookup = registry_lookup
        self._limits = limits or Limits()
        self._by_id: dict[int, _Plan] = {}  # schema id → plan
        self._refused: dict[int, DecodeError] = {}  # schema id → why its records are not read
        self._by_fp: dict[bytes, _Plan] = {}  # single-object fingerprint → plan
        self._readers: dict[str, Any] = {}  # full record name → fastavro parsed local schema
        self._reader_forms: dict[str, str | None] = {}  # full record name → Parsing Canonical Form
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
        plan = self._by_id.get(schema_id)
        if plan is None:
            refused = self._refused.get(schema_id)
            if refused is not None:
                raise DecodeError(refused.reason, refused.detail)
            if self._registry_lookup is None:
                raise DecodeError("no_registry", f"schema id {schema_id}: no schema registry configured")
            found = self._registry_lookup(schema_id)  # may raise RegistryUnavailable (transient)
            if found is None:
                raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not in the registry")
            try:
                if isinstance(found, ForeignSchema):
                    raise DecodeError("not_avro_schema", f"a {found.schema_type} schema, not Avro")
                plan = self._by_id[schema_id] = self._plan(found)
            except DecodeError as exc:
                if len(self._refused) >= _MAX_REFUSED:
                    self._refused.clear()
                self._refused[schema_id] = exc
                raise DecodeError(exc.reason, f"schema id {schema_id}: {exc.detail}") from None
        return self._read(value, 5, plan)

    def _decode_single_object(self, value: bytes) -> dict[str, Any]:
        if len(value) < 10:
            raise DecodeError("corrupt_avro", "single-object record shorter than its 10-byte header")
        fp = value[2:10]
        plan = self._by_fp.get(fp)
        if plan is None:
            name = self._local.event_name_of(fp) if self._local is not None else None
            if name is None:
                raise DecodeError("unknown_fingerprint", f"fingerprint {fp.hex()} matches no local schema")
            # The writer is the local schema itself: nothing to resolve.
            writer = self._local.parsed(name)
            plan = self._by_fp[fp] = (_compiled(self._local.schema_json(name)), writer, None, shape(writer))
        return self._read(value, 10, plan)

    def _plan(self, found: Any) -> _Plan:
        """Decide once per schema id how its records are read. Raises :class:`DecodeError` for a
        schema that is not to be read: one that does not parse, a recursive or too deep one."""
        try:
            text = _schema_text(found)
            writer, form = _parsed_writer(text)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types (UnknownType, SchemaParseException…)
            raise DecodeError("invalid_schema", f"{type(exc).__name__}: {exc}"[:300]) from None
        guard = _shape(text)
        name = writer.get("name") if isinstance(writer, dict) else None
        reader = self._readers.get(name) if name is not None else None
        if reader is not None and self._reader_form(name) == form:
            # Same canonical form: resolution would be the identity (only docs, defaults or aliases
            # can differ). fastavro would also drop a reader equal to the writer, but only after a
            # deep comparison on every record.
            reader = None
        if reader is not None:
            return (None, writer, reader, guard)  # resolution: fastavro
        return (_compiled(text), writer, None, guard)

    def _reader_form(self, name: str) -> str | None:
        """The local reader's Parsing Canonical Form; None if it has logical types: the form leaves
        them out, so rather than compare them, writers of such a reader are always resolved by fastavro."""
        if name not in self._reader_forms:
            reader = self._readers[name]
            self._reader_forms[name] = None if _has_logical_type(reader) else to_parsing_canonical_form(reader)
        return self._reader_forms[name]

    def _read(self, value: bytes, start: int, plan: _Plan) -> dict[str, Any]:
        fast, writer, reader, guard = plan
        if needs_scan(guard, len(value) - start):
            scan(guard, value, start, self._limits)  # raises for counts the bytes cannot back
        if fast is not None:
            buf = _MemoryReader(value[start:])
            try:
                record = fast.binary_read(buf)
            except Exception:  # noqa: BLE001, S110 - cavro's verdict is not final: fastavro reads it again
                pass
            else:
                try:
                    _ONE_MORE_BYTE.binary_read(buf)
                except EOFError:
                    if type(record) is dict:
                        return record
            # An error, bytes left over, or not a record: fastavro decides (and words the error).
        return _read_fastavro(value, start, writer, reader)

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


def _read_fastavro(value: bytes, start: int, writer: Any, reader: Any) -> dict[str, Any]:
    buf = BytesIO(value)
    buf.seek(start)
    try:
        record = schemaless_reader(buf, writer, reader) if reader is not None else schemaless_reader(buf, writer)
    except MemoryError:
        raise  # not corrupt: the process's memory limit (the caller dead-letters it as such)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
        raise DecodeError("corrupt_avro", f"{type(exc).__name__}: {exc}"[:300]) from None
    if buf.tell() != len(value):
        raise DecodeError("corrupt_avro", f"{len(value) - buf.tell()} trailing bytes after the Avro record")
    if not isinstance(record, dict):
        raise DecodeError("corrupt_avro", "Avro value is not a record")
    return record


# Schemas prepared once per process, by schema text, and shared by every Decoder in it (they are
# never modified): a fresh Decoder, or a fresh id for a schema already seen, costs no parse.
_PREPARED_SCHEMAS = 512


def _schema_text(schema: Any) -> str:
    """The writer schema as JSON text (fastavro's own keys dropped from a parsed schema)."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, bytes):
        return schema.decode()
    return orjson.dumps(_without_fastavro_keys(schema)).decode()


def _plain_schema(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # a bare primitive type name


@lru_cache(maxsize=_PREPARED_SCHEMAS)
def _parsed_writer(text: str) -> tuple[Any, str]:
    """fastavro's parsed schema and the Parsing Canonical Form of one writer schema."""
    writer = parse_schema(_plain_schema(text))
    return writer, to_parsing_canonical_form(writer)


@lru_cache(maxsize=_PREPARED_SCHEMAS)
def _shape(text: str) -> Shape:
    """The writer's Shape; raises DecodeError for a recursive or too deep one (not cached: the
    Decoder remembers the refusal per schema id)."""
    return shape(_parsed_writer(text)[0])


@lru_cache(maxsize=_PREPARED_SCHEMAS)
def _compiled(text: str) -> Any | None:
    return _compile(_plain_schema(text))


def _without_fastavro_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_fastavro_keys(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_without_fastavro_keys(v) for v in node]
    return node


def _has_logical_type(node: Any) -> bool:
    if isinstance(node, dict):
        return "logicalType" in node or any(_has_logical_type(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_logical_type(v) for v in node)
    return False


def _compile(schema: Any) -> Any | None:
    """A cavro schema for a record schema it reads exactly like fastavro, else None (use fastavro)."""
    if cavro is None:
        return None
    if not (isinstance(schema, dict) and schema.get("type") == "record") or not _cavro_safe(schema, {}):
        return None
    try:
        return cavro.Schema(schema, options=_CAVRO_OPTIONS, parse_json=False)
    except Exception:  # noqa: BLE001 - cavro is stricter than fastavro about some schemas
        return None


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _cavro_safe(node: Any, named: dict[str, Any]) -> bool:
    """No logical types anywhere, and no array whose items can be encoded in zero bytes."""
    if isinstance(node, list):
        return all(_cavro_safe(n, named) for n in node)
    if isinstance(node, str):
        return True
    if not isinstance(node, dict) or "logicalType" in node:
        return False
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        named[node.get("name", "")] = node
    if kind in ("record", "error"):
        return all(isinstance(f, dict) and _cavro_safe(f.get("type"), named) for f in node.get("fields", ()))
    if kind == "array":
        items = node.get("items")
        return _cavro_safe(items, named) and _min_size(items, named, set()) > 0
    if kind == "map":
        return _cavro_safe(node.get("values"), named)
    if kind in ("enum", "fixed"):
        return True
    return _cavro_safe(kind, named) if isinstance(kind, (dict, list)) else kind in _PRIMITIVES


def _min_size(node: Any, named: dict[str, Any], seen: set[str]) -> int:
    """Fewest bytes a value of this type can take (0 or more; exact enough to tell zero from not)."""
    if isinstance(node, list):  # union: the branch index takes at least one byte
        return 1
    if isinstance(node, str):
        if node == "null":
            return 0
        if node in _PRIMITIVES:
            return 1
        target = _lookup_named(node, named)
        if target is None or node in seen:
            return 0  # not found (or a record containing itself): let fastavro read it
        return _min_size(target, named, seen | {node})
    if not isinstance(node, dict):
        return 1
    kind = node.get("type")
    if kind in ("record", "error"):
        return sum(_min_size(f.get("type"), named, seen) for f in node.get("fields", ()))
    if kind == "fixed":
        return int(node.get("size", 0))
    if kind in ("enum", "array", "map"):
        return 1
    return _min_size(kind, named, seen)


def _lookup_named(name: str, named: dict[str, Any]) -> Any | None:
    if name in named:
        return named[name]
    short = name.rsplit(".", 1)[-1]
    for full, node in named.items():
        if full.rsplit(".", 1)[-1] == short:
            return node
    return None
