"""Decode refuses what it should not read (connector/decode/avro_guard.py): registry schemas that are not
Avro or do not parse, recursive and too deep schemas, and records whose declared counts the bytes
cannot back or whose decoded objects would dwarf them. Each is a DecodeError with its reason, in
bounded time and memory; a record within the limits decodes as fastavro reads it."""

from __future__ import annotations

import io
import time
import tracemalloc
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from support import zigzag

from connector.decode.avro_guard import SCAN_ABOVE, ForeignSchema, Limits, scan, shape
from connector.decode.avro_schemas import LocalSchemas
from connector.decode.decoder import Decoder
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events
from connector.errors import DecodeError


def record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


NODE = record("Node", ("next", ["null", "Node"]))
NULLS = record("Nulls", ("a", {"type": "array", "items": "null"}))
INTS = record("Ints", ("a", {"type": "array", "items": "int"}))
WIDE = record("Wide", ("a", {"type": "array", "items": record("W", *[(f"f{i}", "null") for i in range(1000)],
                                                                  ("x", "int"))}))
TEXT = record("Text", ("s", "string"))


def wire(body: bytes, sid: int = 1) -> bytes:
    return b"\x00" + sid.to_bytes(4, "big") + body


def decoder_for(schema: Any, limits: Limits | None = None) -> tuple[Decoder, list[int]]:
    asked: list[int] = []

    def lookup(sid: int) -> Any:
        asked.append(sid)
        return schema if isinstance(schema, (str, ForeignSchema)) else orjson.dumps(schema).decode()

    return Decoder(None, lookup, limits), asked


def refused(decoder: Decoder, value: bytes, reason: str, within_s: float = 0.5, within_mb: float = 8) -> DecodeError:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DecodeError) as info:
            decoder.decode(value)
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == reason, info.value
    assert took < within_s, f"{took:.2f}s"
    assert peak < within_mb * 2**20, f"{peak / 2**20:.0f} MB"
    return info.value


@pytest.mark.parametrize("kind", ["JSON", "PROTOBUF"])
def test_a_schema_id_of_another_type_is_refused_and_remembered(kind: str) -> None:
    decoder, asked = decoder_for(ForeignSchema(kind))
    err = refused(decoder, wire(b"{}"), "not_avro_schema")
    assert kind in err.detail and "schema id 1" in err.detail
    refused(decoder, wire(b"{}"), "not_avro_schema")
    assert asked == [1]  # the refusal is remembered: the registry is not asked again per record


def test_a_schema_that_does_not_parse_is_invalid_schema() -> None:
    # A subject with references (another subject's type) parses in the registry, not here.
    decoder, asked = decoder_for(orjson.dumps(record("R", ("a", "com.other.Missing"))).decode())
    err = refused(decoder, wire(b"\x00"), "invalid_schema")
    assert "UnknownType" in err.detail
    refused(decoder, wire(b"\x00"), "invalid_schema")
    assert asked == [1]


@pytest.mark.parametrize("schema", [
    NODE,
    record("A", ("b", ["null", record("B", ("a", ["null", "A"]))])),  # mutual recursion
    record("T", ("kids", {"type": "array", "items": "T"})),
])
def test_recursive_schemas_are_refused_before_any_reader_sees_a_record(schema: dict[str, Any]) -> None:
    # 100,000 levels of Node in ~100 KB: fastavro and cavro overflow their C stacks on it (exit 139).
    decoder, _ = decoder_for(schema)
    refused(decoder, wire(b"\x02" * 100_000 + b"\x00"), "recursive_schema")


def test_a_schema_nested_too_deep_is_refused() -> None:
    deep: Any = "int"
    for _ in range(80):
        deep = {"type": "array", "items": deep}
    decoder, _ = decoder_for(record("Deep", ("a", deep)))
    refused(decoder, wire(b"\x00"), "schema_too_deep")


def test_an_array_of_nulls_claiming_fifty_million_items_is_refused_at_once() -> None:
    decoder, _ = decoder_for(NULLS)
    err = refused(decoder, wire(zigzag(50_000_000) + b"\x00"), "too_many_items")
    assert "100000" in err.detail
    # Under the item cap, over the size budget (1 MiB for a small record): refused too.
    refused(decoder, wire(zigzag(99_000) + b"\x00"), "decoded_too_large")
    # Negative block counts (with a block size) are counted the same way.
    refused(decoder, wire(zigzag(-50_000_000) + zigzag(0) + b"\x00"), "too_many_items")


