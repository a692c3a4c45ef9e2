"""The tenant fields (``_<tenant>.capillary``) as XDM: derived from the mapping's declaration.

Every event spec declares its tenant fields with the converter that writes each one
(:class:`connector.transform.events.EventSpec` ``tenant`` and ``computed``); the fields every
event carries (lineage) and the profile's tenant fields are declared here. The converter decides
the XDM type, so the declaration cannot drift from what is written. From it come:

* the closed JSON Schema of the tenant block the pre-flight validation uses (a field written but
  not declared fails validation, and the tests, instead of being dropped by AEP);
* the tenant field groups ``capillary-aep xdm export`` and ``provision`` create in AEP;
* the field table in docs/mapping.md (``python -m connector.transform.tenant``).

No I/O here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from connector.transform import events, xdm_rules
from connector.transform.times import to_date, to_iso
from connector.transform.values import boolean, currency, id_str, int_or_none, key_values, num, string_map, text

Schema = dict[str, Any]
Fields = events.Fields

_STRING: Schema = {"type": "string"}
_KEY_VALUE: Schema = {"type": "object", "properties": {"key": _STRING, "value": _STRING}}
_SCALARS: dict[Callable[[Any], Any], Schema] = {
    text: _STRING,
    id_str: _STRING,
    currency: _STRING,
    events.nonzero_id: _STRING,
    num: {"type": "number"},
    int_or_none: {"type": "integer"},
    boolean: {"type": "boolean"},
    to_iso: {"type": "string", "format": "date-time"},
    to_date: {"type": "string", "format": "date"},
    key_values: {"type": "array", "items": _KEY_VALUE},
    # An XDM map of strings. [UNCERTAIN] the payload's shape is undocumented.
    string_map: {"type": "object", "meta:xdmType": "map", "additionalProperties": _STRING},
}

# Written for every event by connector.transform.transformer (_lineage).
LINEAGE: Fields = (
    ("eventName", text), ("orgId", id_str), ("eventId", id_str), ("refId", text), ("loyaltyEventId", text),
    ("apiRequestId", text), ("eventLogId", id_str), ("loyaltyProgramId", id_str), ("loyaltyProgramName", text),
    ("triggeringActivity", events.record_of((
        ("name", text), ("requestId", text), ("identifiers", key_values), ("additionalAttributes", key_values)))),
    ("tillCode", text), ("storeCode", text), ("storeName", text), ("storeExternalId", text),
)
# A non-default program's state (transformer._PROGRAM_FIELDS, the program's name, ``tierNumber`` where
# the tier's name is not known yet): one XDM map per field, keyed by program id. XDM maps hold strings
# or integers only, so balances are decimal text and dates ISO text (docs/mapping.md, "Multi-program").
PROGRAM_MAPS: dict[str, str] = {
    "points": "string", "lifetimePoints": "string", "promisedPoints": "string", "tier": "string",
    "tierUpgradeDate": "string", "tierExpiryDate": "string", "program": "string", "tierNumber": "integer",
}


class DeclarationError(ValueError):
    """Two declarations give one tenant field different types."""


def field_schema(convert: Callable[[Any], Any]) -> Schema:
    """The XDM type of what ``convert`` writes."""
    shape = getattr(convert, "xdm_shape", None)
    if shape is not None:
        kind, fields = shape
        obj = object_schema(fields)
        return obj if kind == "object" else {"type": "array", "items": obj}
    try:
        return copy.deepcopy(_SCALARS[convert])
    except (KeyError, TypeError):
        name = getattr(convert, "__name__", convert)
        raise DeclarationError(f"converter {name!r} has no declared XDM type") from None


def object_schema(fields: Iterable[tuple[str, Callable[[Any], Any]]], path: str = "") -> Schema:
    out: Schema = {"type": "object", "properties": {}}
    for name, convert in fields:
        _add(out, name, field_schema(convert), path)
    return out


def _add(obj: Schema, name: str, schema: Schema, path: str) -> None:
    props = obj["properties"]
    if name not in props:
        props[name] = schema
    else:
        props[name] = _merge(props[name], schema, f"{path}/{name}")


def _merge(a: Schema, b: Schema, path: str) -> Schema:
    """The union of two declarations of one field: objects merge their properties, anything else must agree."""
    if a.get("type") == b.get("type") == "object" and "properties" in a and "properties" in b:
        out = copy.deepcopy(a)
        for name, sub in b["properties"].items():
            _add(out, name, copy.deepcopy(sub), path)
        return out
    if a.get("type") == b.get("type") == "array" and "properties" in a["items"] and "properties" in b["items"]:
        return {"type": "array", "items": _merge(a["items"], b["items"], path + "[]")}
    if a != b:
        raise DeclarationError(f"tenant field {path} is declared as {a} and as {b}")
    return a


def event_fields() -> dict[str, Fields]:
    """Every declared tenant field of the ExperienceEvents, by where it comes from."""
    out: dict[str, Fields] = {"(every event)": LINEAGE}
    for name, spec in events.SPECS.items():
        out[name] = spec.tenant + spec.computed
    out["(unknown events, passthrough)"] = events.PASSTHROUGH_FIELDS
    return out


def event_tenant_schema() -> Schema:
    """The ``capillary`` object of the ExperienceEvent tenant block: the union of every declaration."""
    merged: Schema = {"type": "object", "properties": {}}
    for fields in event_fields().values():
        for name, convert in fields:
            _add(merged, name, field_schema(convert), "")
    return _checked(_sorted(merged), "event")


def profile_tenant_schema() -> Schema:
    """The ``capillary`` object of the profile tenant block (connector.transform.transformer._profile)."""
    programs = {name: map_of(kind) for name, kind in PROGRAM_MAPS.items()}
    return _checked(_sorted({"type": "object", "properties": {
        "tierNumber": field_schema(int_or_none),
        "programs": {"type": "object", "properties": programs},
    }}), "profile")


def map_of(value_type: str) -> Schema:
    """An XDM map (*Define map fields*): no properties, values of one type, string or integer."""
    return {"type": "object", "meta:xdmType": "map", "additionalProperties": {"type": value_type}}


def _checked(schema: Schema, kind: str) -> Schema:
    """``schema`` if it obeys XDM's rules for custom fields, else the declaration is wrong."""
    broken = xdm_rules.violations(schema)
    if broken:
        raise DeclarationError(f"the {kind} tenant fields break XDM's rules: " + "; ".join(broken))
    return schema


