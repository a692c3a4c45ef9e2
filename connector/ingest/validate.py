"""Validation at the door: body bytes → Kafka records, or a 400/413 that says why.

Cheap on purpose (one ``orjson.loads`` and :func:`normalize` per event): a request is accepted
when it is a JSON object or an array of objects in which every event has an event name, an
``eventId`` and a usable envelope (see :func:`normalize`; an empty array is accepted as nothing).
Capillary never retries a 4xx, so only what
can never succeed downstream is rejected; unknown event names are accepted (they go to the
``other`` family topic and the connector decides). A request is all or nothing: one bad event
makes the whole request 400 and nothing of it is produced, and the answer lists every bad index.

The record value is the event as received: the body itself for a single object, each array
element re-serialised (same JSON value) for arrays, so the connector decodes it like any JSON record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from connector.ingest.config import IngestConfig
from connector.kafka.topics import FAMILIES, topic_for
from connector.transform.envelope import normalize
from connector.transform.errors import TransformError
from connector.transform.times import to_ms

MAX_LISTED_ERRORS = 50
# createdAt as int epoch milliseconds within these bounds is always usable (times.to_ms reads
# 1e11..1e14 as milliseconds): the fast path skips the call for it.
_EPOCH_MS_LOW, _EPOCH_MS_HIGH = 100_000_000_000, 100_000_000_000_000
KNOWN_EVENTS = frozenset(name for names in FAMILIES.values() for name in names)


class Record(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    label: str  # event name for metrics: a known name or "other" (bounded cardinality)
    event_id: str


def _record(topic: str, key: bytes | None, value: bytes, label: str, event_id: str) -> Record:
    return _tuple_new(Record, (topic, key, value, label, event_id))  # skips NamedTuple's Python __new__


_tuple_new = tuple.__new__


class Rejected(Exception):
    """The request can never succeed: 400 (invalid) or 413 (an event larger than a Kafka message)."""

    def __init__(self, status: int, reason: str, detail: str, errors: list[dict[str, Any]] | None = None,
                 events: int = 0) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.errors = errors or []
        self.events = events

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.reason, "detail": self.detail}
        if self.errors:
            out["events"] = self.events
            out["invalid"] = len(self.errors)
            out["errors"] = self.errors[:MAX_LISTED_ERRORS]
        return out


def customer_key(data: Mapping[str, Any]) -> bytes | None:
    """The Capillary customer id as the record key (per-customer ordering), found where the
    transform finds the customer: ``customerIdentifiers``, a merge's survivor, or the customer of
    the first issued coupon (CouponIssue). Numbers are written without a fraction (``1.2E8``)."""
    ids = data.get("customerIdentifiers")
    if not isinstance(ids, Mapping):
        ids = data.get("survivorCustomerIdentifiers")
    if not isinstance(ids, Mapping):
        coupons = data.get("coupons")
        ids = next((c["customerIdentifiers"] for c in coupons if isinstance(c, Mapping)
                    and isinstance(c.get("customerIdentifiers"), Mapping)), None) if type(coupons) is list else None
    if ids is None:
        return None
    text = _id_text(ids.get("customerId"))
    return text.encode() if text is not None else None


def _id_text(value: Any) -> str | None:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return value.strip() or None
    if kind is float and value.is_integer():
        return str(int(value))
    return None


class Door:
    def __init__(self, cfg: IngestConfig, max_message_bytes: int) -> None:
        self._prefix = cfg.topic_prefix
        self._overrides = dict(cfg.topics)
        self._topics: dict[str, str] = {}
        self.labels = KNOWN_EVENTS | set(cfg.topics)
        self.max_message_bytes = max_message_bytes

    def topic(self, name: str) -> str:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._overrides.get(name) or topic_for(name, self._prefix)
            if len(self._topics) < 10_000:  # names come from senders: keep the cache bounded
                self._topics[name] = topic
        return topic

    def parse(self, body: bytes) -> list[Record]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            reason = "empty_body" if not body.strip() else "invalid_json"
            raise Rejected(400, reason, "the body is not valid JSON" + (f": {exc}" if body.strip() else "")) from None
        if isinstance(doc, dict):
            events: list[Any] = [doc]
        elif isinstance(doc, list):
            events = doc
        else:
            raise Rejected(400, "not_an_object", "the body must be a JSON object or an array of objects")
        value = body if events is not doc else None  # a single object is produced as it came
        records: list[Record] = []
        errors: list[dict[str, Any]] = []
        too_large = 0
        fast, limit = self._fast, self.max_message_bytes
        for index, raw in enumerate(events):
            record = fast(raw, value) if type(raw) is dict else None
            if record is None:
                try:
                    record = self._slow(raw, value)
                except TransformError as exc:
                    errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
                    continue
            if len(record.value) > limit:
                too_large += 1
                errors.append({"index": index, "reason": "too_large",
                               "detail": f"{len(record.value)} bytes; a Kafka message is at most {limit}"})
                continue
            records.append(record)
        if errors:
            status = 413 if too_large == len(errors) else 400
            reason = "event_too_large" if status == 413 else "invalid_event"
            first = errors[0]
            detail = (f"{first['reason']}: {first['detail']}" if value is not None else
                      f"{len(errors)} of {len(events)} events are invalid; nothing was accepted "
                      f"(first: index {first['index']}, {first['reason']}: {first['detail']})")
            raise Rejected(status, reason, detail, errors, len(events))
        return records

    def _slow(self, raw: Any, value: bytes | None) -> Record:
        """Any envelope, through the connector's own reader."""
        if not isinstance(raw, dict):
            raise TransformError("invalid_envelope", f"event is a {_json_type(raw)}, not an object")
        event = normalize(raw)
        if event.event_id is None:
            raise TransformError("missing_field", "eventId")
        name = event.name
        return _record(self.topic(name), customer_key(event.data), orjson.dumps(raw) if value is None else value,
                       name if name in self.labels else "other", event.event_id)

    def _fast(self, raw: dict[str, Any], value: bytes | None) -> Record | None:
        """A clean flat event (Capillary's usual webhook body) read directly: the same record
        :meth:`_slow` makes, at a third of the cost. ``None`` for anything else (other envelopes,
        keys with stray spaces, unusual values): then the slow path decides."""
        name = raw.get("eventName")
        if type(name) is not str or not name.isidentifier() or "attributes" in raw or " " in "".join(raw):
            return None
        event_id = raw.get("eventId")
        if type(event_id) is str:
            event_id = event_id.strip()
        elif type(event_id) is int:
            event_id = str(event_id)
        else:
            return None
        data = raw.get("data")
        if not event_id or type(data) is not dict:
            return None
        created = raw.get("createdAt")
        if not (type(created) is int and _EPOCH_MS_LOW <= created < _EPOCH_MS_HIGH) and (
                created is None or to_ms(created) is None):
            return None
        ids = data.get("customerIdentifiers")
        if type(ids) is not dict or " " in "".join(data) or " " in "".join(ids):
            return None
        customer = ids.get("customerId")
        if type(customer) is int:
            key = b"%d" % customer
        else:
            text = _id_text(customer)
            if text is None:
                return None
            key = text.encode()
        topic = self._topics.get(name) or self.topic(name)
        return _record(topic, key, orjson.dumps(raw) if value is None else value,
                       name if name in self.labels else "other", event_id)


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
