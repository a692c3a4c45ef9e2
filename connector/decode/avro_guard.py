"""What the decoder refuses to read, decided before an Avro library touches a record. Pure.

Avro's readers (fastavro, cavro) trust the bytes and the schema, and anyone who can produce to a
subscribed topic chooses both (any schema id of a shared registry). Three things would stop the
process rather than raise:

* a recursive schema (a record that contains itself): a record nested 100,000 deep, ~100 KB of bytes,
  overflows both readers' C stacks (exit 139, no ``except`` can catch it). Such schemas are refused
  at planning (Capillary's events are not recursive), and schema nesting is capped;
* an array of items that take no bytes (``null``, a record of nulls): a block count of 50,000,000 in
  four bytes makes 400 MB of ``None`` in under a second;
* items that take one byte and decode to a large object (a record of a thousand null fields).

So :func:`shape` decides once per writer schema whether its records can expand out of proportion to
their size (``Shape.amplifies``), and :func:`scan` walks such a record — and any record larger than
``SCAN_ABOVE`` — as the schema says without building values: every declared count and length is
checked against the bytes left, items per array against a cap, and the estimated size of the
decoded objects against a budget proportional to the record's size. Corruption the scan cannot
follow (a bad union index) is left to the reader, which words the error; the scan only refuses
what is over budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from connector.errors import DecodeError


class ForeignSchema(NamedTuple):
    """A registry schema that is not Avro (JSON Schema, Protobuf): its records are dead-lettered."""

    schema_type: str


MAX_SCHEMA_DEPTH = 64  # nesting of a writer schema (Capillary's: < 10); deeper ones are refused
SCAN_ABOVE = 64 * 1024  # bodies larger than this are scanned whatever the schema
_AMPLIFY = 256  # estimated decoded bytes per encoded byte of a repeated item, above which a schema amplifies
MIN_BUDGET = 1 << 20  # decoded bytes any record may take, however small

# Rough sizes of decoded Python objects, with the 8-byte slot that holds each (CPython 3.11, 64 bit).
_SLOT = 8
_NUMBER = 40
_STR = 64
_LIST = 64
_DICT = 240
_FIELD = 50
_PRIMITIVE_COST = {"null": _SLOT, "boolean": _SLOT, "int": _NUMBER, "long": _NUMBER, "float": _NUMBER,
                   "double": _NUMBER, "string": _STR, "bytes": _STR}


@dataclass(frozen=True, slots=True)
class Limits:
    max_array_items: int = 100_000  # items of one array (all blocks)
    max_decoded_ratio: int = 100  # estimated decoded bytes per record byte (at least MIN_BUDGET)


class Shape:
    """A writer schema's analysis: per node, its min encoded size and its *densest* encoding (the
    bytes and decoded cost of the encoding with the most decoded bytes per encoded byte, roughly:
    each union taking its densest branch), and whether any repeated item can expand far beyond its
    bytes."""

    __slots__ = ("amplifies", "named", "root", "sizes")

    def __init__(self, root: Any, named: dict[str, Any]) -> None:
        self.root = root
        self.named = named
        self.amplifies = False
        self.sizes: dict[int, tuple[int, int, int]] = {}  # id(node) → (min bytes, densest bytes, its cost)

    def size(self, node: Any) -> tuple[int, int]:
        """(min encoded bytes, decoded cost); the cost is exact for a type of no bytes (it has one encoding)."""
        lo, _, cost = self.sizes[id(self.resolve(node))]
        return lo, cost

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node not in _PRIMITIVE_COST:
            return self.named[node]
        if isinstance(node, dict) and isinstance(node.get("type"), (dict, list)):
            return node["type"]  # {"type": {...}} wraps a type
        return node


def shape(writer: Any) -> Shape:
    """Analyse a fastavro-parsed writer schema. Raises :class:`DecodeError` for a recursive or too
    deeply nested schema."""
    named = dict(writer.get("__named_schemas", {})) if isinstance(writer, dict) else {}
    sh = Shape(writer, named)
    _analyse(sh, writer, set(), 0)
    return sh


def _primitive(kind: str) -> tuple[int, int, int]:
    lo = 0 if kind == "null" else 1
    return lo, lo, _PRIMITIVE_COST[kind]


def _analyse(sh: Shape, node: Any, defining: set[str], depth: int) -> tuple[int, int, int]:
    """(min bytes, densest bytes, densest cost) of ``node``, recorded in ``sh``."""
    if depth > MAX_SCHEMA_DEPTH:
        raise DecodeError("schema_too_deep", f"writer schema nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, str):
        if node in _PRIMITIVE_COST:
            return sh.sizes.setdefault(id(node), _primitive(node))
        if node in defining:
            raise DecodeError("recursive_schema", f"{node} contains itself: recursive schemas are not read")
        target = sh.named.get(node)
        if target is None:
            raise DecodeError("invalid_schema", f"unknown type {node}")
        if id(target) not in sh.sizes:
            _analyse(sh, target, defining, depth)
        return sh.sizes[id(target)]
    if isinstance(node, list):  # union: a branch index, then the branch
        parts = [_analyse(sh, branch, defining, depth + 1) for branch in node] or [(0, 0, _SLOT)]
        dense = max(parts, key=lambda p: p[2] / (1 + p[1]))
        out = (1 + min(p[0] for p in parts), 1 + dense[1], dense[2])
    elif not isinstance(node, dict):
        raise DecodeError("invalid_schema", f"not a schema node: {type(node).__name__}")
    else:
        kind = node.get("type")
        name = node.get("name")
        if isinstance(kind, (dict, list)):
            out = _analyse(sh, kind, defining, depth + 1)
        elif kind in ("record", "error"):
            inner = defining | {name} if isinstance(name, str) else defining
            fields = node.get("fields", ())
            parts = [_analyse(sh, f.get("type"), inner, depth + 1) for f in fields]
            out = (sum(p[0] for p in parts), sum(p[1] for p in parts),
                   _DICT + _FIELD * len(parts) + sum(p[2] for p in parts))
        elif kind == "enum":
            out = (1, 1, _SLOT)
        elif kind == "fixed":
            size = int(node.get("size", 0))
            out = (size, size, _STR + size)
        elif kind in ("array", "map"):
            _, item_bytes, item_cost = _analyse(sh, node.get("items" if kind == "array" else "values"), defining,
                                                depth + 1)
            per_item = item_bytes + (1 if kind == "map" else 0)  # a map entry's key takes a byte at least
            if per_item == 0 or item_cost > _AMPLIFY * per_item:
                sh.amplifies = True
            out = (1, 1, _LIST if kind == "array" else _DICT)
        elif kind in _PRIMITIVE_COST:
            out = _primitive(kind)
        else:
            raise DecodeError("invalid_schema", f"unknown type {kind!r}")
    sh.sizes[id(node)] = out
    return out


def needs_scan(sh: Shape, body_size: int) -> bool:
    return sh.amplifies or body_size > SCAN_ABOVE


class _Stop(Exception):
    """The bytes stop making sense here: the reader will say why."""


def scan(sh: Shape, value: bytes, start: int, limits: Limits) -> None:
    """Walk the body ``value[start:]`` without decoding it; raise :class:`DecodeError` if what it
    declares is over the limits. Returns quietly for what is within them, or corrupt in a way the
    reader will report."""
    budget = [max(MIN_BUDGET, limits.max_decoded_ratio * (len(value) - start))]
    try:
        _skip(sh, sh.root, value, start, budget, limits.max_array_items)
    except _Stop:
        pass


def _charge(budget: list[int], cost: int) -> None:
    budget[0] -= cost
    if budget[0] < 0:
        raise DecodeError("decoded_too_large", "the record would decode to more than its budget "
                          "(decode.max_decoded_ratio × its size)")


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        b = buf[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), i + 1
        shift += 7
    raise _Stop


def _skip(sh: Shape, node: Any, buf: bytes, pos: int, budget: list[int], max_items: int) -> int:
    node = sh.resolve(node)
    if isinstance(node, str) or (isinstance(node, dict) and node.get("type") in _PRIMITIVE_COST):
        kind = node if isinstance(node, str) else node["type"]
        _charge(budget, _PRIMITIVE_COST[kind])
        if kind == "null":
            return pos
        if kind == "boolean":
            return pos + 1
        if kind in ("int", "long"):
            return _long(buf, pos)[1]
        if kind == "float":
            return pos + 4
        if kind == "double":
            return pos + 8
        size, pos = _long(buf, pos)  # string, bytes
        if size < 0 or size > len(buf) - pos:
            raise DecodeError("corrupt_avro", f"a {kind} declares {size} bytes, {len(buf) - pos} are left")
        _charge(budget, size)
        return pos + size
    if isinstance(node, list):
        index, pos = _long(buf, pos)
        if not -len(node) <= index < len(node):  # fastavro reads -1 as the last branch
            raise _Stop
        return _skip(sh, node[index], buf, pos, budget, max_items)
    kind = node["type"]
    if kind in ("record", "error"):
        _charge(budget, _DICT)
        for f in node["fields"]:
            _charge(budget, _FIELD)
            pos = _skip(sh, f["type"], buf, pos, budget, max_items)
        return pos
    if kind == "enum":
        _charge(budget, _SLOT)
        return _long(buf, pos)[1]
    if kind == "fixed":
        _charge(budget, _STR + int(node["size"]))
        return pos + int(node["size"])
    if kind not in ("array", "map"):
        raise _Stop
    _charge(budget, _LIST if kind == "array" else _DICT)
    item = node["items"] if kind == "array" else node["values"]
    item_lo, item_cost = sh.size(item)
    per_item = item_lo + (1 if kind == "map" else 0)
    items = 0
    while True:
        count, pos = _long(buf, pos)
        if count == 0:
            return pos
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            size, pos = _long(buf, pos)
            if size < 0 or size > len(buf) - pos:
                raise DecodeError("corrupt_avro", f"a block declares {size} bytes, {len(buf) - pos} are left")
        items += count
        if items > max_items:
            raise DecodeError("too_many_items", f"an {kind} declares more than {max_items} items "
                              "(decode.max_array_items)")
        if count * per_item > len(buf) - pos:
            raise DecodeError("corrupt_avro", f"an {kind} block declares {count} items of at least "
                              f"{per_item} bytes, {len(buf) - pos} bytes are left")
        if per_item == 0:  # items that take no bytes: nothing to walk, only their cost
            _charge(budget, count * (item_cost + _SLOT))
            continue
        for _ in range(count):
            _charge(budget, _SLOT)
            if kind == "map":
                pos = _skip(sh, "string", buf, pos, budget, max_items)
            pos = _skip(sh, item, buf, pos, budget, max_items)
