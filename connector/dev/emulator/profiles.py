"""The profile state AEP would build from accepted profile records (§9 of the reference, emulated).

Each accepted record of a profile dataset is applied, in acceptance order, to the profile of its
primary identity: objects merge field by field, anything else (arrays included) is replaced by
the newer value, and ``identityMap`` gathers every identity seen. Written independently of the
connector's coalescing (``connector/delivery/coalesce.py``) so that tests can hold one against the other.

Identity Service's per-record guardrails (Experience League, *Identity Service guardrails*) hold
before a record reaches a profile: a record with more than 20 identities, or whose primary identity
is blank, "null", "anonymous", "invalid" or longer than 1,024 characters, is skipped whole — the
inlet still answered 200, as AEP does, so only ``skipped`` (and a profile that never changes)
shows it; any other identity with such a value is left out of the record.

Also counts, per request, how many profile records share a primary identity (the connector sends
at most one per customer and route per request when it coalesces).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

MAX_IDENTITIES_PER_RECORD = 20
MAX_IDENTITY_LENGTH = 1_024
BLOCKED_IDENTITY_VALUES = ("", "null", "anonymous", "invalid")


def _skipped_value(value: Any) -> bool:
    return not isinstance(value, str) or len(value) > MAX_IDENTITY_LENGTH \
        or value.strip().lower() in BLOCKED_IDENTITY_VALUES


def guardrail(record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(why the record is skipped, None if it is not; the record as Identity Service takes it)``."""
    identity_map = record.get("identityMap")
    if not isinstance(identity_map, dict):
        return None, record
    entries = [(ns, e) for ns, es in identity_map.items() for e in (es if isinstance(es, list) else ())
               if isinstance(e, dict)]
    if len(entries) > MAX_IDENTITIES_PER_RECORD:
        return "too_many_identities", record
    if any(e.get("primary") is True and _skipped_value(e.get("id")) for _, e in entries):
        return "primary_identity_skipped", record
    if not any(_skipped_value(e.get("id")) for _, e in entries):
        return None, record
    kept: dict[str, list[Any]] = {}
    for ns, e in entries:
        if not _skipped_value(e.get("id")):
            kept.setdefault(ns, []).append(e)
    return None, {**record, "identityMap": kept}


def apply(state: dict[str, Any], record: dict[str, Any]) -> None:
    """Apply one partial profile record to ``state`` in place."""
    for key, value in record.items():
        if key == "identityMap" and isinstance(value, dict):
            ids = state.setdefault("identityMap", {})
            for ns, entries in value.items():
                have = ids.setdefault(ns, [])
                for entry in entries:
                    same = [i for i, e in enumerate(have) if e.get("id") == entry.get("id")]
                    if same:
                        have[same[0]] = copy.deepcopy(entry)
                    else:
                        have.append(copy.deepcopy(entry))
        elif isinstance(value, dict) and isinstance(state.get(key), dict):
            apply(state[key], value)
        else:
            state[key] = copy.deepcopy(value)


def primary_key(record: dict[str, Any]) -> str | None:
    """``<namespace>:<id>`` of the record's primary identity."""
    for ns, entries in (record.get("identityMap") or {}).items():
        for e in entries or ():
            if isinstance(e, dict) and e.get("primary") is True:
                return f"{ns}:{e.get('id')}"
    return None


class Profiles:
    def __init__(self, keep_state: bool = True) -> None:
        self.keep_state = keep_state  # off in benchmarks (--no-store-bodies): counting only
        self.state: dict[str, dict[str, Any]] = {}
        self.records = 0
        self.skipped: Counter[str] = Counter()  # records Identity Service's guardrails skipped, by reason
        self.max_per_identity_in_request = 0

    def accept_request(self, records: list[dict[str, Any]]) -> None:
        """The accepted profile records of one request, in their order in the request."""
        seen: dict[str, int] = {}
        for record in records:
            key = primary_key(record)
            if key is None:
                continue
            skipped, record = guardrail(record)
            if skipped is not None:
                self.skipped[skipped] += 1
                continue
            self.records += 1
            seen[key] = seen.get(key, 0) + 1
            if self.keep_state:
                apply(self.state.setdefault(key, {}), record)
        if seen:
            self.max_per_identity_in_request = max(self.max_per_identity_in_request, max(seen.values()))
