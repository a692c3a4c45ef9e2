"""The transform's fast path: one straight-line function per event type, generated at start (issue 31).

The generic :class:`~connector.transform.transformer.Transformer` reads every event through shared
helpers (``normalize``, ``IdentityMapper.identity_map``, ``copy_fields``, ``_lineage``, ``_profile``):
~230 calls per event, most of them re-deciding what the event type and the configuration already
fix. Here the ``EventSpec`` tables and the configuration become Python source once — per event type
the envelope reading, the identity map, the tenant field copies (converters, ``key_values`` and record
converters inlined for their usual input types), the record id, store, lineage, profile update and
messages — compiled and ``exec``-ed; the builders run as rewritten by :mod:`connector.transform.inline`.

The generic path stays the reference: a generated function returns exactly what it would, or declines
(``None``) and the record goes through the generic path. It declines a missing or offending identity,
an identity AEP would drop, a future or unreadable ``createdAt``, a missing ``data`` object, a record
the pre-flight validation refuses, and any exception — before touching the only state it shares with
the generic path (the program cache), or after it only through ``ProgramCache.observe``, which is
idempotent. A flat event with stray spaces in its top-level keys, or another envelope, is read by
``envelope.normalize`` first (``REREAD``); repairs inside ``data`` are ``envelope._fix_data``'s.
``tests/test_transform_compiled.py`` holds the two paths to the same bytes.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connector.transform import events as ev
from connector.transform.envelope import CapillaryEvent, _fix_data, _id_text
from connector.transform.identity import BLOCKED_VALUES, MAX_IDENTITIES, MAX_IDENTITY_LENGTH, _cards, _sha256
from connector.transform.inline import inlined_events
from connector.transform.times import _MILLIS, _SECONDS, iso_ms, to_iso, to_ms
from connector.transform.values import email, id_str, int_or_none, key_values, num, phone_digits, text

if TYPE_CHECKING:
    from connector.transform.validate import XdmValidator

FastFn = Callable[[dict[str, Any]], "list[Any] | None"]
EventFn = Callable[[CapillaryEvent], "list[Any] | None"]

_EMPTY: Mapping[str, Any] = {}
# What a flat-event function answers for an envelope it does not read in place (keys with spaces, a
# wrapped event, createdAt under another name, no data object): read it with envelope.normalize.
REREAD: list[Any] = []
_CI_KEYS = ("customerIdentifiers", "survivorCustomerIdentifiers", "victimCustomerIdentifiers")


def build(parts: dict[str, Any], routes: Callable[[str], tuple[Any, Any]], hashing: bool, stamp: tuple[str, ...],
          validator: XdmValidator | None) -> tuple[dict[str, FastFn], dict[str, EventFn]]:
    """The fast functions by exact Capillary event name: for flat events, and for events of any
    envelope once read by ``envelope.normalize``. ``parts`` are the transformer's own (its clock,
    program cache, identity mapper, profile builder, namespaces, ...), ``routes`` its event and
    profile route (or None) for an event name."""
    namespace: dict[str, Any] = {
        "_EMPTY": _EMPTY, "REREAD": REREAD, "_BLOCKED": BLOCKED_VALUES, "_MAXLEN": MAX_IDENTITY_LENGTH,
        "_MAX_IDENTITIES": MAX_IDENTITIES, "_cards": _cards, "_sha256": _sha256,
        "_text": text, "_id_str": id_str, "_num": num, "_int_or_none": int_or_none, "_email": email,
        "_phone_digits": phone_digits, "_id_text": _id_text, "_fix_data": _fix_data,
        "_to_ms": to_ms, "_iso_ms": iso_ms, "_SECONDS": _SECONDS, "_MILLIS": _MILLIS, "_to_iso": to_iso,
        "_Draft": ev.Draft, "_CapillaryEvent": CapillaryEvent,
        "HASH": hashing, **parts,
    }
    message_slots = parts["_XdmMessage"].__dict__
    for field in ("kind", "event_name", "event_type", "envelope"):
        namespace[f"_set_{field}"] = message_slots[field].__set__
    namespace["_new_message"] = object.__new__
    if validator is not None:
        namespace["_valid_event"] = validator.verdict("event")
        namespace["_valid_profile"] = validator.verdict("profile")
    fns: dict[str, FastFn] = {}
    event_fns: dict[str, EventFn] = {}
    inlined = inlined_events()
    # No two identity sources in one namespace: the identity map can be written as it is read.
    distinct = len({parts[ns] for ns in ("CUST_NS", "EXT_NS", "EMAIL_NS", "PHONE_NS", "CARD_NS")}) == 5
    for spec in ev.SPECS.values():
        scope = dict(namespace)
        scope["SPEC"] = spec
        builder = spec.build.__name__  # its inlined copy, unless the spec names a builder of its own
        scope["BUILD"] = getattr(inlined, builder) if getattr(ev, builder, None) is spec.build else spec.build
        event_route, profile_route = routes(spec.name)
        scope["EV_HEADER"], scope["EV_REF"] = event_route.header, event_route.schema_ref
        wants_profile = profile_route is not None and spec.profile
        if wants_profile:
            scope["PR_HEADER"], scope["PR_REF"] = profile_route.header, profile_route.schema_ref
        converters: dict[str, Any] = {}
        source = _source(spec, hashing, wants_profile, validator is not None, stamp, parts["PROGRAM_FIELDS"],
                         converters, distinct)
        scope.update(converters)
        exec(_compiled(source, spec.name), scope)
        fns[spec.name] = scope["fast"]
        event_fns[spec.name] = scope["fast_event"]
    return fns, event_fns


@functools.lru_cache(maxsize=512)
def _compiled(source: str, name: str) -> types.CodeType:
    """Compiling is most of a Transformer's construction (~0.2 s for the 24 types): a process that
    builds several (tests, the dry run beside the pipeline) compiles each source once."""
    return compile(source, f"<fast transform {name}>", "exec")


# == source generation ======================================================================
# Each snippet converts the variable ``v`` (not None on entry) in place, as the named converter would.
_INLINE: dict[Callable[[Any], Any], str] = {
    text: "if type(v) is str:\n    v = v.strip() or None\nelse:\n    v = _text(v)",
    id_str: "if type(v) is str:\n    v = v.strip() or None\nelif type(v) is int:\n    v = str(v)\nelse:\n    v = _id_str(v)",
    num: "if type(v) is float:\n    if v - v != 0:\n        v = None\nelif type(v) is not int:\n    v = _num(v)",
    int_or_none: "if type(v) is not int:\n    v = _int_or_none(v)",
    # epoch milliseconds, the usual Capillary time: to_iso's own reading of them, without its calls
    # (and iso_ms's per-second cache read in place)
    to_iso: "if type(v) is int and 100000000000 <= v < 100000000000000:\n"
            "    vh = _SECONDS.get(v // 1000)\n    v = _iso_ms(v) if vh is None else vh + _MILLIS[v % 1000]\n"
            "else:\n    v = _to_iso(v)",
}


def _convert(convert: Callable[[Any], Any], converters: dict[str, Any], var: str = "v") -> str:
    """Code that converts ``var`` (not None) in place as ``convert`` would: inline for the scalar
    converters, ``key_values`` and the record converters (``events.records_of``/``record_of``, whose
    fields are copied in place too); a call for any other."""
    snippet = _INLINE.get(convert)
    if snippet is not None:
        return re.sub(r"\bv\b", var, snippet)
    shape = getattr(convert, "xdm_shape", None)
    if convert is key_values:
        return f"""if type({var}) is list:
    {var}o = []
    for {var}i in {var}:
        if isinstance({var}i, dict):
            {var}k = {var}i.get('key')
            if {var}k is not None:
{_as(var + "k", text, 4)}
            {var}v = {var}i.get('value')
            if {var}v is not None:
{_as(var + "v", text, 4)}
            if {var}k is not None and {var}v is not None:
                {var}o.append({{'key': {var}k, 'value': {var}v}})
    {var} = {var}o or None
