"""The decoder's cavro fast path reads every record exactly as fastavro does: same dicts (same key
order), same verdict on corrupt input, fastavro kept for writer→reader resolution."""

from __future__ import annotations

import copy
import json
import random
import time
from io import BytesIO
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from connector.decode import decoder as decode
from connector.decode.avro_schemas import LocalSchemas
from connector.decode.decoder import Decoder
from connector.decode.registry import RegistryLookup
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events
from connector.errors import DecodeError, RegistryUnavailable
from connector.transform import EVENT_NAMES

NOW_MS = 1_760_000_000_000
SEEDS = (1, 2, 3, 17, 101)


class _StubRegistry:
    """Schema Registry stand-in for ``SampleEncoder``: ids by registration order, texts kept."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}

    def register_schema(self, _subject: str, schema: Any) -> int:
        sid = len(self.texts) + 1
        self.texts[sid] = schema.schema_str
        return sid


@pytest.fixture(scope="module")
def schemas() -> LocalSchemas:
    return LocalSchemas.load()


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    out = []
    for seed in SEEDS:
        out += generate_events(200, seed=seed, now_ms=NOW_MS)
        out += generate_events(96, seed=seed, now_ms=NOW_MS, event_names=list(EVENT_NAMES))
    assert {e["eventName"] for e in out} == set(EVENT_NAMES)
    return out


@pytest.fixture(scope="module")
def encoder(schemas: LocalSchemas) -> SampleEncoder:
    from confluent_kafka.schema_registry import Schema

    enc = SampleEncoder(schemas)
    enc._registry = _StubRegistry()
    enc._schema_cls = Schema
    return enc


def _registry_texts(encoder: SampleEncoder) -> dict[int, str]:
    return encoder._registry.texts


def _reference(body: bytes, writer: Any, reader: Any = None) -> dict[str, Any]:
    buf = BytesIO(body)
    record = schemaless_reader(buf, writer, reader) if reader is not None else schemaless_reader(buf, writer)
    assert buf.tell() == len(body)
    return record


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types with the same key order everywhere (what the transform and the
    DLQ see); a NaN equals a NaN (damaged doubles can decode to one)."""
    return repr(a) == repr(b)


def _body(schemas: LocalSchemas, event: dict[str, Any]) -> bytes:
    return schemas.encode(event["eventName"], event)


# --- the fast path reads every sample as fastavro does -------------------------------------------


