"""Coalesce profile updates: one record per customer and route in what one request carries.

AEP does not apply the profile records of a streaming request in order (several updates to one
profile within milliseconds can end with any of them persisted), and each record counts against
the org's Profile capacity. So when a batch holds several profile updates for the same primary
identity and route (dataset and schema), they are sent as one record that merges them in offset
order, the way AEP applies partial records one after another:

* a later value wins, leaf by leaf (objects merge, anything else is replaced);
* an array is a leaf: the later array replaces the earlier one, as AEP does;
* ``identityMap`` is the union: per namespace, every id once, a later entry for an id wins; and
  AEP's per-record identity guardrails hold for the union as they held for each source record
  (Identity Service skips a record with more than 20 identities): the primary is kept, then the
  most recently seen, and any identity that would be skipped (length, blocked value) is left out.

The merged record keeps the envelope (header, ``xdmMeta``) and the ``_id`` of the last update, and
stands for every source record: it is acknowledged, retried or dead-lettered for all of them.
ExperienceEvents are never touched. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from connector.transform.identity import MAX_IDENTITIES, identity_offence

IDENTITY_MAP = "identityMap"


def merge_entities(entities: Iterable[dict[str, Any]], *, owned: bool = False) -> dict[str, Any]:
    """The result of applying ``entities`` (partial profile records) one after another.

    ``owned``: the entities are the caller's to consume (parsed for this merge and dropped after),
    so their objects are moved into the result instead of copied — the sender merges freshly parsed
    records, and copying them was a third of the merge's cost.
    """
    out: dict[str, Any] = {}
    put = _move if owned else _put
    for n, entity in enumerate(entities):
        if owned and n == 0:
            out = entity  # the first update is the base: nothing to merge it with
            identities = out.get(IDENTITY_MAP)
            if type(identities) is dict:
                out[IDENTITY_MAP] = union_identities(None, identities, owned=True)  # each id once
            continue
        for key, value in entity.items():
            if key == IDENTITY_MAP and type(value) is dict:
                out[key] = union_identities(out.get(key), value, owned=owned)
            else:
                put(out, key, value)
    return out


def _put(dst: dict[str, Any], key: str, value: Any) -> None:
    if type(value) is dict:
        current = dst.get(key)
        if type(current) is not dict:
            current = dst[key] = {}
        for k, v in value.items():
            _put(current, k, v)
    else:
        dst[key] = _copy(value)


def _move(dst: dict[str, Any], key: str, value: Any) -> None:
    """``_put`` for values nobody else holds: a subtree with nothing to merge into is taken as is."""
    if type(value) is dict:
        current = dst.get(key)
        if type(current) is not dict:
            dst[key] = value
            return
        for k, v in value.items():
            _move(current, k, v)
    else:
        dst[key] = value


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


def union_identities(earlier: dict[str, Any] | None, later: dict[str, Any], *, owned: bool = False) -> dict[str, Any]:
    """Per namespace, every identity once (by ``id``), in first-seen order; a later entry wins.
    ``owned``: ``earlier`` is extended in place and ``later``'s entries are taken as they are."""
    if owned:
        out = earlier if earlier is not None else {}
        take = _same
    else:
        out = {ns: [_copy(e) for e in entries] for ns, entries in (earlier or {}).items()}
        take = _copy
    for ns, entries in later.items():
        have = out.setdefault(ns, [])
        index = {e.get("id"): i for i, e in enumerate(have) if type(e) is dict}
        for entry in entries:
            i = index.get(entry.get("id")) if type(entry) is dict else None
            if i is None:
                index[entry.get("id") if type(entry) is dict else None] = len(have)
                have.append(take(entry))
            else:
                have[i] = take(entry)
    return out


def _same(value: Any) -> Any:
    return value


def primary_identity(entity: dict[str, Any]) -> tuple[str, str] | None:
    identity_map = entity.get(IDENTITY_MAP)
    if type(identity_map) is not dict:
        return None
    for ns, entries in identity_map.items():
        for e in entries if type(entries) is list else ():
            if type(e) is dict and e.get("primary") is True and type(e.get("id")) is str:
                return ns, e["id"]
    return None


def identity_hint(message: bytes) -> bytes | None:
    """The primary identity's id read straight from an encoded record (no JSON parsing): enough to
    find the few records worth parsing. None when it cannot be seen (then nothing is merged)."""
    end = message.find(b'"primary":true')
    if end < 0:
        return None
    start = message.rfind(b'{"id":"', 0, end)
    if start < 0:
        return None
    start += 7
    return message[start:message.find(b'"', start)]


