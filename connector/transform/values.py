"""Small value coercions used by every mapping. Each returns ``None`` for "nothing to emit", which is
how the mappings honour AEP's rule that no field may be null or empty (aep-streaming-api.md §3.4)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from math import isfinite
from typing import Any

_CURRENCY = re.compile(r"[A-Z]{3}\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_NOT_FIELD_CHAR = re.compile(r"[^A-Za-z0-9_]")


def id_str(value: Any) -> str | None:
    """An identifier as a string: ``3122204``, ``3122204.0`` and ``" 3122204 "`` → ``"3122204"``."""
    kind = type(value)
    if kind is str:
        value = value.strip()
        return value or None
    if kind is int:
        return str(value)
    if kind is float and isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def text(value: Any) -> str | None:
    """A non-blank string (numbers are written out, other types dropped)."""
    kind = type(value)
    if kind is str:
        value = value.strip()
        return value or None
    if kind is int or kind is float:
        return id_str(value)
    return None


def num(value: Any) -> int | float | None:
    """A finite number; numeric strings are accepted, booleans are not."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float:
        return value if isfinite(value) else None
    if kind is str:
        try:
            f = float(value)
        except ValueError:
            return None
        return f if isfinite(f) else None
    return None


def int_or_none(value: Any) -> int | None:
    n = num(value)
    if n is None or (type(n) is float and not n.is_integer()):
        return None
    return int(n)


def boolean(value: Any) -> bool | None:
    if type(value) is bool:
        return value
    if type(value) is str:
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
    return None


def currency(value: Any) -> str | None:
    """ISO-4217 code or None (Capillary sometimes sends ``" "``)."""
    if type(value) is not str:
        return None
    code = value.strip().upper()
    return code if _CURRENCY.match(code) else None


def email(value: Any) -> str | None:
    """Trimmed, lower-cased address if it looks like one (XDM ``format: email`` rejects the record otherwise)."""
    if type(value) is not str:
        return None
    address = value.strip().lower()
    return address if _EMAIL.match(address) else None


def phone_digits(value: Any) -> str | None:
    """Digits only, leading zeros stripped (Capillary mobiles carry the country code, no ``+``)."""
    if type(value) is int:
        value = str(value)
    elif type(value) is not str:
        return None
    digits = value if value.isdigit() else "".join(ch for ch in value if ch.isdigit())
    digits = digits.lstrip("0")
    return digits if len(digits) >= 5 else None


def key_values(items: Any) -> list[dict[str, Any]] | None:
    """``[{key, value}]`` lists (customFields, identifiers, ...) without blank entries."""
    if type(items) is not list:
        return None
    out = []
    for item in items:
        if isinstance(item, dict):
            key = text(item.get("key"))
            value = text(item.get("value"))
            if key is not None and value is not None:
                out.append({"key": key, "value": value})
    return out or None


def string_map(value: Any) -> dict[str, str] | None:
    """An XDM map of strings from an object of attributes or a ``[{key, value}]`` list; nested values
    become compact JSON text. (The shape of e.g. ``behavioralEventAttributes`` is undocumented.)"""
    if type(value) is list:
        pairs = key_values(value)
        return {p["key"]: p["value"] for p in pairs} if pairs else None
    if not isinstance(value, Mapping):
        return None
    out = {}
    for key, item in value.items():
        item = clean(item)
        if item is not None:
            out[field_name(str(key))] = item if type(item) is str else text(item) or compact_json(item)
    return out or None


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def field_name(key: str) -> str:
    """A string usable as an XDM field name (letters, digits, underscore)."""
    name = _NOT_FIELD_CHAR.sub("_", key)
    return name if name and not name[0].isdigit() else f"_{name}"


def clean(value: Any) -> Any:
    """Deep copy of JSON-like data without nulls, blank strings, empty objects/arrays or non-finite numbers.

    Keys are made XDM-safe. Used only where a payload part is carried over as it is (tenant extras,
    unknown events); the typed mappings never produce empties in the first place.
    """
    kind = type(value)
    if kind is str:
        value = value.strip()
        return value or None
    if kind is int or kind is bool:
        return value
    if kind is float:
        return value if isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = clean(item)
            if item is not None:
                out[field_name(str(key))] = item
        return out or None
    if isinstance(value, (list, tuple)):
        items = [c for c in (clean(v) for v in value) if c is not None]
        return items or None
    return None


def put(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``target[key]`` unless ``value`` is None (the mappings' one way of writing fields)."""
    if value is not None:
        target[key] = value
