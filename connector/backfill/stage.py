"""Reading stage: records → the stream's decode → transform → encode → staged files, checkpointed.

Every record goes through :class:`connector.processing.record.RecordProcessor`, as in the stream:

* an ExperienceEvent's entity is appended (one JSON object per line) to its dataset's current upload
  file, a new file begun past ``file_bytes``;
* a profile update goes to a bucket file chosen by its customer (dataset and primary identity), for
  profiles.py to merge once everything is read;
* a record that can never become XDM is dead-lettered as the stream does (connector.kafka.dlq), with
  the same stage and reason; ``Empty`` records are only counted.

A checkpoint flushes and fsyncs the staged files, waits until the broker confirmed every dead letter
written so far, then saves the positions and file lengths in the manifest. A run killed later
truncates the files to those lengths and reads on from those positions: nothing is staged twice
and nothing is lost. Dead letters of records read after the checkpoint may be written again (the
dead-letter topic is at least once, as in the stream).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from connector.backfill.manifest import Manifest
from connector.backfill.source import Record
from connector.delivery.coalesce import primary_identity
from connector.errors import TransientError
from connector.kafka.dlq import DeadLetter, DeadLetterWriter
from connector.processing.record import Empty, Encoded, RecordProcessor, Rejected

log = logging.getLogger(__name__)

EVENTS = "staging/events"
BUCKETS = "staging/profiles"


class DeadLettersUnusable(Exception):
    """The dead-letter topic cannot take letters: nothing after the last checkpoint is kept."""


class RegistryDown(Exception):
    """The Schema Registry stays unreachable: stop (the next run resumes at the last checkpoint)."""


class Stager:
    def __init__(self, workdir: Path, manifest: Manifest, processor: RecordProcessor,
                 dead_letters: DeadLetterWriter | None, *, file_bytes: int, buckets: int = 16,
                 checkpoint_records: int = 50_000, checkpoint_s: float = 10.0,
                 registry_attempts: int = 10, sleep: Callable[[float], None] = time.sleep) -> None:
        self.workdir, self.m, self.processor, self.dlq = workdir, manifest, processor, dead_letters
        self.file_bytes, self.buckets = file_bytes, buckets
        self.checkpoint_records, self.checkpoint_s = checkpoint_records, checkpoint_s
        self.registry_attempts, self._sleep = registry_attempts, sleep
        self._open: dict[str, BinaryIO] = {}
        self._size: dict[str, int] = {}
        self._current: dict[str, str] = {}  # dataset → its event file being filled
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.registry_retries = 0
        self._restore()

    # -- files ---------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Truncate staged files to the manifest's lengths; forget files begun after the checkpoint."""
        for base in (EVENTS, BUCKETS):
            for path in sorted((self.workdir / base).rglob("*.json*")):
                rel = str(path.relative_to(self.workdir))
                if rel not in self.m.staged:
                    path.unlink()
        for rel, length in self.m.staged.items():
            path = self.workdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.truncate(length)
            self._size[rel] = length
            if rel.startswith(EVENTS):
                dataset = rel.split("/")[2]
                if rel > self._current.get(dataset, ""):
                    self._current[dataset] = rel

    def _append(self, rel: str, data: bytes) -> None:
        f = self._open.get(rel)
        if f is None:
            path = self.workdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._open[rel] = open(path, "ab")  # noqa: SIM115 - kept open until the stage ends
            self._size.setdefault(rel, 0)
        f.write(data)
        self._size[rel] += len(data)

    def _event_file(self, dataset: str, need: int) -> str:
        rel = self._current.get(dataset)
        if rel is None or (self._size.get(rel, 0) and self._size[rel] + need > self.file_bytes):
            n = 1 if rel is None else int(rel.rsplit("-", 1)[1].split(".")[0]) + 1
            rel = self._current[dataset] = f"{EVENTS}/{dataset}/events-{dataset}-{n:05d}.json"
            if rel in self._open:
                raise AssertionError(rel)
        return rel

    # -- records -------------------------------------------------------------------------------

    def _run(self, values: list[bytes | None]) -> list[Any]:
        for attempt in range(1, self.registry_attempts + 1):
            try:
                return self.processor.run(values)
            except TransientError as exc:
                if attempt == self.registry_attempts:
                    raise RegistryDown(str(exc)) from None
                self.registry_retries += 1
                delay = min(30.0, 0.5 * 2 ** attempt)
                log.warning("decoding is blocked (%s): retry %d of %d in %.0fs", exc, attempt,
                            self.registry_attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def add(self, records: list[Record]) -> None:
        counts = self.m.counts
        outcomes = self._run([r.value for r in records])
        for record, outcome in zip(records, outcomes):
            kind = type(outcome)
            if kind is Encoded:
                self._stage(outcome)
            elif kind is Rejected:
                self._dead_letter(record, outcome)
            elif kind is Empty:
                counts["empty"] = counts.get("empty", 0) + 1
            self.m.position[record.where] = record.offset + 1
        counts["read"] = counts.get("read", 0) + len(records)
        self._since_checkpoint += len(records)
        if (self._since_checkpoint >= self.checkpoint_records
                or time.monotonic() - self._last_checkpoint >= self.checkpoint_s):
            self.checkpoint()

    def _stage(self, outcome: Encoded) -> None:
        counts = self.m.counts
        loads, dumps = orjson.loads, orjson.dumps
        for body, (kind, _event_type) in zip(outcome.bodies, outcome.labels):
            envelope = loads(body)
            dataset = envelope["header"]["datasetId"]
            entity = envelope["body"]["xdmEntity"]
            line = dumps(entity) + b"\n"
            if kind == "profile":
                identity = primary_identity(entity)
                bucket = 0 if identity is None else zlib.crc32(f"{identity[0]}\0{identity[1]}".encode()) % self.buckets
                self._append(f"{BUCKETS}/bucket-{bucket:03d}.jsonl",
                             dataset.encode() + (b"\t1\t" if identity is not None else b"\t0\t") + line)
                counts["profile_updates"] = counts.get("profile_updates", 0) + 1
            else:
                self._append(self._event_file(dataset, len(line)), line)
                counts["events"] = counts.get("events", 0) + 1
        if outcome.dropped:
            counts["identities_dropped"] = counts.get("identities_dropped", 0) + len(outcome.dropped)

    def _dead_letter(self, record: Record, r: Rejected) -> None:
        counts = self.m.counts
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + 1
        by = f"dead_lettered.{r.stage}.{r.reason}"
        counts[by] = counts.get(by, 0) + 1
        if self.dlq is None:  # --dry-run: counted only
            return
        self.dlq.send(DeadLetter(record.topic, record.partition, record.offset, record.key, record.value,
                                 record.headers, str(r.stage), r.error_class, r.reason, r.detail, r.http_status),
                      lambda _letter: None)
        self.dlq.poll(0)

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, save: Callable[[], None] | None = None) -> None:
        for f in self._open.values():
            f.flush()
            os.fsync(f.fileno())
        if self.dlq is not None:
            while self.dlq.outstanding and not self.dlq.unusable:
                self.dlq.flush(5.0)
                if self.dlq.outstanding:
                    log.warning("waiting for the broker to confirm %d dead letters", self.dlq.outstanding)
            if self.dlq.unusable:
                raise DeadLettersUnusable(self.dlq.unusable)
        self.m.staged = {rel: size for rel, size in self._size.items() if size}
        (save or (lambda: self.m.save(self.workdir)))()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def event_files(self) -> Iterable[tuple[str, str]]:
        """(dataset, staged path) of every event file, in order."""
        for rel in sorted(self.m.staged):
            if rel.startswith(EVENTS):
                yield rel.split("/")[2], rel
