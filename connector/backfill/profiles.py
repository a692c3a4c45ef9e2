"""Merge stage: one profile record per customer, the latest state, as the stream coalesces.

Batch ingestion promises no order among the records it loads, so a customer with several updates in
a load could end with an old value on top. Each customer's updates (same dataset and primary
identity) are merged here in the order they were read — with the stream's own merge
(:func:`connector.delivery.coalesce.merge_entities`: later values win leaf by leaf, arrays replaced,
``identityMap`` the union) held to Identity Service's per-record guardrails
(:func:`connector.delivery.coalesce.guard_identities`) — so every customer appears once in the whole load.

Staged buckets hold a customer's updates in one file (by a hash of the identity), so memory holds one
bucket's customers at a time. The merged record keeps the last update's ``_id``. Updates without a
primary identity are never merged (as in the stream). Pure file → file: a killed merge is redone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from connector.backfill.manifest import UploadFile
from connector.backfill.stage import BUCKETS
from connector.delivery.coalesce import by_recency, guard_identities, merge_entities, primary_identity

OUT = "upload/profiles"


def merged_records(lines: Iterator[bytes], dropped: list[str]) -> Iterator[tuple[str, bytes]]:
    """(dataset, merged entity JSON) per customer of one bucket, plus every update that cannot merge."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    loose: list[tuple[str, bytes]] = []
    for line in lines:
        raw_dataset, mergeable, entity = line.rstrip(b"\n").split(b"\t", 2)
        if mergeable == b"0":
            loose.append((raw_dataset.decode(), entity))
            continue
        record = orjson.loads(entity)
        groups.setdefault((raw_dataset.decode(), primary_identity(record)), []).append(record)
    for (dataset, _identity), updates in groups.items():
        if len(updates) == 1:
            yield dataset, orjson.dumps(updates[0])
            continue
        recency = by_recency(updates)
        merged = merge_entities(updates, owned=True)
        dropped += guard_identities(merged, recency)
        yield dataset, orjson.dumps(merged)
    yield from loose


def merge(workdir: Path, file_bytes: int) -> tuple[list[UploadFile], list[str]]:
    """Write the merged profile records into upload files of at most ``file_bytes``; return them and
    the reason of every identity the guardrails left out."""
    out_dir = workdir / OUT
    if out_dir.exists():
        for stale in out_dir.rglob("*.json"):
            stale.unlink()
    files: list[UploadFile] = []
    current: dict[str, tuple[Any, UploadFile]] = {}
    dropped: list[str] = []
    for bucket in sorted((workdir / BUCKETS).glob("bucket-*.jsonl")):
        with open(bucket, "rb") as f:
            for dataset, entity in merged_records(iter(f), dropped):
                line = entity + b"\n"
                handle, meta = current.get(dataset, (None, None))
                if handle is None or meta is None or (meta.bytes and meta.bytes + len(line) > file_bytes):
                    if handle is not None:
                        _close(handle)
                    n = sum(1 for f_ in files if f_.dataset == dataset) + 1
                    name = f"profiles-{dataset}-{n:05d}.json"
                    path = out_dir / dataset / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    meta = UploadFile(name, str(path.relative_to(workdir)), dataset, "profile", 0, 0)
                    files.append(meta)
                    handle = open(path, "wb")  # noqa: SIM115 - closed when the next file begins or at the end
                    current[dataset] = (handle, meta)
                handle.write(line)
                meta.bytes += len(line)
                meta.records += 1
    for handle, _ in current.values():
        _close(handle)
    return files, dropped


def _close(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
