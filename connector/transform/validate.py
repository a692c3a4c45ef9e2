"""Pre-flight XDM validation against the compact schemas in ``xdm/`` (built by
``scripts/build_xdm_schemas.py`` from the official adobe/xdm schemas).

AEP validates streamed records asynchronously: a bad record is accepted with HTTP 200 and then
lands in a failed batch that nobody sees. Checking here turns that into an immediate, counted
dead-letter with the reason. The schema is compiled once into nested closures (no generic JSON
Schema interpreter on the hot path); a record costs a few microseconds.

Checked: ``type``, ``required``, closed objects (unknown fields), ``enum``, ``pattern``, the
formats AEP enforces (``date-time``, ``date``, ``email``, ``uri-reference``), length and range
bounds, and AEP's "no null or empty values" rule. Messages name paths, never values (no PII).

Two implementations of one rule set: the checks below are the specification and write the
messages; a Rust validator (jsonschema-rs) compiled from the same compact schema, translated so
that it is never more lenient (``_strict_schema``), answers the common question "valid?" about four
times faster. Only a record it rejects (or cannot read) goes through the Python checks, which then
decide and explain. ``tests/test_validate_fast.py`` holds the two to the same verdicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs
import orjson

from connector.transform import tenant

SCHEMA_DIR = Path(__file__).resolve().parent / "xdm"
MAX_ERRORS = 5  # AEP's synchronous validation also reports at most five violations


_FORMATS: dict[str, re.Pattern[str]] = {
    "date-time": re.compile(
        r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?"
        r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)\Z"
    ),
    "date": re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\Z"),
    "email": re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z"),
    "uri-reference": re.compile(r"[^\s:]*(:[^\s]*)?\Z"),
}
# A relative reference may not have a colon in its first segment (RFC 3986 §4.2) unless it is a scheme.
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


# A check returns None when the value is valid, else error messages with paths relative to the value
# ("/order/priceTotal: expected number"). Paths are only built on failure, so a valid record costs
# one call per field and no string formatting.
Check = Callable[[Any], "list[str] | None"]


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and v - v == 0  # excludes nan and ±inf


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: type(v) is str,
    "number": _is_number,
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "boolean": lambda v: type(v) is bool,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}


def _compile(schema: dict[str, Any]) -> Check:
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _compile_object(schema)
    if kind == "array":
        return _compile_array(schema)
    return _compile_scalar(schema)


def _prefixed(key: Any, errors: list[str]) -> list[str]:
    return [f"/{key}{e}" if e.startswith(("/", ":")) else f"/{key}: {e}" for e in errors]


_STRING, _NUMBER, _BOOLEAN, _ENUM = 1, 2, 3, 4


def _simple_code(schema: dict[str, Any]) -> int | None:
    """Scalars the object loop checks inline, without a call: most XDM leaves are one of these."""
    kind = schema.get("type")
    if any(k in schema for k in ("pattern", "format", "minimum", "maximum", "minLength", "maxLength")):
        return None
    if kind == "string":
        return _ENUM if "enum" in schema else _STRING
    if kind == "number" and "enum" not in schema:
        return _NUMBER
    if kind == "boolean":
        return _BOOLEAN
    return None


def _compile_object(schema: dict[str, Any]) -> Check:
    properties = schema.get("properties", {})
    props = {name: _compile(sub) for name, sub in properties.items()}
    simple = {name: code for name, sub in properties.items() if (code := _simple_code(sub)) is not None}
    enums = {name: frozenset(sub["enum"]) for name, sub in properties.items() if simple.get(name) == _ENUM}
    required = tuple(schema.get("required", ()))
    additional = schema.get("additionalProperties", True)
    extra: Check | None = _compile(additional) if isinstance(additional, dict) else None
    closed = additional is False
    if not props and extra is None and not closed:
        return _check_free  # free-form content, e.g. the tenant namespace

    def check(value: Any) -> list[str] | None:
        if type(value) is not dict:
            return [": expected object"]
        if not value:
            return [": empty object (AEP rejects empty values)"]
        errors: list[str] | None = None
        for name in required:
            if name not in value:
                errors = (errors or []) + [f"/{name}: required field missing"]
        for key, item in value.items():
            code = simple.get(key)
            if code is not None:
                kind = type(item)
                if code == _STRING:
                    if kind is str and item:
                        continue
                elif code == _NUMBER:
                    if (kind is int or kind is float) and item - item == 0:
                        continue
                elif code == _BOOLEAN:
                    if kind is bool:
                        continue
                elif kind is str and item in enums[key]:
                    continue
                # invalid: fall through to the full check for the message
            sub = props.get(key, extra)
            if sub is None:
                if closed:
                    errors = (errors or []) + [f"/{key}: unknown field"]
                continue
            found = sub(item)
            if found is not None:
                errors = (errors or []) + _prefixed(key, found)
            if errors is not None and len(errors) >= MAX_ERRORS:
                break
        return errors

    return check


def _check_free(value: Any) -> list[str] | None:
    """Free-form content: only AEP's no-null/no-empty rule applies.

    The common clean case is decided by one C-level serialisation and four substring tests; only
    when a marker shows up (perhaps inside a string) is the value walked to find the real culprit.
    """
    try:
        text = orjson.dumps(value)
    except TypeError:
        return [": not JSON-serialisable"]
    if b"null" not in text and b'""' not in text and b"{}" not in text and b"[]" not in text:
        return None
    return _walk_free(value, "") or None


def _walk_free(value: Any, path: str) -> list[str]:
    if value is None:
        return [f"{path}: null value"]
    if type(value) is float and not _is_number(value):
        return [f"{path}: not a finite number"]
    if type(value) is str:
        return [] if value else [f"{path}: empty string"]
    if type(value) is dict:
        if not value:
            return [f"{path}: empty object"]
        return [e for key, item in value.items() for e in _walk_free(item, f"{path}/{key}")]
    if type(value) is list:
        if not value:
            return [f"{path}: empty array"]
        return [e for i, item in enumerate(value) for e in _walk_free(item, f"{path}/{i}")]
    return []


def _compile_array(schema: dict[str, Any]) -> Check:
    items_schema = schema.get("items")
    item_check = _compile(items_schema) if isinstance(items_schema, dict) else None

    def check(value: Any) -> list[str] | None:
        if type(value) is not list:
            return [": expected array"]
        if not value:
            return [": empty array (AEP rejects empty values)"]
        if item_check is None:
            return None
        errors: list[str] | None = None
        for i, item in enumerate(value):
            found = item_check(item)
            if found is not None:
                errors = (errors or []) + _prefixed(i, found)
        return errors

    return check


def _compile_scalar(schema: dict[str, Any]) -> Check:
    kind = schema.get("type")
    type_test = _TYPE_TESTS.get(kind) if isinstance(kind, str) else None
    enum = frozenset(schema["enum"]) if "enum" in schema else None
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    fmt = schema.get("format")
    fmt_re = _FORMATS.get(fmt) if fmt else None
    bounds = [(k, schema[k]) for k in ("minimum", "maximum", "minLength", "maxLength") if k in schema]

    if kind == "string" and enum is None and pattern is None and fmt_re is None and not bounds and fmt != "uri-reference":

        def plain_string(value: Any) -> list[str] | None:  # most XDM fields: skip the general path
            if type(value) is str and value:
                return None
            return [": null value (AEP rejects nulls)" if value is None else
                    ": empty string (AEP rejects empty values)" if value == "" else ": expected string"]

        return plain_string

    if kind == "number" and not bounds:

        def plain_number(value: Any) -> list[str] | None:
            if (type(value) is int or type(value) is float) and value - value == 0:
                return None
            return [": null value (AEP rejects nulls)" if value is None else ": expected number"]

        return plain_number

    def check(value: Any) -> list[str] | None:
        if value is None:
            return [": null value (AEP rejects nulls)"]
        if type_test is not None and not type_test(value):
            return [f": expected {kind}"]
        errors: list[str] = []
        if type(value) is str:
            if not value:
                return [": empty string (AEP rejects empty values)"]
            if fmt_re is not None and not fmt_re.match(value):
                errors.append(f": not a valid {fmt}")
            elif fmt == "uri-reference" and ":" in value.split("/", 1)[0] and not _URI_SCHEME.match(value):
                errors.append(": not a valid uri-reference")
            if pattern is not None and not pattern.search(value):
                errors.append(f": does not match pattern {pattern.pattern}")
        if enum is not None and value not in enum:
            errors.append(": not one of the allowed values")
        for key, limit in bounds:
            if (key == "minimum" and value < limit) or (key == "maximum" and value > limit):
                errors.append(": out of range")
            elif (key == "minLength" and len(value) < limit) or (key == "maxLength" and len(value) > limit):
                errors.append(": length out of range")
        return errors or None

    return check


def load_schema(kind: Literal["event", "profile"], tenant_id: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The compact schema of one record kind, with the tenant namespace as the mapping declares it
    (:mod:`connector.transform.tenant`), closed like the rest."""
    schema = standard_schema(kind, schema_dir)
    capillary = tenant.event_tenant_schema() if kind == "event" else tenant.profile_tenant_schema()
    key, block = tenant.tenant_block(tenant_id, capillary)
    schema["properties"][key] = block
    return schema