def _route_and_identity(envelope: Any) -> tuple[Any, ...] | None:
    """What decides whether two profile records describe the same profile fragment."""
    try:
        header = envelope["header"]
        entity = envelope["body"]["xdmEntity"]
        identity = primary_identity(entity)
        if identity is None:
            return None
        return header.get("datasetId"), header["schemaRef"]["id"], header.get("flowId"), identity
    except (KeyError, TypeError):
        return None


def by_recency(entities: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Every ``(namespace, id)`` of ``entities`` (in offset order), the most recently seen first."""
    order: dict[tuple[str, Any], None] = {}
    for entity in reversed(entities):
        identity_map = entity.get(IDENTITY_MAP)
        if type(identity_map) is not dict:
            continue
        for ns, entries in identity_map.items():
            for e in entries if type(entries) is list else ():
                if type(e) is dict:
                    order.setdefault((ns, e.get("id")), None)
    return list(order)


def guard_identities(entity: dict[str, Any], recency: Sequence[tuple[str, Any]]) -> list[str]:
    """Hold a merged record to Identity Service's per-record guardrails, in place: drop identities
    it would skip (``too_long``, ``blocked_value``), then keep at most ``MAX_IDENTITIES``: the
    primary, then the most recent (``recency``). Returns the reason of each identity dropped."""
    identity_map = entity.get(IDENTITY_MAP)
    if type(identity_map) is not dict:
        return []
    dropped: list[str] = []
    primary: list[tuple[str, Any]] = []
    keep: set[tuple[str, Any]] = set()
    for ns, entries in identity_map.items():
        for e in entries if type(entries) is list else ():
            if type(e) is not dict:
                continue
            key = (ns, e.get("id"))
            if e.get("primary") is True:
                primary.append(key)  # the transform refused a record whose primary offends
            elif type(key[1]) is str and (offence := identity_offence(key[1])) is not None:
                dropped.append(offence)
                continue
            keep.add(key)
    if len(keep) > MAX_IDENTITIES:
        chosen = primary + [k for k in recency if k in keep and k not in primary]
        chosen = chosen[:MAX_IDENTITIES]
        dropped += ["too_many"] * (len(keep) - len(chosen))
        keep = set(chosen)
    if dropped:
        for ns in list(identity_map):
            entries = identity_map[ns]
            kept = [e for e in entries if type(e) is dict and (ns, e.get("id")) in keep] if type(entries) is list else []
            if kept:
                identity_map[ns] = kept
            else:
                del identity_map[ns]
    return dropped


def coalesce(
    messages: Sequence[bytes], hints: Sequence[Any], max_size: int, dropped: list[str] | None = None,
) -> list[tuple[bytes, list[int]]]:
    """Merge the profile records (``messages``, in offset order) that describe the same profile.

    ``hints[i]`` is a cheap pre-grouping key for message i (``identity_hint``; None: never
    merged): only messages sharing one are parsed. Returns ``(message, [indexes it stands for])`` in the
    order of each group's last member (everything else stays where it was). A merged record
    larger than ``max_size`` bytes is not made: its sources go as they are. The reason of every
    identity a merged record had to leave out (:func:`guard_identities`) is appended to ``dropped``.
    """
    candidates: dict[Any, list[int]] = {}
    for i, hint in enumerate(hints):
        if hint is not None:
            candidates.setdefault(hint, []).append(i)
    stands_for: dict[int, list[int]] = {}  # index of a group's last member → the group
    merged_into: set[int] = set()
    replacement: dict[int, bytes] = {}
    for members in candidates.values():
        if len(members) < 2:
            continue
        groups: dict[Any, list[tuple[int, Any]]] = {}
        for i in members:
            # Parsed here, not carried from the transform: a buffered record holding its profile
            # updates' dicts (~3x the body's bytes) made the pipeline slower, not faster (issue 31,
            # docs/benchmarks.md 2026-12-07): the parse is ~2.4 µs, the dicts cost the allocator and GC more.
            envelope = orjson.loads(messages[i])
            key = _route_and_identity(envelope)
            if key is not None:
                groups.setdefault(key, []).append((i, envelope))
        for group in groups.values():
            if len(group) < 2:
                continue
            last_i, envelope = group[-1]
            entities = [env["body"]["xdmEntity"] for _, env in group]
            recency = by_recency(entities)
            merged = envelope["body"]["xdmEntity"] = merge_entities(entities, owned=True)
            left_out = guard_identities(merged, recency)
            body = orjson.dumps(envelope)
            if len(body) > max_size:
                continue
            if dropped is not None:
                dropped += left_out
            replacement[last_i] = body
            stands_for[last_i] = [i for i, _ in group]
            merged_into.update(i for i, _ in group[:-1])
    out: list[tuple[bytes, list[int]]] = []
    for i, message in enumerate(messages):
        if i in merged_into:
            continue
        if i in replacement:
            out.append((replacement[i], stands_for[i]))
        else:
            out.append((message, [i]))
    return out