def test_every_sample_decodes_as_fastavro_does_in_both_framings(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [(e, encoder.encode(e, "avro-registry"), encoder.encode(e, "avro-single")) for e in events]
    decoder = Decoder(schemas, _registry_texts(encoder).get)

    def no_fallback(*_a: Any) -> Any:
        raise AssertionError("a valid record fell back to fastavro")

    if decode.HAVE_CAVRO:
        monkeypatch.setattr(decode, "_read_fastavro", no_fallback)
    for event, wire, single in frames:
        expected = _reference(_body(schemas, event), schemas.parsed(event["eventName"]))
        assert _same(decoder.decode(wire), [expected])
        assert _same(decoder.decode(single), [expected])
    # Every schema id and fingerprint went the cavro way (fastavro's, where cavro is not installed).
    assert len(decoder._by_id) == len(EVENT_NAMES)
    assert all((plan[0] is not None) == decode.HAVE_CAVRO for plan in decoder._by_id.values())
    assert all((plan[0] is not None) == decode.HAVE_CAVRO for plan in decoder._by_fp.values())


@pytest.mark.parametrize("form", ["text", "json", "fastavro"])
def test_the_registry_lookup_may_return_text_json_or_a_parsed_schema(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder, form: str
) -> None:
    texts = _registry_texts(encoder)
    frames = [(e, encoder.encode(e, "avro-registry")) for e in events[:300]]
    convert = {"text": lambda t: t, "json": orjson.loads, "fastavro": lambda t: parse_schema(orjson.loads(t))}[form]
    decoder = Decoder(schemas, lambda sid: convert(texts[sid]) if sid in texts else None)
    for event, wire in frames:
        assert _same(decoder.decode(wire), [_reference(_body(schemas, event), schemas.parsed(event["eventName"]))])
    assert all((plan[0] is not None) == decode.HAVE_CAVRO for plan in decoder._by_id.values())


def test_registry_lookup_returns_the_schema_text_or_the_type_of_a_foreign_one() -> None:
    from confluent_kafka.schema_registry import Schema

    from connector.decode.avro_guard import ForeignSchema

    text = '{"type": "record", "name": "r", "fields": []}'
    served = {7: Schema(text, "AVRO"), 8: Schema(text, None), 9: Schema('{"type": "object"}', "JSON"),
              10: Schema("syntax = \"proto3\";", "PROTOBUF")}

    class Client:
        def get_schema(self, schema_id: int) -> Any:
            return served[schema_id]

    lookup = RegistryLookup("http://registry", client=Client())
    assert lookup(7) == text and lookup(8) == text  # Confluent leaves schemaType out for Avro
    assert lookup(9) == ForeignSchema("JSON")
    assert lookup(10) == ForeignSchema("PROTOBUF")


def test_a_writer_without_a_local_reader_is_read_by_cavro(monkeypatch: pytest.MonkeyPatch) -> None:
    mystery = {"type": "record", "name": "mysteryEvent", "namespace": "com.capillary.events",
               "fields": [{"name": "eventName", "type": "string"},
                          {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                          {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 4}},
                          {"name": "blob", "type": "bytes"},
                          {"name": "ok", "type": "boolean"},
                          {"name": "f", "type": "float"},
                          {"name": "n", "type": "int"},
                          {"name": "more", "type": ["null", "Tag", {"type": "array", "items": "Kind"}]},
                          {"name": "by", "type": {"type": "map", "values": ["null", "double"]}}]}
    value = {"eventName": "mysteryEvent", "kind": "B", "tag": b"abcd", "blob": b"\x00\xff", "ok": True,
             "f": 1.5, "n": -7, "more": ["A", "B"], "by": {"x": 1.25, "y": None}}
    body = _encode(mystery, value)
    decoder = Decoder(LocalSchemas.load(), {9: json.dumps(mystery)}.get)
    if decode.HAVE_CAVRO:
        monkeypatch.setattr(decode, "_read_fastavro", None)  # the fast path must not need it
    assert _same(decoder.decode(b"\x00\x00\x00\x00\x09" + body), [_reference(body, parse_schema(mystery))])
    assert (decoder._by_id[9][0] is not None) == decode.HAVE_CAVRO


def _encode(schema: Any, value: Any) -> bytes:
    buf = BytesIO()
    schemaless_writer(buf, parse_schema(schema), value)
    return buf.getvalue()


# --- writer→reader resolution stays with fastavro ------------------------------------------------


def _older(schema: dict[str, Any]) -> dict[str, Any]:
    """The event schema as an older producer had it: the optional fields not there yet."""
    old = copy.deepcopy(schema)
    data = next(f for f in old["fields"] if f["name"] == "data")
    data["type"]["fields"] = [f for f in data["type"]["fields"] if not isinstance(f["type"], list)]
    old["fields"] = [f for f in old["fields"] if not isinstance(f["type"], list)]
    return old


def _newer(schema: dict[str, Any]) -> dict[str, Any]:
    """The event schema as a newer producer has it: one more optional field, and one more in ``data``."""
    new = copy.deepcopy(schema)
    new["fields"].append({"name": "tenantRegion", "type": ["null", "string"], "default": None})
    data = next(f for f in new["fields"] if f["name"] == "data")
    data["type"]["fields"].insert(0, {"name": "extraScore", "type": "double", "default": 0.0})
    return new


@pytest.mark.parametrize("version", ["older", "newer"])
def test_a_writer_schema_that_differs_from_the_reader_is_resolved(
    schemas: LocalSchemas, events: list[dict[str, Any]], version: str
) -> None:
    names = sorted(EVENT_NAMES)
    writers = {n: (_older if version == "older" else _newer)(json.loads(schemas.schema_json(n))) for n in names}
    ids = {n: i + 100 for i, n in enumerate(names)}
    decoder = Decoder(schemas, {ids[n]: json.dumps(w) for n, w in writers.items()}.get)
    for event in events[:400]:
        name = event["eventName"]
        writer = parse_schema(writers[name])
        if version == "older":
            value = {k: v for k, v in event.items() if k in {f["name"] for f in writers[name]["fields"]}}
            kept = {f["name"] for f in _data_fields(writers[name])}
            value["data"] = {k: v for k, v in event["data"].items() if k in kept}
        else:
            value = {**event, "tenantRegion": "apac", "data": {**event["data"], "extraScore": 2.5}}
        body = _encode(writers[name], value)
        [record] = decoder.decode(b"\x00" + ids[name].to_bytes(4, "big") + body)
        expected = _reference(body, writer, schemas.parsed(name))
        assert _same(record, expected)
        assert "tenantRegion" not in record and "extraScore" not in record["data"]
        if version == "older":
            assert record["eventId"] is None  # the reader's default filled in
    assert all(plan[0] is None and plan[2] is not None for plan in decoder._by_id.values())


def _data_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return next(f for f in schema["fields"] if f["name"] == "data")["type"]["fields"]


def test_a_writer_differing_only_in_docs_and_defaults_takes_the_fast_path(
    schemas: LocalSchemas, events: list[dict[str, Any]]
) -> None:
    event = next(e for e in events if e["eventName"] == "pointsIssued")
    writer = json.loads(schemas.schema_json("pointsIssued"))
    writer["doc"] = "re-registered by another team"
    for f in writer["fields"]:
        f.pop("doc", None)
    decoder = Decoder(schemas, {5: json.dumps(writer)}.get)
    body = _body(schemas, event)
    [record] = decoder.decode(b"\x00\x00\x00\x00\x05" + body)
    assert _same(record, _reference(body, schemas.parsed("pointsIssued")))
    assert (decoder._by_id[5][0] is not None) == decode.HAVE_CAVRO and decoder._by_id[5][2] is None


@pytest.mark.parametrize("field_type", [
    {"type": "long", "logicalType": "local-timestamp-millis"},  # cavro leaves it a number
    {"type": "long", "logicalType": "timestamp-millis"},
    {"type": "array", "items": "null"},  # zero-byte items: cavro would loop on a negative count
    {"type": "array", "items": {"type": "record", "name": "Empty", "fields": []}},
])
def test_schemas_cavro_does_not_read_like_fastavro_go_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "odd", "fields": [{"name": "x", "type": field_type}]}
    value = {"x": 1_700_000_000_000 if field_type.get("type") == "long" else [None, None]}
    if isinstance(field_type.get("items"), dict):
        value = {"x": [{}, {}]}
    body = _encode(schema, value)
    decoder = Decoder(None, {3: json.dumps(schema)}.get)
    assert decoder.decode(b"\x00\x00\x00\x00\x03" + body) == [_reference(body, parse_schema(schema))]
    assert decoder._by_id[3][0] is None


