"""XDM's rules for custom fields, as the Schema Registry applies them when a field group is created.

A field AEP would refuse must fail here first: the tenant schema derived from the mapping
(:mod:`connector.transform.tenant`) is checked at derivation, the emulator's Schema Registry refuses
field groups that break a rule (400), and ``provision`` never sends one. Sources (Experience League):

* *Define map fields in the UI* and *Define XDM fields in the Schema Registry API*: a map is
  ``type: object`` with ``"meta:xdmType": "map"`` (the one case the caller writes ``meta:xdmType``),
  defines no ``properties``, and its ``additionalProperties`` are of type ``string`` or ``integer``
  only — no maps of objects, arrays or numbers;
* *Define XDM fields in the Schema Registry API*: the field types are string, number, integer,
  boolean, object (with properties) and array (with items); ``date`` and ``date-time`` are strings
  with a format.

No I/O here.
"""

from __future__ import annotations

from typing import Any

MAP_VALUE_TYPES = ("string", "integer")
FIELD_TYPES = ("string", "number", "integer", "boolean", "object", "array")


def is_map(schema: dict[str, Any]) -> bool:
    return schema.get("meta:xdmType") == "map"


def violations(schema: Any, path: str = "") -> list[str]:
    """Every way ``schema`` (a custom field's definition, objects nested) breaks XDM's rules, by path."""
    if not isinstance(schema, dict):
        return [f"{path or '/'}: a field definition must be an object"]
    kind = schema.get("type")
    if kind not in FIELD_TYPES:
        return [f"{path or '/'}: type {kind!r} is not an XDM field type"]
    if is_map(schema):
        return _map_violations(schema, path)
    if kind == "object":
        props = schema.get("properties")
        if isinstance(schema.get("additionalProperties"), dict):
            return [f"{path or '/'}: an object with free keys must be a map (\"meta:xdmType\": \"map\")"]
        if not isinstance(props, dict) or not props:
            return [f"{path or '/'}: an object field must define properties"]
        return [v for name, sub in props.items() for v in violations(sub, f"{path}/{name}")]
    if kind == "array":
        items = schema.get("items")
        return violations(items, f"{path}[]") if items is not None else [f"{path or '/'}: an array needs items"]
    if "properties" in schema:
        return [f"{path or '/'}: a {kind} field cannot define properties"]
    return []


def _map_violations(schema: dict[str, Any], path: str) -> list[str]:
    where = path or "/"
    if schema.get("type") != "object":
        return [f"{where}: a map must be of type object"]
    if "properties" in schema:
        return [f"{where}: a map must not define properties"]
    values = schema.get("additionalProperties")
    if not isinstance(values, dict) or values.get("type") not in MAP_VALUE_TYPES:
        found = values.get("type") if isinstance(values, dict) else values
        return [f"{where}: a map's values must be of type string or integer, not {found!r}"]
    if any(key in values for key in ("properties", "items", "additionalProperties")):
        return [f"{where}: a map's values must be plain strings or integers"]
    return []
