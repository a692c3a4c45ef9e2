"""The profile state AEP would build from accepted profile records (§9 of the reference, emulated).

Each accepted record of a profile dataset is applied, in acceptance order, to the profile of its
primary identity: objects merge field by field, anything else (arrays included) is replaced by
the newer value, and ``identityMap`` gathers every identity seen. Written independently of the
connector's coalescing (``connector/coalesce.py``) so that tests can hold one against the other.

Also counts, per request, how many profile records share a primary identity (the connector sends
at most one per customer and route per request when it coalesces).
"""

from __future__ import annotations

import copy
from typing import Any


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
        self.max_per_identity_in_request = 0

    def accept_request(self, records: list[dict[str, Any]]) -> None:
        """The accepted profile records of one request, in their order in the request."""
        seen: dict[str, int] = {}
        for record in records:
            key = primary_key(record)
            if key is None:
                continue
            self.records += 1
            seen[key] = seen.get(key, 0) + 1
            if self.keep_state:
                apply(self.state.setdefault(key, {}), record)
        if seen:
            self.max_per_identity_in_request = max(self.max_per_identity_in_request, max(seen.values()))