def test_a_union_index_fastavro_accepts_is_still_accepted() -> None:
    """fastavro reads union index -1 as the last branch; cavro refuses; the old verdict stands."""
    schema = {"type": "record", "name": "u", "fields": [{"name": "x", "type": ["null", "string"]}]}
    body = b"\x01" + b"\x04hi"  # union index zigzag(-1), then the 2-byte string "hi"
    decoder = Decoder(None, {4: json.dumps(schema)}.get)
    assert decoder.decode(b"\x00\x00\x00\x00\x04" + body) == [{"x": "hi"}]
    assert (decoder._by_id[4][0] is not None) == decode.HAVE_CAVRO


# --- corrupt input: DecodeError corrupt_avro, never a crash or a hang ----------------------------


def _corrupt(decoder: Decoder, value: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason == "corrupt_avro", info.value
    return info.value


def test_every_truncation_is_corrupt_avro(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder
) -> None:
    decoder = Decoder(schemas, _registry_texts(encoder).get)
    for event in (events[0], next(e for e in events if e["eventName"] == "transactionAdded")):
        for framed, header in ((encoder.encode(event, "avro-registry"), 5), (encoder.encode(event, "avro-single"), 10)):
            decoder.decode(framed)  # the whole record is fine
            for cut in range(2, len(framed)):  # (a lone C3 byte is not recognised as Avro at all)
                _corrupt(decoder, framed[:cut])
            assert "header" in str(_corrupt(decoder, framed[:header - 1]))


def test_trailing_bytes_are_corrupt_avro(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder
) -> None:
    decoder = Decoder(schemas, _registry_texts(encoder).get)
    for event in events[:50]:
        for framed in (encoder.encode(event, "avro-registry"), encoder.encode(event, "avro-single")):
            for tail in (b"\x00", b"\x02", b"xyz" * 10):
                err = _corrupt(decoder, framed + tail)
                assert f"{len(tail)} trailing bytes" in str(err)


def test_a_writer_schema_that_is_not_a_record_is_corrupt_avro() -> None:
    decoder = Decoder(None, {2: '"string"'}.get)
    assert "not a record" in str(_corrupt(decoder, b"\x00\x00\x00\x00\x02" + b"\x04hi"))


def test_random_damage_gets_the_verdict_fastavro_gives(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder
) -> None:
    """Byte flips, overwrites, deletions, insertions: the same record as fastavro reads, or
    corrupt_avro where fastavro fails; each read bounded in time."""
    rng = random.Random(20240611)
    texts = _registry_texts(encoder)
    decoder = Decoder(schemas, texts.get)
    counts = {"same": 0, "corrupt": 0}
    for event in events[::12]:
        framed = encoder.encode(event, "avro-registry" if rng.random() < 0.5 else "avro-single")
        header = 5 if framed[0] == 0 else 10
        writer = schemas.parsed(event["eventName"])
        for _ in range(120):
            body = bytearray(framed[header:])
            for _ in range(rng.randint(1, 4)):
                i, op = rng.randrange(len(body)), rng.random()
                if op < 0.5:
                    body[i] ^= 1 << rng.randrange(8)
                elif op < 0.8:
                    body[i] = rng.randrange(256)
                elif op < 0.9:
                    del body[i]
                else:
                    body.insert(i, rng.randrange(256))
            damaged = framed[:header] + bytes(body)
            try:
                expected: Any = _reference(bytes(body), writer)
            except Exception:  # noqa: BLE001 - fastavro's verdict: corrupt
                expected = None
            t0 = time.perf_counter()
            if expected is None:
                _corrupt(decoder, damaged)
                counts["corrupt"] += 1
            else:
                assert _same(decoder.decode(damaged), [expected])
                counts["same"] += 1
            assert time.perf_counter() - t0 < 1.0
    assert counts["corrupt"] > 1000 and counts["same"] > 100, counts


def test_the_other_decode_reasons_are_unchanged(schemas: LocalSchemas) -> None:
    def reason(decoder: Decoder, value: bytes | None) -> str:
        with pytest.raises(DecodeError) as info:
            decoder.decode(value)
        return info.value.reason

    assert reason(Decoder(schemas), b"") == "empty_value"
    assert reason(Decoder(schemas), None) == "empty_value"
    assert reason(Decoder(schemas), b"\xff\x13garbage") == "unknown_format"
    assert reason(Decoder(schemas), b"\x00\x00\x00\x00\x01\x02") == "no_registry"
    assert reason(Decoder(schemas, {}.get), b"\x00\x00\x01\x86\xa0\x02") == "unknown_schema_id"
    assert reason(Decoder(schemas), b"\xc3\x01" + b"\x00" * 8 + b"\x02") == "unknown_fingerprint"
    assert reason(Decoder(None), b"\xc3\x01" + b"\x00" * 8 + b"\x02") == "unknown_fingerprint"
    assert reason(Decoder(schemas), b"{not json") == "invalid_json"
    assert reason(Decoder(schemas), b"[]") == "invalid_json"

    def down(_sid: int) -> Any:
        raise RegistryUnavailable("registry down")

    with pytest.raises(RegistryUnavailable):
        Decoder(schemas, down).decode(b"\x00\x00\x00\x00\x01\x02")
    assert Decoder(schemas).decode(b'[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]


def test_a_reader_with_logical_types_is_always_resolved_by_fastavro() -> None:
    """The canonical form leaves logical types out: equal forms do not make such a reader
    irrelevant, so fastavro resolves (and, as it happens, keeps the writer's plain long)."""
    reader = {"type": "record", "name": "stamped", "namespace": "com.capillary.events",
              "fields": [{"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    writer = copy.deepcopy(reader)
    del writer["fields"][0]["type"]["logicalType"]
    decoder = Decoder(LocalSchemas({"stamped": reader}), {6: json.dumps(writer)}.get)
    body = _encode(writer, {"at": 1_700_000_000_000})
    [record] = decoder.decode(b"\x00\x00\x00\x00\x06" + body)
    assert _same(record, _reference(body, parse_schema(writer), parse_schema(reader)))
    assert decoder._by_id[6][0] is None and decoder._by_id[6][2] is not None


def test_a_fresh_decoder_reuses_the_schemas_prepared_in_this_process(
    schemas: LocalSchemas, events: list[dict[str, Any]], encoder: SampleEncoder
) -> None:
    texts = _registry_texts(encoder)
    frames = [encoder.encode(e, "avro-registry") for e in events[:200]]
    first = Decoder(schemas, texts.get)
    for v in frames:
        first.decode(v)
    second = Decoder(schemas, texts.get)
    for v in frames:
        second.decode(v)
    assert all(second._by_id[sid][0] is first._by_id[sid][0] for sid in second._by_id)