def test_items_of_one_byte_that_decode_large_are_refused() -> None:
    decoder, _ = decoder_for(WIDE)  # each item: 1 byte → a dict of 1001 keys (~50 KB)
    refused(decoder, wire(zigzag(60_000) + b"\x02" * 60_000 + b"\x00"), "decoded_too_large")


@pytest.mark.parametrize(("schema", "body"), [
    (INTS, zigzag(2**40) + b"\x02" * 10 + b"\x00"),  # a count the bytes cannot back
    (TEXT, zigzag(2**40) + b"abc"),  # a length past the end
    (NULLS, zigzag(-3) + zigzag(2**40) + b"\x00"),  # a block size past the end
])
def test_counts_and_lengths_past_the_end_are_corrupt(schema: dict[str, Any], body: bytes) -> None:
    decoder, _ = decoder_for(schema)
    refused(decoder, wire(body), "corrupt_avro")


def test_the_limits_are_configurable_and_records_within_them_decode_as_fastavro_reads_them() -> None:
    value = {"a": [None] * 6}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(NULLS), value)
    body = buf.getvalue()
    assert Decoder(None, {1: orjson.dumps(NULLS).decode()}.get).decode(wire(body)) == [value]
    tight, _ = decoder_for(NULLS, Limits(max_array_items=5))
    refused(tight, wire(body), "too_many_items")
    # The size budget grows with the record: a 2 MB text is 2 MB of bytes, not a bomb.
    big = {"s": "x" * 2_000_000}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(TEXT), big)
    assert len(buf.getvalue()) > SCAN_ABOVE
    assert Decoder(None, {1: orjson.dumps(TEXT).decode()}.get).decode(wire(buf.getvalue())) == [big]
    at_two, _ = decoder_for(TEXT, Limits(max_decoded_ratio=2))
    assert at_two.decode(wire(buf.getvalue())) == [big]  # the budget: 1 MiB, or the ratio × the record's size


def test_limits_reach_the_decoder_from_the_configuration(tmp_path: Any) -> None:
    from harness import write_config

    from connector.config import load_settings
    from connector.processing.record import ProcessorSpec, RecordProcessor, Rejected

    path = write_config(tmp_path / "c.toml", bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9",
                        prefix="g.", group="g", metrics_port=9, extra="")
    s = load_settings(path, decode={"max_array_items": 5}, aep={"authentication_required": False})
    spec = ProcessorSpec.from_settings(s)
    processor = RecordProcessor(spec, {1: orjson.dumps(NULLS).decode()}.get)
    [out] = processor.run([wire(zigzag(6) + b"\x00")])
    assert type(out) is Rejected and (out.stage, out.reason) == ("decode", "too_many_items")


def test_the_scan_accepts_every_capillary_record_and_no_capillary_schema_needs_it() -> None:
    """The scan walks every type the Capillary schemas use without refusing a valid record (large
    records are scanned whatever the schema); small ones are not scanned at all (no cost)."""
    schemas = LocalSchemas.load()
    enc = SampleEncoder(schemas)
    names = set()
    for ev in generate_events(400, seed=7, now_ms=1_760_000_000_000):
        name = ev["eventName"]
        names.add(name)
        writer = schemas.parsed(name)
        sh = shape(writer)
        assert not sh.amplifies, name
        body = enc.encode(ev, "avro-single")[10:]
        scan(sh, body, 0, Limits())
        assert schemaless_reader(io.BytesIO(body), writer) is not None
    assert len(names) > 10


def test_a_scanned_record_keeps_fastavros_reading_of_a_union_index_of_minus_one() -> None:
    schema = record("U", ("u", ["null", "int"]), ("a", {"type": "array", "items": "null"}))
    body = zigzag(-1) + zigzag(5) + zigzag(2) + b"\x00"  # fastavro reads index -1 as the last branch
    want = schemaless_reader(io.BytesIO(body), parse_schema(schema))
    assert Decoder(None, {1: orjson.dumps(schema).decode()}.get).decode(wire(body)) == [want]
