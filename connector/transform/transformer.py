"""Capillary event → AEP streaming messages (ExperienceEvent first, then the profile update, if any).

Pure: no I/O and no clock except the injected ``now``. The only state is the program/tier cache
(tier names arrive on some events and are needed on later ones). Each event first meets a function
generated for its type (:mod:`connector.transform.compiled`); this module's own path is the
reference it must equal and what takes every record it declines. Output dicts are fresh per call;
header sub-objects (``schemaRef``, ``source``) are shared between messages of one route, and the
event and profile messages of one call share their ``identityMap``: treat messages as read-only.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from connector.config import RouteConfig, XdmConfig
from connector.transform.compiled import build
from connector.transform.envelope import CapillaryEvent, normalize
from connector.transform.errors import TransformError
from connector.transform.events import PASSTHROUGH_FIELDS, Draft, EventSpec, copy_fields, find_spec, passthrough
from connector.transform.identity import IdentityMapper
from connector.transform.programs import Program, ProgramCache
from connector.transform.times import iso_ms
from connector.transform.values import email, field_name, id_str, key_values, phone_digits, text

# _id values used as they are: uri-reference safe, no colon (EECLASS: "strip colons").
_SAFE_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}\Z")
# Profile loyalty fields that belong to one program (see "Multi-program orgs" in docs/mapping.md).
_PROGRAM_FIELDS = ("points", "lifetimePoints", "promisedPoints", "tier", "tierUpgradeDate", "tierExpiryDate")
# Where the store/till of an event is: the first of these data keys holding an enteredBy-like object.
_ENTERED_BY_KEYS = ("enteredBy", "addedBy")
_LINEAGE_FIELDS = ("refId", "loyaltyEventId", "apiRequestId")


@dataclass(frozen=True, slots=True)
class XdmMessage:
    kind: Literal["event", "profile"]
    event_name: str  # Capillary event name
    event_type: str  # XDM eventType, or "profile"
    envelope: dict[str, Any]  # {"header": {...}, "body": {"xdmMeta": {...}, "xdmEntity": {...}}}


class _Route:
    __slots__ = ("header", "schema_ref")

    def __init__(self, route: RouteConfig, org_id: str, source_name: str) -> None:
        self.schema_ref = {"id": route.schema_id, "contentType": route.content_type}
        header: dict[str, Any] = {"schemaRef": self.schema_ref, "imsOrgId": org_id, "datasetId": route.dataset_id}
        if route.flow_id:
            header["flowId"] = route.flow_id
        if source_name:
            header["source"] = {"name": source_name}
        self.header = header

    def envelope(self, entity: dict[str, Any]) -> dict[str, Any]:
        return {"header": dict(self.header), "body": {"xdmMeta": {"schemaRef": self.schema_ref}, "xdmEntity": entity}}


class Transformer:
    def __init__(
        self, cfg: XdmConfig, *, org_id: str, source_name: str, now: Callable[[], float] = time.time,
        fast: bool = True,
    ) -> None:
        self._cfg = cfg
        self._now = now
        self._tenant_key = f"_{cfg.tenant_id}"
        self._identity = IdentityMapper(cfg.identity)
        self._programs = ProgramCache()
        self._reject_future = cfg.future_timestamps == "reject"
        self._skew_ms = int(cfg.future_skew_s * 1000)
        self._passthrough = cfg.unknown_events == "passthrough"
        self._event_route = _Route(cfg.event, org_id, source_name)
        self._event_routes = {n: _Route(r, org_id, source_name) for n, r in cfg.event_overrides.items()}
        self._profile_route = _Route(cfg.profile, org_id, source_name) if cfg.profile is not None else None
        self._profile_routes = {n: _Route(r, org_id, source_name) for n, r in cfg.profile_overrides.items()}
        stamp = cfg.profile_timestamp_field
        self._stamp_path = tuple(stamp.split(".")) if stamp != "off" else ()
        self._validator = None
        if cfg.preflight_validation:
            from connector.transform.validate import XdmValidator

            self._validator = XdmValidator.load(cfg.tenant_id)
        # The generated per-event-type functions (connector.transform.compiled); this class's own
        # path is the reference they are tested against and what takes every record they decline.
        self._fast: dict[str, Callable[[dict[str, Any]], list[XdmMessage] | None]] = {}
        self._fast_events: dict[str, Callable[[CapillaryEvent], list[XdmMessage] | None]] = {}
        if fast:
            self._fast, self._fast_events = build(self._fast_parts(), self._routes, self._identity.hashes_pii,
                                                  self._stamp_path, self._validator)
        self.declines: Counter[str] = Counter()  # records the fast path handed back, by event name ("other")
        self.declined_total = 0  # the same, summed: a caller sees a decline by comparing before and after

    def _routes(self, name: str) -> tuple[_Route, _Route | None]:
        profile = self._profile_routes.get(name, self._profile_route) if self._profile_route is not None else None
        return self._event_routes.get(name, self._event_route), profile

    def _fast_parts(self) -> dict[str, Any]:
        """What the generated functions read: this transformer's parts and this module's helpers."""
        identity = self._identity
        ids = self._cfg.identity
        return {
            "_now": self._now, "_programs": self._programs, "_observe": self._programs.observe,
            "_program_get": self._programs.get, "_identity": identity, "_contact": self._contact,
            "_other_program": _other_program, "PROGRAM_FIELDS": _PROGRAM_FIELDS,
            "SKEW": self._skew_ms, "TENANT_KEY": self._tenant_key, "STATE": ids.authenticated_state,
            "CUST_NS": ids.customer_id_namespace, "EXT_NS": ids.external_id_namespace, "CARD_NS": ids.card_namespace,
            "EMAIL_NS": identity.email_namespace, "PHONE_NS": identity.phone_namespace,
            "_XdmMessage": XdmMessage, "_record_id": _record_id, "_safe_id": _SAFE_ID.match,
            "_customer_identifiers": _customer_identifiers,
            "_linked_customer_ids": _linked_customer_ids,
        }

    @property
    def dropped_identities(self) -> list[str]:
        """Reasons of the identities the last ``transform`` left out (AEP's guardrails)."""
        return self._identity.dropped

    @property
    def programs(self) -> ProgramCache:
        return self._programs

    def transform(self, raw: Mapping[str, Any]) -> list[XdmMessage]:
        """One Capillary event → its XDM messages; ``TransformError`` if it can never succeed.

        Any other exception would be a mapping bug meeting a payload shape nobody foresaw; it is
        reported as ``invalid_value`` (naming the exception type) so one odd record is dead-lettered
        instead of stopping the partition.
        """
        if type(raw) is dict:  # the usual case, tried here without a call: a flat event of ours
            name = raw.get("eventName")
            fn = self._fast.get(name) if type(name) is str else None
            if fn is not None:
                try:
                    messages = fn(raw)
                except Exception:  # noqa: BLE001 - whatever it cannot do, the generic path decides
                    messages = None
                if messages:
                    return messages
                if messages is None:
                    self.declines[name] += 1
                    self.declined_total += 1
                    return self._generic(raw)
        if self._fast_events:  # any other envelope (or a flat one the function asked to re-read)
            messages = self._try_fast(raw)
            if messages is not None:
                return messages
        return self._generic(raw)

    def _generic(self, raw: Mapping[str, Any]) -> list[XdmMessage]:
        """The reference path: what the fast path must equal, and what takes every record it declines."""
        try:
            return self._transform(raw)
        except TransformError:
            raise
        except Exception as exc:
            raise TransformError("invalid_value", f"unexpected payload shape ({type(exc).__name__})") from exc

    def _try_fast(self, raw: Mapping[str, Any]) -> list[XdmMessage] | None:
        """An event in another envelope (or a flat one a generated function asked to re-read), read by
        the generic reader, then its generated function's messages; None: it declined (counted), or
        none applies (an unknown event, an envelope with no event in it: the generic path decides)."""
        name = None
        try:
            event = normalize(raw)
            spec = find_spec(event.name)
            if spec is None:
                return None
            name = spec.name
            event_fn = self._fast_events.get(name)
            messages = event_fn(event) if event_fn is not None else None
        except Exception:  # noqa: BLE001 - whatever it cannot do, the generic path decides
            messages = None
        if messages is None:
            self.declines[name or "other"] += 1
            self.declined_total += 1
        return messages

    def _transform(self, raw: Mapping[str, Any]) -> list[XdmMessage]:
        event = normalize(raw)
        spec = find_spec(event.name)
        if spec is None:
            if not self._passthrough:
                raise TransformError("unknown_event", f"no mapping for event {event.name[:100]!r}")
            spec = EventSpec(event.name, f"loyalty.{field_name(event.name)}", passthrough, computed=PASSTHROUGH_FIELDS)
        name = spec.name
        data = event.data

        timestamp_ms = event.created_at_ms
        now_ms = int(self._now() * 1000)
        if timestamp_ms > now_ms + self._skew_ms:
            if self._reject_future:
                raise TransformError("future_timestamp", f"createdAt is {(timestamp_ms - now_ms) // 1000}s in the future")
            timestamp_ms = now_ms
        timestamp = iso_ms(timestamp_ms)

        customer = _customer_identifiers(spec, data)
        linked = _linked_customer_ids(data) if name == "loyaltyCustomerMerge" else ()
        identity_map = self._identity.identity_map(customer, linked)
        if identity_map is None and spec.build is not passthrough:
            raise TransformError("missing_field", f"{spec.identity_key or 'customerIdentifiers'}.customerId")

        program_id = id_str(data.get("loyaltyProgramId"))
        details = data.get("loyaltyProgramDetails")
        if details is not None:
            self._programs.observe(program_id, details)
            if program_id is None and isinstance(details, dict):
                program_id = id_str(details.get("id"))
        draft = Draft(data, spec.event_type, timestamp, self._programs, self._identity.hashes_pii)
        draft.program_id = program_id
        if spec.tenant:
            copy_fields(draft.tenant, data, spec.tenant)
        spec.build(draft, data)

        record_id = _record_id(event, name, customer)
        entity: dict[str, Any] = {
            "_id": record_id,
            "timestamp": timestamp,
            "eventType": draft.event_type,
            "producedBy": "system",
        }
        if identity_map is not None:
            entity["identityMap"] = identity_map
        entity.update(draft.entity)
        entered_by = _entered_by(data)
        store = _store_code(entered_by) if entered_by is not None else None
        if store is not None:
            commerce = entity.get("commerce")
            if commerce is None:
                commerce = entity["commerce"] = {}
            commerce["commerceScope"] = {"storeCode": store}
        entity[self._tenant_key] = {"capillary": self._lineage(event, name, data, program_id, entered_by, draft.tenant)}

        messages = [XdmMessage("event", name, draft.event_type, self._event_routes.get(name, self._event_route).envelope(entity))]
        profile = self._profile(spec, draft, customer, identity_map, record_id) if self._profile_route else None
        if self._validator is not None:
            self._validate("event", entity, name)
            if profile is not None:
                self._validate("profile", profile, name)
        if profile is not None:
            route = self._profile_routes.get(name, self._profile_route)
            messages.append(XdmMessage("profile", name, "profile", route.envelope(profile)))  # type: ignore[union-attr] # set in __init__ whenever this path is taken
        return messages

    def _lineage(
        self, event: CapillaryEvent, name: str, data: Mapping[str, Any], program_id: str | None,
        entered_by: Mapping[str, Any] | None, extra: dict[str, Any],
    ) -> dict[str, Any]:
        """Fields XDM has no place for that tie the record back to Capillary, then the event's own extras."""
        top = event.top
        out: dict[str, Any] = {"eventName": name}
        if event.org_id is not None:
            out["orgId"] = event.org_id
        if event.event_id is not None:
            out["eventId"] = event.event_id
        for key in _LINEAGE_FIELDS:
            value = top.get(key)
            if value is not None:
                value = text(value)
                if value is not None:
                    out[key] = value
        log_id = top.get("eventLogId")
        if log_id is not None:
            log_id = id_str(log_id)
            if log_id is not None and log_id != "-1":
                out["eventLogId"] = log_id
        if program_id is not None:
            out["loyaltyProgramId"] = program_id
            program = self._programs.get(program_id)
            if program is not None and program.name is not None:
                out["loyaltyProgramName"] = program.name
        activity = _triggering_activity(data.get("triggeringActivity"))
        if activity is not None:
            out["triggeringActivity"] = activity
        if entered_by is not None:
            _store_fields(out, entered_by)
        out.update(extra)
        return out

    def _profile(
        self, spec: EventSpec, draft: Draft, customer: Mapping[str, Any] | None,
        identity_map: dict[str, Any] | None, record_id: str,
    ) -> dict[str, Any] | None:
        if not spec.profile or identity_map is None:
            return None
        loyalty = draft.loyalty
        tenant = draft.profile_tenant
        program = self._programs.get(draft.program_id)
        if any(key in loyalty for key in _PROGRAM_FIELDS):
            if program is not None and program.is_default is False:
                tenant = _other_program(loyalty, tenant, program, draft.program_id)  # type: ignore[arg-type] # a program has an id
            elif program is not None and program.name is not None:
                loyalty["program"] = program.name
        profile: dict[str, Any] = {"_id": f"{record_id}-profile", "identityMap": identity_map}
        if spec.contact:
            if draft.person:
                profile["person"] = {"name": draft.person["name"]}
            if not self._identity.hashes_pii:
                self._contact(profile, customer, draft)
        if loyalty:
            profile["loyalty"] = loyalty
        if tenant:
            profile[self._tenant_key] = {"capillary": tenant}
        if len(profile) == 2 and not draft.profile_wanted:
            return None  # nothing but identities: no profile update
        if self._stamp_path:
            # The source's time of this update, for a timestamp-ordered merge policy in AEP.
            node = profile
            for key in self._stamp_path[:-1]:
                node = node.setdefault(key, {})
            node[self._stamp_path[-1]] = draft.timestamp
        return profile

    def _contact(self, profile: dict[str, Any], customer: Mapping[str, Any] | None, draft: Draft) -> None:
        contact = self._identity.contact(customer)
        address = email(draft.email_update) if draft.email_update is not None else None
        if address is None and contact is not None:
            address = contact.email
        digits = phone_digits(draft.mobile_update) if draft.mobile_update is not None else None
        if digits is None and contact is not None:
            digits = contact.phone
        if address is not None:
            profile["personalEmail"] = {"address": address}
        if digits is not None:
            profile["mobilePhone"] = {"number": digits}

    def _validate(self, kind: Literal["event", "profile"], entity: dict[str, Any], name: str) -> None:
        errors = self._validator.errors(kind, entity)  # type: ignore[union-attr] # set in __init__ whenever this path is taken
        if errors:
            raise TransformError("xdm_invalid", f"{name} {kind}: " + "; ".join(errors))


def _customer_identifiers(spec: EventSpec, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    key = spec.identity_key
    ci = data.get(key or "customerIdentifiers")
    if isinstance(ci, dict):
        return ci
    if key is None:  # CouponIssue: the customer sits on each issued coupon
        coupons = data.get("coupons")
        if type(coupons) is list:
            for coupon in coupons:
                if isinstance(coupon, dict) and isinstance(coupon.get("customerIdentifiers"), dict):
                    return coupon["customerIdentifiers"]
    return None


def _linked_customer_ids(data: Mapping[str, Any]) -> tuple[str, ...]:
    victim = data.get("victimCustomerIdentifiers")
    if isinstance(victim, dict):
        cid = id_str(victim.get("customerId"))
        if cid is not None:
            return (cid,)
    return ()


def _record_id(event: CapillaryEvent, name: str, customer: Mapping[str, Any] | None) -> str:
    """``eventId`` when it is a safe token; else a stable hash, so that re-deliveries keep their ``_id``."""
    event_id = event.event_id
    if event_id is not None:
        if _SAFE_ID.match(event_id):
            return event_id
        basis = f"eventId|{event_id}"
    else:
        top = event.top
        basis = "|".join((
            event.org_id or "",
            name,
            text(top.get("refId")) or "",
            text(top.get("loyaltyEventId")) or "",
            id_str(top.get("eventLogId")) or "",
            (id_str(customer.get("customerId")) or "") if customer is not None else "",
            str(event.created_at_ms),
        ))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def _entered_by(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in _ENTERED_BY_KEYS:
        value = data.get(key)
        if isinstance(value, dict):
            return value
    activity = data.get("triggeringActivity")
    if isinstance(activity, dict):
        value = activity.get("enteredBy")
        if isinstance(value, dict):
            return value
    return None


def _store_code(entered: Mapping[str, Any]) -> str | None:
    store = entered.get("store")
    if not isinstance(store, dict):
        return None
    return text(store.get("code")) or text(store.get("externalId"))


def _store_fields(out: dict[str, Any], entered: Mapping[str, Any]) -> None:
    till = entered.get("till")
    if isinstance(till, dict):
        code = text(till.get("code"))
        if code is not None:
            out["tillCode"] = code
    store = entered.get("store")
    if isinstance(store, dict):
        for source, target in (("code", "storeCode"), ("name", "storeName"), ("externalId", "storeExternalId")):
            value = text(store.get(source))
            if value is not None:
                out[target] = value


def _triggering_activity(activity: Any) -> dict[str, Any] | None:
    if not isinstance(activity, dict):
        return None
    out: dict[str, Any] = {}
    name = text(activity.get("name"))
    if name is not None:
        out["name"] = name
    request_id = text(activity.get("requestId"))
    if request_id is not None:
        out["requestId"] = request_id
    for key in ("identifiers", "additionalAttributes"):
        items = activity.get(key)
        if items:
            pairs = key_values(items)
            if pairs is not None:
                out[key] = pairs
    return out or None


def _other_program(loyalty: dict[str, Any], tenant: dict[str, Any], program: Program, program_id: str) -> dict[str, Any]:
    """Profile loyalty.* is single-valued: it follows the default program; another program's state is
    moved from ``loyalty`` to the tenant's per-program maps (with ``tenant``, the profile's tenant fields)."""
    state = {key: loyalty.pop(key) for key in _PROGRAM_FIELDS if key in loyalty}
    if program.name is not None:
        state["program"] = program.name
    state.update(tenant)
    return {"programs": _program_maps(program_id, state)}


def _program_maps(program_id: str, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One program's state as XDM maps keyed by its id (``programs.<field>.<programId>``): a map holds
    strings or integers only, so a balance is its decimal text; Profile merges a map key by key, so
    one program's update leaves the others' values in place."""
    maps: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if key != "tierNumber" and (type(value) is int or type(value) is float):
            value = _decimal(value)
        maps[key] = {program_id: value}
    return maps


def _decimal(value: float) -> str:
    """``120`` for 120.0, ``12.5`` for 12.5: the shortest text that reads back as the same number."""
    return str(int(value)) if type(value) is int or value.is_integer() else repr(value)
