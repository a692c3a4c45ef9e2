"""The backfill's manifest: what was read, which files went into which batch, which batches ended how.

A JSON file in the work directory, beside the staged files it describes, replaced atomically
(written to a temporary file, fsynced, renamed over the old one, the directory fsynced): a run
killed at any instant leaves the previous manifest or the new one, never half of either. Staged
files are only ever appended to after the last checkpoint, so a resumed run truncates each to the
length the manifest recorded and reads on from the recorded positions.

Why a file and not a Kafka topic: the staged files live on this disk anyway (a manifest elsewhere
could describe files that are gone); one atomic rename is simpler than a compacted topic and its
reader; and the operator can read it (``jq . manifest.json``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

NAME = "manifest.json"
VERSION = 1


@dataclass
class BatchEntry:
    dataset: str
    kind: str  # "event" or "profile"
    files: list[str]
    id: str | None = None
    uploaded: list[str] = field(default_factory=list)
    completed: bool = False
    status: str | None = None  # the Catalog's final status
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class UploadFile:
    name: str  # unique in the backfill; also the name in the batch
    path: str  # relative to the work directory
    dataset: str
    kind: str
    bytes: int
    records: int


@dataclass
class Manifest:
    source: dict[str, Any]  # what is read: kind, topics or files, start and stop per partition
    position: dict[str, int] = field(default_factory=dict)  # next offset per "topic:partition" (or line per file)
    staged: dict[str, int] = field(default_factory=dict)  # staged file → length at the last checkpoint
    counts: dict[str, int] = field(default_factory=dict)  # records read, dead-lettered, messages staged …
    read_done: bool = False
    merged: bool = False
    files: list[UploadFile] = field(default_factory=list)
    batches: list[BatchEntry] = field(default_factory=list)
    handover: str = ""  # "", "done", "skipped"
    version: int = VERSION

    @classmethod
    def load(cls, workdir: Path) -> Manifest | None:
        path = workdir / NAME
        if not path.exists():
            return None
        raw = orjson.loads(path.read_bytes())
        if raw.get("version") != VERSION:
            raise ValueError(f"{path}: manifest version {raw.get('version')}, this backfill reads {VERSION}")
        raw["files"] = [UploadFile(**f) for f in raw.get("files", [])]
        raw["batches"] = [BatchEntry(**b) for b in raw.get("batches", [])]
        return cls(**raw)

    def save(self, workdir: Path) -> None:
        path = workdir / NAME
        tmp = workdir / (NAME + ".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(workdir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
