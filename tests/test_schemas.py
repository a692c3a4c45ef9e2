"""The Capillary Avro schemas: layout, loading, fingerprints, round trips and schema evolution."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from connector.decode.avro_schemas import DEFAULT_DIR, LocalSchemas, SchemaLoadError, encode_single_object
from connector.dev.samples import generate_events
from connector.transform import EVENT_NAMES

NOW_MS = 1_760_000_000_000


@pytest.fixture(scope="module")
def schemas() -> LocalSchemas:
    return LocalSchemas.load()


@pytest.fixture(scope="module")
def samples() -> list[dict[str, Any]]:
    return (generate_events(300, seed=5, now_ms=NOW_MS)
            + generate_events(240, seed=6, now_ms=NOW_MS, event_names=list(EVENT_NAMES)))


def _rabin64(data: bytes) -> bytes:
    """CRC-64-AVRO as the Avro specification writes it, little-endian (single-object encoding)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def test_one_schema_per_event_and_nothing_else(schemas: LocalSchemas) -> None:
    assert set(schemas.event_names()) == set(EVENT_NAMES)
    assert len(EVENT_NAMES) == 24


def test_shared_types_are_defined_once_in_common(schemas: LocalSchemas) -> None:
    common = {json.loads(p.read_text())["name"] for p in (DEFAULT_DIR / "common").glob("*.avsc")}
    assert {"CustomerIdentifiers", "EnteredBy", "TriggeringActivity", "LoyaltyProgramDetails"} <= common

    def defined(node: Any, acc: set[str]) -> set[str]:
        if isinstance(node, dict):
            if node.get("type") == "record":
                acc.add(node["name"])
            for value in node.values():
                defined(value, acc)
        elif isinstance(node, list):
            for value in node:
                defined(value, acc)
        return acc

    for path in DEFAULT_DIR.glob("*.avsc"):
        assert not defined(json.loads(path.read_text())["fields"], set()) & common, path.name


def test_optional_fields_are_null_unions_with_null_default() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "record":
                for field in node["fields"]:
                    kind = field["type"]
                    if isinstance(kind, list):
                        assert kind[0] == "null" and field.get("default", "missing") is None, f"{where}.{field['name']}"
                    walk(kind, f"{where}.{field['name']}")
            else:
                for value in node.values():
                    walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in [*DEFAULT_DIR.glob("*.avsc"), *(DEFAULT_DIR / "common").glob("*.avsc")]:
        walk(json.loads(path.read_text()), path.stem)


def test_envelope_field_names_match_capillary(schemas: LocalSchemas) -> None:
    expected = ["eventName", "eventId", "eventLogId", "orgId", "refId", "apiRequestId", "createdAt",
                "loyaltyEventId", "traceAttributes", "data"]
    for name in schemas.event_names():
        schema = json.loads(schemas.schema_json(name))
        assert [f["name"] for f in schema["fields"]] == expected
        assert schema["namespace"] == "com.capillary.events"


def test_schema_json_is_self_contained_and_fingerprinted_per_spec(schemas: LocalSchemas) -> None:
    fingerprints = set()
    for name in schemas.event_names():
        standalone = parse_schema(json.loads(schemas.schema_json(name)))  # no named types needed
        canonical = to_parsing_canonical_form(standalone)
        fp = schemas.fingerprint(name)
        assert len(fp) == 8 and fp == _rabin64(canonical.encode())
        assert schemas.by_fingerprint(fp) is schemas.parsed(name)
        fingerprints.add(fp)
    assert len(fingerprints) == len(schemas.event_names())
    assert schemas.by_fingerprint(b"\0" * 8) is None


def test_parsed_schemas_are_cached(schemas: LocalSchemas) -> None:
    assert schemas.parsed("pointsIssued") is schemas.parsed("pointsIssued")
    with pytest.raises(KeyError, match="no Avro schema"):
        schemas.parsed("noSuchEvent")


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError, match="does not exist"):
        LocalSchemas.load(tmp_path / "absent")
    with pytest.raises(SchemaLoadError, match="no event schemas"):
        LocalSchemas.load(tmp_path)


