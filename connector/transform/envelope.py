"""Tolerant reading of a Capillary event, whatever envelope it came in.

Accepted shapes (capillary-events.md A.3, A.4):

* flat: ``{eventName, eventId, eventLogId, orgId, refId, apiRequestId, createdAt, loyaltyEventId,
  traceAttributes, data}`` — the webhook body and the Avro records;
* wrapped/bus: ``{eventId, eventType, timeStamp, attributes: {eventName, createdAt, orgId, data, ...}}``
  where ``eventType`` may carry an ``"<orgId>_"`` prefix;
* either of them inside ``{"body": {...}}`` or ``{"data": {...}, "errors": null, "warnings": null}``.

Documented typos are repaired here so that the mappings only ever see the right names: keys with
stray spaces (``"apiRequestId "``, ``"loyaltyProgram Details"``), ``"Instore"``,
``"totalPoinstDeducted"``, event names with spaces (``"points Redeemed"``). ``None`` means absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.transform.errors import TransformError
from connector.transform.times import to_ms

# Misspelt keys → right keys, per object kind. Checked with one dict lookup each (no scanning).
_DATA_TYPOS = {"totalPoinstDeducted": "totalPointsDeducted"}
_IDENTIFIER_TYPOS = {"Instore": "instore", "InStore": "instore"}
_MAX_WRAPPING = 4


@dataclass(slots=True)  # not frozen: a frozen dataclass __init__ costs ~1 µs per event
class CapillaryEvent:
    name: str
    event_id: str | None
    created_at_ms: int
    org_id: str | None
    data: Mapping[str, Any]
    top: Mapping[str, Any]  # the top-level fields (flat envelope, or attributes + eventId/eventType)


def normalize(raw: Mapping[str, Any]) -> CapillaryEvent:
    """Read one event in any supported envelope; raise ``TransformError`` when it has none."""
    if type(raw) is not dict:
        if not isinstance(raw, Mapping):
            raise TransformError("invalid_envelope", f"event is a {type(raw).__name__}, not an object")
        raw = dict(raw)  # below, objects are recognised as dicts (isinstance(x, Mapping) costs ~0.2 µs)
    top = _unwrap(_fix_keys(raw))
    name = top.get("eventName")
    attributes = top.get("attributes")
    if isinstance(attributes, dict):  # wrapped/bus envelope
        attributes = _fix_keys(attributes)
        merged = dict(attributes)
        for key in ("eventId", "eventType", "timeStamp"):
            if top.get(key) is not None and merged.get(key) is None:
                merged[key] = top[key]
        top = merged
        name = top.get("eventName")
    if name is None or (type(name) is str and not name.strip()):
        name = _strip_org_prefix(top.get("eventType"))
    if type(name) is not str or not name.strip():
        raise TransformError("invalid_envelope", "no eventName or eventType")
    if " " in name:
        name = name.replace(" ", "")
    name = name.strip()

    created = top.get("createdAt")
    if created is None:
        created = top.get("timeStamp")
    if created is None:
        raise TransformError("missing_field", "createdAt")
    created_ms = to_ms(created)
    if created_ms is None:
        raise TransformError("invalid_value", "createdAt is not a usable epoch or date-time")

    data = top.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise TransformError("invalid_envelope", "data is not an object")
    else:
        data = _fix_data(data)

    event_id = top.get("eventId")
    if event_id is not None:
        event_id = _id_text(event_id)
    org_id = top.get("orgId")
    if org_id is not None:
        org_id = _id_text(org_id)
    return CapillaryEvent(name, event_id, created_ms, org_id, data, top)


def _unwrap(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(_MAX_WRAPPING):
        if "eventName" in raw or "eventType" in raw:
            return raw
        body = raw.get("body")
        if isinstance(body, dict):
            raw = _fix_keys(body)
            continue
        inner = raw.get("data")
        if isinstance(inner, dict) and (
            "errors" in raw or "warnings" in raw or "eventName" in inner or "eventType" in inner
        ):
            raw = _fix_keys(inner)
            continue
        return raw
    return raw


def _fix_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    data = _fix_keys(data)
    for wrong, right in _DATA_TYPOS.items():
        if wrong in data and right not in data:
            data = {right if k == wrong else k: v for k, v in data.items()}
    for key in ("customerIdentifiers", "survivorCustomerIdentifiers", "victimCustomerIdentifiers"):
        ci = data.get(key)
        if isinstance(ci, dict):
            fixed = _fix_identifiers(ci)
            if fixed is not ci:
                data = dict(data)
                data[key] = fixed
    return data


def _fix_identifiers(ci: Mapping[str, Any]) -> Mapping[str, Any]:
    ci = _fix_keys(ci)
    for wrong, right in _IDENTIFIER_TYPOS.items():
        if wrong in ci and ci.get(right) is None:
            ci = {right if k == wrong else k: v for k, v in ci.items() if k != right}
    instore = ci.get("instore")
    if isinstance(instore, dict):
        fixed = _fix_keys(instore)
        if fixed is not instore:
            ci = dict(ci)
            ci["instore"] = fixed
    return ci


def _fix_keys(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """Remove spaces from keys (``"email "`` → ``"email"``); returns ``obj`` itself when none has one.

    ``" " in "".join(obj)`` runs in C over the keys, so the common clean case costs ~0.2 µs.
    """
    try:
        if " " not in "".join(obj):
            return obj
    except TypeError:  # a non-string key: not from JSON or Avro, keep the object as it is
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        fixed = key.replace(" ", "") if " " in key else key
        if fixed not in out or out[fixed] is None:
            out[fixed] = value
    return out


def _strip_org_prefix(event_type: Any) -> str | None:
    """``"150698_customerAdded"`` → ``"customerAdded"``."""
    if type(event_type) is not str:
        return None
    head, sep, tail = event_type.partition("_")
    if sep and head.isdigit() and tail:
        return tail
    return event_type


def _id_text(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        value = value.strip()
        return value or None
    if kind is int:
        return str(value)
    if kind is float and value.is_integer():
        return str(int(value))
    return None