def tenant_block(tenant_id: str, capillary: Schema, *, closed: bool = True) -> tuple[str, Schema]:
    """``("_<tenant>", schema)``: the tenant namespace holding ``capillary``, closed at every level."""
    block = {"type": "object", "properties": {"capillary": capillary}}
    return f"_{tenant_id}", close(block) if closed else block


def close(schema: Schema) -> Schema:
    """A copy with every object that lists properties closed (``additionalProperties: false``), as AEP is."""
    out = copy.deepcopy(schema)
    stack = [out]
    while stack:
        node = stack.pop()
        if "properties" in node:
            node["additionalProperties"] = False
            stack.extend(node["properties"].values())
        if isinstance(node.get("additionalProperties"), dict):
            stack.append(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            stack.append(node["items"])
    return out


def _sorted(schema: Schema) -> Schema:
    if "properties" in schema:
        schema["properties"] = {k: _sorted(v) for k, v in sorted(schema["properties"].items())}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _sorted(schema[key])
    return schema


def markdown_table() -> str:
    """docs/mapping.md's tenant field table: one row per field path, its XDM type and the events writing it."""
    rows: dict[str, tuple[str, set[str]]] = {}

    def walk(schema: Schema, path: str, source: str) -> None:
        kind = schema.get("type", "")
        if schema.get("format"):
            kind += f" ({schema['format']})"
        if kind == "array" and "properties" in schema.get("items", {}):
            for name, sub in schema["items"]["properties"].items():
                walk(sub, f"{path}[].{name}", source)
            return
        if "properties" in schema:
            for name, sub in schema["properties"].items():
                walk(sub, f"{path}.{name}", source)
            return
        if kind == "array":
            kind = f"array of {schema['items'].get('type')}"
        if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
            kind = f"map of {schema['additionalProperties'].get('type')}"
        rows.setdefault(path, (kind, set()))[1].add(source)

    for source, fields in event_fields().items():
        for name, convert in fields:
            walk(field_schema(convert), name, source)
    lines = ["| field (under `_<tenant>.capillary`) | XDM type | written by |", "|---|---|---|"]
    for path, (kind, sources) in sorted(rows.items(), key=lambda kv: kv[0].lower()):
        named = sorted(sources) if len(sources) < 6 else [f"{len(sources)} event types"]
        lines.append(f"| `{path}` | {kind} | {', '.join(named)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
