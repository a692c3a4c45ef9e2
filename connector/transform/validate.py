"""Pre-flight XDM validation against the compact schemas in ``xdm/`` (built by
``scripts/build_xdm_schemas.py`` from the official adobe/xdm schemas).

AEP validates streamed records asynchronously: a bad record is accepted with HTTP 200 and then
lands in a failed batch that nobody sees. Checking here turns that into an immediate, counted
dead-letter with the reason. The schema is compiled once into nested closures (no generic JSON
Schema interpreter on the hot path); a record costs a few microseconds.

Checked: ``type``, ``required``, closed objects (unknown fields), ``enum``, ``pattern``, the
formats AEP enforces (``date-time``, ``date``, ``email``, ``uri-reference``), length and range
bounds, and AEP's "no null or empty values" rule. Messages name paths, never values (no PII).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

SCHEMA_DIR = Path(__file__).resolve().parent / "xdm"
MAX_ERRORS = 5  # AEP's synchronous validation also reports at most five violations

Check = Callable[[Any, str, list[str]], None]

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


class _TooMany(Exception):
    pass


def _error(errors: list[str], message: str) -> None:
    errors.append(message)
    if len(errors) >= MAX_ERRORS:
        raise _TooMany


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and v == v and v not in (float("inf"), float("-inf"))


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


def _compile_object(schema: dict[str, Any]) -> Check:
    props = {name: _compile(sub) for name, sub in schema.get("properties", {}).items()}
    required = tuple(schema.get("required", ()))
    additional = schema.get("additionalProperties", True)
    extra: Check | None = _compile(additional) if isinstance(additional, dict) else None
    closed = additional is False
    free = not props and extra is None and not closed  # e.g. the tenant namespace

    def check(value: Any, path: str, errors: list[str]) -> None:
        if type(value) is not dict:
            _error(errors, f"{path or '/'}: expected object")
            return
        if not value:
            _error(errors, f"{path or '/'}: empty object (AEP rejects empty values)")
            return
        for name in required:
            if name not in value:
                _error(errors, f"{path}/{name}: required field missing")
        if free:
            _check_free(value, path, errors)
            return
        for key, item in value.items():
            sub = props.get(key)
            if sub is not None:
                sub(item, f"{path}/{key}", errors)
            elif extra is not None:
                extra(item, f"{path}/{key}", errors)
            elif closed:
                _error(errors, f"{path}/{key}: unknown field")

    return check


def _check_free(value: Any, path: str, errors: list[str]) -> None:
    """Free-form content (tenant namespace): only AEP's no-null/no-empty rule applies."""
    if value is None:
        _error(errors, f"{path}: null value")
    elif type(value) is dict:
        if not value:
            _error(errors, f"{path}: empty object")
        for key, item in value.items():
            _check_free(item, f"{path}/{key}", errors)
    elif type(value) is list:
        if not value:
            _error(errors, f"{path}: empty array")
        for i, item in enumerate(value):
            _check_free(item, f"{path}/{i}", errors)
    elif type(value) is str:
        if not value:
            _error(errors, f"{path}: empty string")
    elif type(value) is float and not _is_number(value):
        _error(errors, f"{path}: not a finite number")


def _compile_array(schema: dict[str, Any]) -> Check:
    items_schema = schema.get("items")
    item_check = _compile(items_schema) if isinstance(items_schema, dict) else None

    def check(value: Any, path: str, errors: list[str]) -> None:
        if type(value) is not list:
            _error(errors, f"{path}: expected array")
            return
        if not value:
            _error(errors, f"{path}: empty array (AEP rejects empty values)")
            return
        if item_check is not None:
            for i, item in enumerate(value):
                item_check(item, f"{path}/{i}", errors)

    return check


def _compile_scalar(schema: dict[str, Any]) -> Check:
    kind = schema.get("type")
    type_test = _TYPE_TESTS.get(kind) if isinstance(kind, str) else None
    enum = frozenset(schema["enum"]) if "enum" in schema else None
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    fmt = schema.get("format")
    fmt_re = _FORMATS.get(fmt) if fmt else None
    bounds = [(k, schema[k]) for k in ("minimum", "maximum", "minLength", "maxLength") if k in schema]

    def check(value: Any, path: str, errors: list[str]) -> None:
        if value is None:
            _error(errors, f"{path}: null value (AEP rejects nulls)")
            return
        if type_test is not None and not type_test(value):
            _error(errors, f"{path}: expected {kind}")
            return
        if type(value) is str:
            if not value:
                _error(errors, f"{path}: empty string (AEP rejects empty values)")
                return
            if fmt_re is not None and not fmt_re.match(value):
                _error(errors, f"{path}: not a valid {fmt}")
            elif fmt == "uri-reference" and ":" in value.split("/", 1)[0] and not _URI_SCHEME.match(value):
                _error(errors, f"{path}: not a valid uri-reference")
            if pattern is not None and not pattern.search(value):
                _error(errors, f"{path}: does not match pattern {pattern.pattern}")
        if enum is not None and value not in enum:
            _error(errors, f"{path}: not one of the allowed values")
        for key, limit in bounds:
            if key == "minimum" and value < limit or key == "maximum" and value > limit:
                _error(errors, f"{path}: out of range")
            elif key == "minLength" and len(value) < limit or key == "maxLength" and len(value) > limit:
                _error(errors, f"{path}: length out of range")

    return check


def load_schema(kind: Literal["event", "profile"], tenant_id: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The compact schema of one record kind, with the tenant namespace added as a free-form object."""
    name = "experienceevent" if kind == "event" else "profile"
    path = schema_dir / f"{name}.json"
    try:
        schema = json.loads(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"compact XDM schema {path} is missing ({exc.strerror}); "
                                "run scripts/build_xdm_schemas.py") from None
    schema["properties"][f"_{tenant_id}"] = {"type": "object"}
    return schema


class XdmValidator:
    def __init__(self, event_schema: dict[str, Any], profile_schema: dict[str, Any]) -> None:
        self._checks: dict[str, Check] = {"event": _compile(event_schema), "profile": _compile(profile_schema)}

    @classmethod
    def load(cls, tenant_id: str, schema_dir: str | Path | None = None) -> XdmValidator:
        directory = Path(schema_dir) if schema_dir is not None else SCHEMA_DIR
        return cls(load_schema("event", tenant_id, directory), load_schema("profile", tenant_id, directory))

    def errors(self, kind: Literal["event", "profile"], xdm_entity: Any) -> list[str]:
        """Up to five violations of ``xdm_entity`` against the schema of ``kind`` (empty list: valid)."""
        errors: list[str] = []
        try:
            self._checks[kind](xdm_entity, "", errors)
        except _TooMany:
            pass
        return errors