else:
    {var} = None"""
    if shape is not None:
        kind, fields = shape
        copies = "\n".join(_copy(f"{var}r", f"{var}i", key, sub, converters, 0, var=f"{var}f") for key, sub in fields)
        if kind == "array":
            return f"""if type({var}) is list:
    {var}o = []
    for {var}i in {var}:
        if isinstance({var}i, dict):
            {var}r = {{}}
{_indent(copies, 3)}
            if {var}r:
                {var}o.append({var}r)
    {var} = {var}o or None
else:
    {var} = None"""
        return f"""if isinstance({var}, dict):
    {var}i = {var}
    {var}r = {{}}
{_indent(copies, 1)}
    {var} = {var}r or None
else:
    {var} = None"""
    name = f"_c{len(converters)}"
    converters[name] = convert
    return f"{var} = {name}({var})"


def _as(var: str, convert: Callable[[Any], Any], level: int) -> str:
    """An inline converter applied to ``var`` instead of ``v``."""
    return _indent(re.sub(r"\bv\b", var, _INLINE[convert]), level)


def _indent(code: str, level: int) -> str:
    pad = "    " * level
    return "\n".join(pad + line for line in code.splitlines())


def _copy(target: str, source: str, key: str, convert: Callable[[Any], Any], converters: dict[str, Any],
          level: int, *, skip: str = "", var: str = "v") -> str:
    """``target[key] = convert(source[key])`` when neither is None (``copy_fields`` for one field)."""
    lines = [f"{var} = {source}.get({key!r})", f"if {var} is not None:",
             _indent(_convert(convert, converters, var), 1),
             f"    if {var} is not None{skip}:", f"        {target}[{key!r}] = {var}"]
    return _indent("\n".join(lines), level)


def _profile_source(spec: ev.EventSpec, hashing: bool, stamp: tuple[str, ...], program_fields: tuple[str, ...]) -> str:
    """Transformer._profile for one event type."""
    out = ["""    loyalty = draft.loyalty
    ptenant = draft.profile_tenant
    if loyalty and (""" + " or ".join(f"{key!r} in loyalty" for key in program_fields) + """):
        program = _program_get(draft.program_id)
        if program is not None:
            if program.is_default is False:
                ptenant = _other_program(loyalty, ptenant, program, draft.program_id)
            elif program.name is not None:
                loyalty['program'] = program.name
    profile = {'_id': record_id + '-profile', 'identityMap': identity_map}"""]
    if spec.contact:
        out.append("    if draft.person:\n        profile['person'] = {'name': draft.person['name']}")
        if not hashing:
            out.append("    _contact(profile, ci, draft)")
    out.append("""    if loyalty:
        profile['loyalty'] = loyalty
    if ptenant:
        profile[TENANT_KEY] = {'capillary': ptenant}
    if len(profile) == 2 and not draft.profile_wanted:
        profile = None""")
    if stamp:
        node = "profile" + "".join(f".setdefault({key!r}, {{}})" for key in stamp[:-1])
        out.append(f"    else:\n        {node}[{stamp[-1]!r}] = draft.timestamp")
    return "\n".join(out)


def _identity_pairs(hashing: bool, merge: bool) -> str:
    """IdentityMapper.identity_map in general: pairs in order, duplicates skipped; any identity AEP
    would skip or drop declines the record (the generic path raises or drops it and says why)."""
    out: list[str] = []
    w = out.append
    w("    pairs = []\n    v = ci.get('customerId')\n    if v is not None:")
    w(_as("v", id_str, 2))
    w("        if v is not None:\n            pairs.append((CUST_NS, v))")
    if merge:
        w("    for v in _linked_customer_ids(data):\n        pairs.append((CUST_NS, v))")
    w("""    instore = ci.get('instore')
    if not isinstance(instore, dict):
        instore = _EMPTY
    v = instore.get('externalId')
    if v is not None:""")
    w(_as("v", text, 2))
    w("""        if v is not None:
            pairs.append((EXT_NS, v))
    address = instore.get('email')
    if address is not None:
        address = _email(address)
        if address is not None:""")
    w(f"            pairs.append((EMAIL_NS, {'_sha256(address)' if hashing else 'address'}))")
    w("""    digits = instore.get('mobile')
    if digits is not None:
        digits = _phone_digits(digits)
        if digits is not None:""")
    w(f"            pairs.append((PHONE_NS, {'_sha256(digits)' if hashing else 'digits'}))")
    w("""    if instore.get('cardnumber') is not None or ci.get('card_number') is not None or instore.get('cardNumbers'):
        for v in _cards(ci, instore):
            pairs.append((CARD_NS, v))
    if not pairs:
        return None
    ns, v = pairs[0]
    if len(v) > _MAXLEN or v.strip().lower() in _BLOCKED:
        return None
    identity_map = {ns: [{'id': v, 'authenticatedState': STATE, 'primary': True}]}
    if len(pairs) > 1:
        seen = {pairs[0]}
        for pair in pairs[1:]:
            if pair in seen:
                continue
            v = pair[1]
            if len(v) > _MAXLEN or v.strip().lower() in _BLOCKED or len(seen) == _MAX_IDENTITIES:
                return None  # the generic path drops it and says why
            seen.add(pair)
            bucket = identity_map.get(pair[0])
            if bucket is None:
                identity_map[pair[0]] = [{'id': v, 'authenticatedState': STATE}]
            else:
                bucket.append({'id': v, 'authenticatedState': STATE})""")
    return "\n".join(out)


def _identity_direct(hashing: bool) -> str:
    """IdentityMapper.identity_map when no two sources share a namespace (no duplicates possible): the
    map is written as the identities are read. Any identity AEP would skip or drop declines the record,
    primary or not (the generic path raises identity_rejected or drops it and says why); values that
    cannot be blocked (emails, phone digits, hashes) are checked for length only, if at all."""
    def add(ns: str) -> str:
        return (f"{ns}] = ([{{'id': v, 'authenticatedState': STATE}}] if identity_map else "
                f"[{{'id': v, 'authenticatedState': STATE, 'primary': True}}])")

    blocked = "if len(v) > _MAXLEN or v.lower() in _BLOCKED:\n    return None"
    out = ["    identity_map = {}\n    v = ci.get('customerId')\n    if v is not None:", _as("v", id_str, 2),
           "        if v is not None:", _indent(blocked, 3),
           "            identity_map[CUST_NS] = [{'id': v, 'authenticatedState': STATE, 'primary': True}]",
           "    instore = ci.get('instore')\n    if not isinstance(instore, dict):\n        instore = _EMPTY",
           "    v = instore.get('externalId')\n    if v is not None:", _as("v", text, 2),
           "        if v is not None:", _indent(blocked, 3), f"            identity_map[{add('EXT_NS')}"]
    for source, clean, ns in (("email", "_email", "EMAIL_NS"), ("mobile", "_phone_digits", "PHONE_NS")):
        out.append(f"    v = instore.get({source!r})\n    if v is not None:\n        v = {clean}(v)\n"
                   "        if v is not None:")
        out.append("            v = _sha256(v)" if hashing else
                   "            if len(v) > _MAXLEN:\n                return None")
        out.append(f"            identity_map[{add(ns)}")
    out.append("""    if instore.get('cardnumber') is not None or ci.get('card_number') is not None or instore.get('cardNumbers'):
        cards = _cards(ci, instore)
        if cards:
            if len(cards) + len(identity_map) > _MAX_IDENTITIES:
                return None
            bucket = []
            for v in cards:
                if len(v) > _MAXLEN or v.lower() in _BLOCKED:
                    return None
                if identity_map or bucket:
                    bucket.append({'id': v, 'authenticatedState': STATE})
                else:
                    bucket.append({'id': v, 'authenticatedState': STATE, 'primary': True})
            identity_map[CARD_NS] = bucket
    if not identity_map:
        return None""")
    return "\n".join(out)


def _source(spec: ev.EventSpec, hashing: bool, wants_profile: bool, validate: bool, stamp: tuple[str, ...],
            program_fields: tuple[str, ...], converters: dict[str, Any], distinct: bool = False) -> str:
    name = spec.name
    key = spec.identity_key
    out: list[str] = []
    w = out.append
    w("def fast(raw):")
    # -- the flat envelope, as envelope.normalize reads it (anything else: declined) --------------
    w("""    if ' ' in ''.join(raw) or isinstance(raw.get('attributes'), dict):
        return REREAD
    ms = raw.get('createdAt')
    if type(ms) is not int or not 100000000000 <= ms < 100000000000000:
        if ms is None:
            return REREAD
        ms = _to_ms(ms)
        if ms is None:
            return None
    data = raw.get('data')
    if type(data) is not dict:
        return REREAD
    fix = ' ' in ''.join(data) or 'totalPoinstDeducted' in data""")
    # envelope._fix_data's cases, detected in place and repaired by it; only in the customer objects
    # this event type reads (a repair of another would change nothing in its output; the merge's
    # victim is among its tenant fields)
    read = {key, "customerIdentifiers", *(field for field, _ in spec.tenant)}
    for ci_key in (k for k in _CI_KEYS if k in read):
        w(f"""    if not fix:
        ci = data.get({ci_key!r})
        if isinstance(ci, dict):
            instore = ci.get('instore')
            fix = (' ' in ''.join(ci) or 'Instore' in ci or 'InStore' in ci
                   or isinstance(instore, dict) and ' ' in ''.join(instore))""")
    w("    if fix:\n        data = _fix_data(data)")
    for var, field in (("eid", "eventId"), ("org", "orgId")):
        w(f"""    {var} = raw.get({field!r})
    if {var} is not None:
        if type({var}) is str:
            {var} = {var}.strip() or None
        else:
            {var} = _id_text({var})""")
    head = out[:]
    out.clear()
    w("""    if ms > int(_now() * 1000) + SKEW:
        return None
    timestamp = _SECONDS.get(ms // 1000)
    timestamp = _iso_ms(ms) if timestamp is None else timestamp + _MILLIS[ms % 1000]""")
    # -- the customer and the identity map (IdentityMapper.identity_map) --------------------------
    if key is None:
        w("    ci = _customer_identifiers(SPEC, data)\n    if ci is None:\n        return None")
    else:
        w(f"    ci = data.get({key!r})\n    if not isinstance(ci, dict):\n        return None")
    w(_identity_direct(hashing) if distinct and name != "loyaltyCustomerMerge" else
      _identity_pairs(hashing, name == "loyaltyCustomerMerge"))
    # -- the program (nothing above touched shared state; observe is idempotent) ------------------
    w("    program_id = data.get('loyaltyProgramId')\n    if program_id is not None:")
    w(_as("program_id", id_str, 2))
    w("""    details = data.get('loyaltyProgramDetails')
    if details is not None:
        _observe(program_id, details)
        if program_id is None and isinstance(details, dict):
            program_id = _id_str(details.get('id'))""")
    # -- the builder and the declared tenant fields --------------------------------------------
    w(f"    draft = _Draft(data, {spec.event_type!r}, timestamp, _programs, HASH)")
    w("    draft.program_id = program_id\n    tenant = draft.tenant")
    for field, convert in spec.tenant:
        w(_copy("tenant", "data", field, convert, converters, 1))
    if spec.build is not ev.fields_only:
        w("    BUILD(draft, data)")
    # -- the entity: _id, common fields, store, lineage (Transformer._lineage) -------------------
    w("""    if eid is not None and _safe_id(eid):
        record_id = eid
    else:""")
    w(f"        record_id = _record_id(_CapillaryEvent({name!r}, eid, ms, org, data, top), {name!r}, ci)")
    w(f"""    entity = {{'_id': record_id, 'timestamp': timestamp, 'eventType': draft.event_type, 'producedBy': 'system',
              'identityMap': identity_map}}
    if draft.entity:
        entity.update(draft.entity)
    ta = data.get('triggeringActivity')
    entered = data.get('enteredBy')
    if not isinstance(entered, dict):
        entered = data.get('addedBy')
        if not isinstance(entered, dict):
            entered = ta.get('enteredBy') if isinstance(ta, dict) else None
            if not isinstance(entered, dict):
                entered = None
    store = entered.get('store') if entered is not None else None
    if isinstance(store, dict):
        code = store.get('code')
        if code is not None:
{_as("code", text, 3)}
        if code is None:
            code = store.get('externalId')
            if code is not None:
{_as("code", text, 4)}
        if code is not None:
            commerce = entity.get('commerce')
            if commerce is None:
                commerce = entity['commerce'] = {{}}
            commerce['commerceScope'] = {{'storeCode': code}}
    else:
        store = None
    lineage = {{'eventName': {name!r}}}
    if org is not None:
        lineage['orgId'] = org
    if eid is not None:
        lineage['eventId'] = eid""")
    for field in ("refId", "loyaltyEventId", "apiRequestId"):
        w(_copy("lineage", "top", field, text, converters, 1))
    w(_copy("lineage", "top", "eventLogId", id_str, converters, 1, skip=" and v != '-1'"))
    w("""    if program_id is not None:
        lineage['loyaltyProgramId'] = program_id
        program = _program_get(program_id)
        if program is not None and program.name is not None:
            lineage['loyaltyProgramName'] = program.name
    if isinstance(ta, dict):
        activity = {}""")
    # Transformer._triggering_activity
    for field, convert in (("name", text), ("requestId", text), ("identifiers", key_values),
                           ("additionalAttributes", key_values)):
        w(_copy("activity", "ta", field, convert, converters, 2))
    w("""        if activity:
            lineage['triggeringActivity'] = activity
    if entered is not None:""")
    # Transformer._store_fields
    w("        till = entered.get('till')\n        if isinstance(till, dict):")
    w(_copy("lineage", "till", "code", text, converters, 3).replace("lineage['code']", "lineage['tillCode']"))
    w("        if store is not None:")
    for source, target in (("code", "storeCode"), ("name", "storeName"), ("externalId", "storeExternalId")):
        w(_copy("lineage", "store", source, text, converters, 3).replace(f"lineage[{source!r}]", f"lineage[{target!r}]"))
    w("""    if tenant:
        lineage.update(tenant)
    entity[TENANT_KEY] = {'capillary': lineage}""")
    # -- the messages --------------------------------------------------------------------------
    w(_profile_source(spec, hashing, stamp, program_fields) if wants_profile else "    profile = None")
    if validate:
        w("    if not _valid_event(entity):\n        return None")
        if wants_profile:
            w("    if profile is not None and not _valid_profile(profile):\n        return None")
    # XdmMessage objects made by their slots: a frozen dataclass's __init__ costs ~1 µs, this a third.
    w(f"""    _identity.dropped = []
    message = _new_message(_XdmMessage)
    _set_kind(message, 'event')
    _set_event_name(message, {name!r})
    _set_event_type(message, draft.event_type)
    _set_envelope(message, {{'header': dict(EV_HEADER), 'body': {{'xdmMeta': {{'schemaRef': EV_REF}}, 'xdmEntity': entity}}}})
    messages = [message]""")
    if wants_profile:
        w(f"""    if profile is not None:
        message = _new_message(_XdmMessage)
        _set_kind(message, 'profile')
        _set_event_name(message, {name!r})
        _set_event_type(message, 'profile')
        _set_envelope(message, {{'header': dict(PR_HEADER), 'body': {{'xdmMeta': {{'schemaRef': PR_REF}},
                                 'xdmEntity': profile}}}})
        messages.append(message)""")
    w("    return messages")
    body = "\n".join(out)
    # Twice: for a flat event read in place, and for any envelope read by envelope.normalize.
    return "\n".join((*head, "    top = raw", body, "",
                      "def fast_event(event):",
                      "    top, data, eid, org, ms = event.top, event.data, event.event_id, event.org_id, event.created_at_ms",
                      body)) + "\n"
