"""What the emulator saw: counters, `_id` counts, accepted envelopes (optional) and rejections.

Mutated only on the event loop (no lock); the async validator thread writes into
:class:`DatasetRecords`, which has its own lock.
"""

from __future__ import annotations

import bisect
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from connector.dev.emulator.profiles import Profiles

# Compact JSON of a value that holds a null or an empty string/object/array always contains one of
# these tokens; their absence proves a message clean without walking it.
NULL_OR_EMPTY_TOKENS = (b"null", b'""', b"{}", b"[]")

# (index in the request's "messages", xactionId, xdmEntity, datasetId) of one accepted message.
Accepted = tuple[int, str, dict[str, Any], str]


def null_or_empty_paths(value: Any, path: str = "", out: list[str] | None = None, limit: int = 5) -> list[str]:
    """JSON-pointer-ish paths of null values and empty strings/objects/arrays (at most ``limit``)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if value is None or (isinstance(value, str | dict | list) and len(value) == 0):
        out.append(path or "/")
    elif isinstance(value, dict):
        for k, v in value.items():
            null_or_empty_paths(v, f"{path}/{k}", out, limit)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            null_or_empty_paths(v, f"{path}/{i}", out, limit)
    return out


@dataclass(slots=True)
class StoredChunk:
    """The accepted messages of one request: its JSON body, the index of each accepted message
    in ``messages`` (None for the single-message endpoint) and their xactionIds."""

    received_ms: int
    body: bytes
    positions: array[int] | None
    xaction_ids: list[str]


@dataclass
class DatasetRecords:
    """Per validated dataset: records that "landed" (first-wins `_id` dedup for ExperienceEvent
    datasets) split by their async validation outcome."""

    dedup: bool
    keep_entities: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: set[str] = field(default_factory=set)
    records: list[dict[str, Any]] = field(default_factory=list)  # passed validation
    failed: list[dict[str, Any]] = field(default_factory=list)
    dropped_duplicates: int = 0
    pending: int = 0


class Store:
    def __init__(self, store_bodies: bool, max_messages: int, max_rejections: int,
                 check_null_or_empty: bool = True) -> None:
        self.store_bodies = store_bodies
        self.check_null_or_empty = check_null_or_empty
        self.max_messages = max_messages
        self.max_rejections = max_rejections
        self.started = time.time()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()  # DCS requests by status ("dropped" for dropped connections)
        self.batch_requests = 0
        self.single_requests = 0
        self.messages_accepted = 0
        self.messages_rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.null_or_empty = 0
        self.null_or_empty_samples: list[dict[str, Any]] = []
        self.ids: dict[str, int] = {}
        self.duplicate_ids = 0
        self.duplicate_ids_by_dataset: dict[str, int] = {}
        self.missing_ids = 0
        self.token_requests = 0
        self.tokens_issued = 0
        self.token_failures: Counter[str] = Counter()
        self.bytes_received = 0
        self.max_request_bytes = 0
        self.accepted_by_dataset: dict[str, int] = {}
        self.accepted_by_event_type: dict[str, int] = {}
        self.faulted_requests = 0
        self.dropped_connections = 0
        self.accepted_per_second: dict[int, int] = {}  # unix second → messages accepted (rate checks)
        # Profile state by primary identity, from accepted profile records (kept with the bodies).
        self.profiles = Profiles(keep_state=self.store_bodies)
        # Accepted bodies in acceptance order, one chunk per request; chunk_ends[i] is the number
        # of messages stored up to and including chunk i (for paging with bisect).
        self.chunks: list[StoredChunk] = []
        self.chunk_ends: list[int] = []
        self.stored_messages = 0
        self.messages_not_stored = 0
        self.rejections: list[dict[str, Any]] = []
        self.datasets: dict[str, DatasetRecords] = {}

    def accept_many(self, received_ms: int, accepted: list[Accepted], body: bytes, batch: bool) -> None:
        """Book the accepted messages of one request whose (decoded) JSON body is ``body``.

        This is the hot path of a 50k messages/s benchmark: plain dict updates, one compact
        ``orjson.dumps`` of each entity and one token search per request for the null/empty check.
        Bodies are kept by holding on to the request body itself (no copy, nothing for the cyclic
        GC to crawl); /__emulator/messages re-parses it on demand."""
        ids = self.ids
        by_dataset = self.accepted_by_dataset
        by_type = self.accepted_by_event_type
        dumps = orjson.dumps
        blobs: list[bytes] = []
        blob = blobs.append
        dups = missing = 0
        check = self.check_null_or_empty
        for _, _, entity, dataset_id in accepted:
            by_dataset[dataset_id] = by_dataset.get(dataset_id, 0) + 1
            event_type = entity.get("eventType")
            if type(event_type) is not str:
                event_type = "(none)"
            by_type[event_type] = by_type.get(event_type, 0) + 1
            rid = entity.get("_id")
            if type(rid) is str:
                n = ids.get(rid, 0)
                if n:
                    dups += 1
                    self.duplicate_ids_by_dataset[dataset_id] = self.duplicate_ids_by_dataset.get(dataset_id, 0) + 1
                ids[rid] = n + 1
            else:
                missing += 1
            if check:
                blob(dumps(entity))
        self.messages_accepted += len(accepted)
        second = received_ms // 1000
        self.accepted_per_second[second] = self.accepted_per_second.get(second, 0) + len(accepted)
        self.duplicate_ids += dups
        self.missing_ids += missing
        if self.store_bodies:
            self._keep(received_ms, accepted, body, batch)
        if not check:
            return
        # One search over all entities; only if a token shows up, look for the culprits one by one.
        joined = b"\n".join(blobs)
        if any(tok in joined for tok in NULL_OR_EMPTY_TOKENS):
            for (_, _, entity, _), b in zip(accepted, blobs):
                if any(tok in b for tok in NULL_OR_EMPTY_TOKENS):
                    paths = null_or_empty_paths(entity)
                    if paths:  # the token may have been inside a string
                        self.null_or_empty += 1
                        if len(self.null_or_empty_samples) < 20:
                            self.null_or_empty_samples.append({"_id": entity.get("_id"), "paths": paths})

    def _keep(self, received_ms: int, accepted: list[Accepted], body: bytes, batch: bool) -> None:
        room = self.max_messages - self.stored_messages
        if room < len(accepted):
            self.messages_not_stored += len(accepted) - max(0, room)
            accepted = accepted[: max(0, room)]
        if not accepted:
            return
        positions = array("I", (a[0] for a in accepted)) if batch else None
        self.chunks.append(StoredChunk(received_ms, body, positions, [a[1] for a in accepted]))
        self.stored_messages += len(accepted)
        self.chunk_ends.append(self.stored_messages)

    def reject(self, reason: str, status: int, message: str, index: int | None, record_id: Any) -> None:
        self.messages_rejected += 1
        self.rejected_by_reason[reason] += 1
        if len(self.rejections) < self.max_rejections:
            self.rejections.append({
                "index": index, "_id": record_id if isinstance(record_id, str) else None, "status": status,
                "reason": reason, "message": message, "receivedTimeMs": int(time.time() * 1000),
            })

    def count_request(self, status: int | str) -> None:
        self.requests[str(status)] += 1

    def add_bytes(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if nbytes > self.max_request_bytes:
            self.max_request_bytes = nbytes

    def stats(self) -> dict[str, Any]:
        validation = {"pending": 0, "passed": 0, "failed": 0, "dropped_duplicates": 0}
        for ds in self.datasets.values():
            with ds.lock:
                validation["pending"] += ds.pending
                validation["passed"] += len(ds.records)
                validation["failed"] += len(ds.failed)
                validation["dropped_duplicates"] += ds.dropped_duplicates
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": dict(self.requests),
            "batch_requests": self.batch_requests,
            "single_requests": self.single_requests,
            "messages_accepted": self.messages_accepted,
            "messages_rejected": self.messages_rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "null_or_empty": self.null_or_empty,
            "null_check": self.check_null_or_empty,
            "null_or_empty_samples": self.null_or_empty_samples,
            "accepted_per_second": {str(k): v for k, v in sorted(self.accepted_per_second.items())},
            "profile_records": self.profiles.records,
            "profile_identities": len(self.profiles.state),
            "profile_records_skipped": dict(self.profiles.skipped),
            "max_profile_records_per_identity_in_request": self.profiles.max_per_identity_in_request,
            "duplicate_ids": self.duplicate_ids,
            "duplicate_ids_by_dataset": dict(self.duplicate_ids_by_dataset),
            "unique_ids": len(self.ids),
            "missing_ids": self.missing_ids,
            "token_requests": self.token_requests,
            "tokens_issued": self.tokens_issued,
            "token_failures": dict(self.token_failures),
            "bytes_received": self.bytes_received,
            "max_request_bytes": self.max_request_bytes,
            "accepted_by_dataset": dict(self.accepted_by_dataset),
            "accepted_by_event_type": dict(self.accepted_by_event_type),
            "faulted_requests": self.faulted_requests,
            "dropped_connections": self.dropped_connections,
            "stored_messages": self.stored_messages,
            "messages_not_stored": self.messages_not_stored,
            "validation": validation,
        }

    def messages_page(self, offset: int, limit: int) -> dict[str, Any]:
        """One page of /__emulator/messages: the stored request bodies are re-parsed here."""
        out: list[dict[str, Any]] = []
        i = bisect.bisect_right(self.chunk_ends, offset)
        skip = offset - (self.chunk_ends[i - 1] if i else 0)
        while len(out) < limit and i < len(self.chunks):
            chunk = self.chunks[i]
            doc = orjson.loads(chunk.body)
            take = chunk.xaction_ids[skip : skip + limit - len(out)]
            for k, xaction_id in enumerate(take, start=skip):
                envelope = doc if chunk.positions is None else doc["messages"][chunk.positions[k]]
                out.append({"receivedTimeMs": chunk.received_ms, "xactionId": xaction_id, "envelope": envelope})
            i, skip = i + 1, 0
        return {"messages": out, "next": offset + len(out), "total": self.stored_messages,
                "store_bodies": self.store_bodies}
