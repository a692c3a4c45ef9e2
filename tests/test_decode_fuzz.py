"""Seeded fuzzing of the decoder over random writer schemas and bodies: every input either decodes
or raises DecodeError — no other exception, no crash — within a time and memory bound. The
schemas include what a shared registry can hold (recursive types, arrays of nulls, wide records,
deep nesting); the bodies are valid encodings, damaged ones, random bytes and huge declared counts."""

from __future__ import annotations

import io
import random
import time
import tracemalloc
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_writer
from support import zigzag

from connector.decode.decoder import Decoder
from connector.errors import DecodeError

CASES = 2000
SEED = 2929
PER_DECODE_S = 1.0
PEAK_MB = 64

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]


class _Schemas:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def name(self) -> str:
        self.n += 1
        return f"T{self.n}"

    def type(self, depth: int, named: list[str]) -> Any:
        r = self.rng.random()
        if depth > 6 or r < 0.35:
            return self.rng.choice(PRIMITIVES)
        if r < 0.40 and named:
            return self.rng.choice(named)  # a reference: recursive when it names an enclosing record
        if r < 0.55:
            return {"type": "array", "items": self.type(depth + 1, named)}
        if r < 0.62:
            return {"type": "map", "values": self.type(depth + 1, named)}
        if r < 0.72:
            branches = ["null", *(self.type(depth + 1, named) for _ in range(self.rng.randint(1, 3)))]
            kinds = [b if isinstance(b, str) else b.get("type") if isinstance(b, dict) else "union" for b in branches]
            ok = "union" not in kinds and len(set(map(str, kinds))) == len(kinds)
            return branches if ok else ["null", "int"]
        if r < 0.78:
            return {"type": "enum", "name": self.name(), "symbols": ["A", "B", "C"][: self.rng.randint(1, 3)]}
        if r < 0.83:
            return {"type": "fixed", "name": self.name(), "size": self.rng.choice([0, 1, 4, 16])}
        return self.record(depth + 1, named)

    def record(self, depth: int, named: list[str]) -> dict[str, Any]:
        name = self.name()
        inner = [*named, name]
        wide = self.rng.random() < 0.05
        count = self.rng.randint(200, 1200) if wide else self.rng.randint(0, 5)
        fields = [{"name": f"f{i}", "type": "null" if wide else self.type(depth, inner)} for i in range(count)]
        if depth == 0 and self.rng.random() < 0.25:  # an array of items that take no bytes, first
            empty = self.rng.choice(["null", {"type": "fixed", "name": self.name(), "size": 0},
                                     {"type": "record", "name": self.name(), "fields": [{"name": "n", "type": "null"}]}])
            fields.insert(0, {"name": "bomb", "type": {"type": "array", "items": empty}})
        return {"type": "record", "name": name, "fields": fields}


def _value(rng: random.Random, node: Any, named: dict[str, Any], depth: int = 0) -> Any:
    """A random valid value (small) of a parsed schema node; RecursionError past a few levels (a
    record that holds itself in every branch has no finite value)."""
    if depth > 40:
        raise RecursionError
    if isinstance(node, str):
        if node in named:
            return _value(rng, named[node], named, depth + 1)
        return {"null": None, "boolean": rng.random() < 0.5, "int": rng.randint(-2**31, 2**31 - 1),
                "long": rng.randint(-2**63, 2**63 - 1), "float": 1.5, "double": rng.random(),
                "bytes": rng.randbytes(rng.randint(0, 8)), "string": "s" * rng.randint(0, 8)}[node]
    if isinstance(node, list):
        return None if depth > 4 else _value(rng, rng.choice(node), named, depth + 1)
    kind = node["type"]
    if kind == "record":
        return {f["name"]: _value(rng, f["type"], named, depth + 2 if len(node["fields"]) > 3 else depth + 1)
                for f in node["fields"]}
    if kind == "array":
        return [] if depth > 4 else [_value(rng, node["items"], named, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {} if depth > 4 else {f"k{i}": _value(rng, node["values"], named, depth + 1) for i in range(2)}
    if kind == "enum":
        return node["symbols"][0]
    if kind == "fixed":
        return bytes(node["size"])
    return _value(rng, kind, named, depth + 1)


def _bodies(rng: random.Random, schema: dict[str, Any]) -> list[bytes]:
    out = [rng.randbytes(rng.randint(0, 64)), zigzag(rng.choice([2**20, 5 * 10**7, 2**40, -(2**40)])) + b"\x00" * 8]
    try:
        parsed = parse_schema(schema)
        value = _value(rng, parsed, parsed.get("__named_schemas", {}))
        buf = io.BytesIO()
        if "bomb" in value:
            value["bomb"] = []
        schemaless_writer(buf, parsed, value)
        valid = buf.getvalue()
    except RecursionError:  # no small value: random bytes only
        return out
    out.append(valid)
    damaged = bytearray(valid or b"\x00")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(damaged))
        damaged[i] = rng.choice([0x7F, 0xFF, 0x80, rng.randrange(256)])  # 0x7F: a count of -64; 0xFF: a long varint
    out.append(bytes(damaged))
    # A huge count at a random place: where an array or map is, it claims millions of items.
    at = rng.randrange(len(valid) + 1)
    out.append(valid[:at] + zigzag(rng.choice([90_000, 10**6, 5 * 10**7])) + valid[at:])
    if "bomb" in value:  # the empty array first becomes a block of that many items, then the end
        out.append(zigzag(rng.choice([1_000, 70_000, 95_000, 5 * 10**7])) + valid)
    return out


def test_every_input_decodes_or_is_a_decode_error_in_bounded_time_and_memory() -> None:
    rng = random.Random(SEED)
    gen = _Schemas(rng)
    verdicts: dict[str, int] = {}
    cases = 0
    tracemalloc.start()
    try:
        while cases < CASES:
            schema = gen.record(0, [])
            text = orjson.dumps(schema).decode()
            if rng.random() < 0.05:  # a schema that does not parse: a damaged text, an unknown type
                text = rng.choice([text[: rng.randrange(len(text))], text.replace('"int"', '"nosuch"'),
                                   text.replace('"record"', '"object"', 1)])
            decoder = Decoder(None, {1: text}.get)
            for body in _bodies(rng, schema):
                cases += 1
                tracemalloc.reset_peak()
                t0 = time.perf_counter()
                try:
                    decoder.decode(b"\x00\x00\x00\x00\x01" + body)
                    verdict = "decoded"
                except DecodeError as exc:
                    verdict = exc.reason
                took = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
                assert took < PER_DECODE_S, (took, text[:500], body[:100])
                assert peak < PEAK_MB * 2**20, (peak, text[:500], body[:100])
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
    finally:
        tracemalloc.stop()
    # The generator reaches each kind of verdict (otherwise it would prove little).
    for kind in ("decoded", "corrupt_avro", "invalid_schema", "recursive_schema", "too_many_items",
                 "decoded_too_large"):
        assert verdicts.get(kind, 0) > 5, verdicts