def standard_schema(kind: Literal["event", "profile"], schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The compact schema of one record kind: class and standard field groups, no tenant namespace."""
    name = "experienceevent" if kind == "event" else "profile"
    path = schema_dir / f"{name}.json"
    try:
        schema = json.loads(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"compact XDM schema {path} is missing ({exc.strerror}); "
                                "run scripts/build_xdm_schemas.py") from None
    return schema


# == the fast path ===========================================================================
# Python's ``\s`` (str.isspace), spelled out: Rust's Unicode White_Space differs (\x1c-\x1f).
_SPACES = "".join(f"\\u{c:04x}" for c in (*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680,
                                            *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))
_URI_REFERENCE_PATTERN = rf"^(?:[A-Za-z][A-Za-z0-9+.-]*:[^{_SPACES}]*|[^:/{_SPACES}]*(?:/[^{_SPACES}]*)?)$"
# Free-form content (the tenant namespace): any JSON but null and empty values, at any depth.
# Integers orjson can write (64 bits), as the Python check serialises it.
_FREE_DEFS = {"free": {"type": ["string", "number", "boolean", "object", "array"], "minLength": 1,
                       "minProperties": 1, "minItems": 1, "minimum": -(2**63), "maximum": 2**64 - 1,
                       "additionalProperties": {"$ref": "#/$defs/free"}, "items": {"$ref": "#/$defs/free"}}}


def _ecma_pattern(python_regex: str) -> str:
    """One of ``_FORMATS`` for ``re.match`` → an anchored ECMA-262 pattern at least as strict."""
    body = python_regex.removesuffix(r"\Z").replace(r"\d", "[0-9]")
    return "^(?:" + body.replace(r"[^@\s]", f"[^@{_SPACES}]") + ")$"


def _strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A compact-schema node as standard JSON Schema with AEP's extra rules spelled out (no nulls,
    non-empty strings, objects and arrays) and the enforced formats as patterns."""
    node = {k: v for k, v in schema.items() if k not in ("$comment", "$schema", "title", "description", "format")}
    kind = schema.get("type")
    fmt = schema.get("format")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        if not properties and additional is True:
            return {"$ref": "#/$defs/free"}
        node.update(type="object", minProperties=1,
                    properties={name: _strict_schema(sub) for name, sub in properties.items()})
        if isinstance(additional, dict):
            node["additionalProperties"] = _strict_schema(additional)
    elif kind == "array":
        node["minItems"] = max(1, schema.get("minItems", 1))
        if isinstance(schema.get("items"), dict):
            node["items"] = _strict_schema(schema["items"])
    elif kind is None:
        node["not"] = {"type": "null"}
    if kind == "string":
        node["minLength"] = max(1, schema.get("minLength", 1))
        if fmt == "uri-reference":
            node["allOf"] = [{"pattern": _URI_REFERENCE_PATTERN}]
        elif fmt in _FORMATS:
            node["allOf"] = [{"pattern": _ecma_pattern(_FORMATS[fmt].pattern)}]
    return node


def _fast_check(schema: dict[str, Any]) -> Callable[[Any], bool]:
    strict = _strict_schema(schema)
    strict["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    strict["$defs"] = _FREE_DEFS
    return jsonschema_rs.validator_for(strict, validate_formats=False).is_valid  # type: ignore[no-any-return] # jsonschema-rs is untyped


class XdmValidator:
    def __init__(self, event_schema: dict[str, Any], profile_schema: dict[str, Any], *, fast: bool = True) -> None:
        self._checks: dict[str, Check] = {"event": _compile(event_schema), "profile": _compile(profile_schema)}
        self._fast: dict[str, Callable[[Any], bool]] = (
            {"event": _fast_check(event_schema), "profile": _fast_check(profile_schema)} if fast else {})

    @classmethod
    def load(cls, tenant_id: str, schema_dir: str | Path | None = None, *, fast: bool = True) -> XdmValidator:
        directory = Path(schema_dir) if schema_dir is not None else SCHEMA_DIR
        return cls(load_schema("event", tenant_id, directory), load_schema("profile", tenant_id, directory),
                   fast=fast)

    def verdict(self, kind: Literal["event", "profile"]) -> Callable[[Any], bool]:
        """``valid?`` alone, as fast as it is answered (the Rust validator when there is one; it may
        raise on a value it cannot read): for callers that hand a refused record to ``errors``."""
        fast = self._fast.get(kind)
        if fast is not None:
            return fast
        check = self._checks[kind]
        return lambda entity: not check(entity)

    def errors(self, kind: Literal["event", "profile"], xdm_entity: Any) -> list[str]:
        """Up to five violations of ``xdm_entity`` against the schema of ``kind`` (empty list: valid)."""
        fast = self._fast.get(kind)
        if fast is not None:
            try:
                if fast(xdm_entity):
                    return []
            except Exception:  # noqa: BLE001, S110 - a value it cannot read (say, a 65-bit int): ask the checks
                pass
        found = self._checks[kind](xdm_entity)
        if not found:
            return []
        return [f"/{e}" if e.startswith(":") else e for e in found[:MAX_ERRORS]]