def test_a_broken_schema_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "Broken", "fields": [{"name": "x", "type": "nope"}]}')
    with pytest.raises(SchemaLoadError, match="broken.avsc"):
        LocalSchemas.load(tmp_path)


def test_every_sample_is_valid_and_round_trips(schemas: LocalSchemas, samples: list[dict[str, Any]]) -> None:
    for event in samples:
        name = event["eventName"]
        parsed = schemas.parsed(name)
        assert validate(event, parsed, raise_errors=True)
        buf = BytesIO()
        schemaless_writer(buf, parsed, event)
        buf.seek(0)
        assert _without_nones(schemaless_reader(buf, parsed)) == _without_nones(event)
        framed = schemas.encode_single_object(name, event)
        assert framed[:2] == b"\xc3\x01" and framed[2:10] == schemas.fingerprint(name)
        decoded_name, record = schemas.decode_single_object(framed)
        assert decoded_name == name and _without_nones(record) == _without_nones(event)


def test_module_level_encode_uses_the_packaged_schemas(schemas: LocalSchemas, samples: list[dict[str, Any]]) -> None:
    event = samples[0]
    assert encode_single_object(event["eventName"], event) == schemas.encode_single_object(event["eventName"], event)


def _older(schema: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The same event schema as an older version would have been: optional ``data`` fields not yet there."""
    old = json.loads(json.dumps(schema))
    data = next(f for f in old["fields"] if f["name"] == "data")
    record = data["type"]
    removed = {f["name"] for f in record["fields"] if isinstance(f["type"], list)}
    record["fields"] = [f for f in record["fields"] if f["name"] not in removed]
    old["fields"] = [f for f in old["fields"] if not isinstance(f["type"], list)]
    return old, removed


def test_records_written_with_an_older_schema_decode_with_the_current_one(
    schemas: LocalSchemas, samples: list[dict[str, Any]]
) -> None:
    seen = set()
    for event in samples:
        name = event["eventName"]
        if name in seen:
            continue
        seen.add(name)
        current = json.loads(schemas.schema_json(name))
        old_schema, removed = _older(current)
        if not removed:
            continue
        writer = parse_schema(old_schema)
        old_event = {k: v for k, v in event.items() if k in {f["name"] for f in old_schema["fields"]}}
        old_event["data"] = {k: v for k, v in event["data"].items() if k not in removed}
        buf = BytesIO()
        schemaless_writer(buf, writer, old_event)
        buf.seek(0)
        decoded = schemaless_reader(buf, writer, schemas.parsed(name))
        assert all(decoded["data"][field] is None for field in removed)
        assert decoded["eventId"] is None and decoded["traceAttributes"] is None  # defaults filled in
        assert _without_nones(decoded) == _without_nones(old_event)
    assert seen == set(EVENT_NAMES)


def test_records_written_with_a_newer_schema_decode_with_the_current_one(schemas: LocalSchemas) -> None:
    """Forward compatibility: a producer that already sends a new optional field."""
    current = json.loads(schemas.schema_json("pointsIssued"))
    newer = json.loads(json.dumps(current))
    newer["fields"].append({"name": "tenantRegion", "type": ["null", "string"], "default": None})
    event = generate_events(1, seed=9, event_names=["pointsIssued"], now_ms=NOW_MS)[0]
    buf = BytesIO()
    schemaless_writer(buf, parse_schema(newer), {**event, "tenantRegion": "apac"})
    buf.seek(0)
    decoded = schemaless_reader(buf, parse_schema(newer), schemas.parsed("pointsIssued"))
    assert _without_nones(decoded) == _without_nones(event)


def test_the_decoder_reads_single_object_records(schemas: LocalSchemas, samples: list[dict[str, Any]]) -> None:
    decode = pytest.importorskip("connector.decode.decoder")
    decoder = decode.Decoder(schemas)
    event = samples[1]
    [record] = decoder.decode(schemas.encode_single_object(event["eventName"], event))
    assert _without_nones(record) == _without_nones(event)
