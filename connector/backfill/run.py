"""The backfill, phase by phase, resumable at every step (the manifest says where it stands)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.backfill import profiles
from connector.backfill.aep import CHUNK_BYTES, SMALL_FILE_LIMIT, BatchClient
from connector.backfill.handover import HandoverRefused, hand_over
from connector.backfill.load import MAX_FILES, Loader, plan_batches
from connector.backfill.manifest import Manifest, UploadFile
from connector.backfill.progress import Progress
from connector.backfill.source import SourceError, plan_files, plan_kafka, read_files, read_kafka
from connector.backfill.stage import DeadLettersUnusable, RegistryDown, Stager
from connector.config import Settings
from connector.errors import ExitCode
from connector.provision.platform import PlatformError

log = logging.getLogger(__name__)


@dataclass
class Options:
    workdir: Path
    files: list[str] = field(default_factory=list)  # export files instead of Kafka
    since_ms: int | None = None
    file_bytes: int = SMALL_FILE_LIMIT  # target size of one upload file
    small_limit: int = SMALL_FILE_LIMIT  # above: the large-file upload
    chunk_bytes: int = CHUNK_BYTES
    max_files: int = MAX_FILES
    poll_s: float = 5.0
    status_timeout_s: float = 6 * 3600
    handover: bool = True
    retry_failed: bool = False
    dry_run: bool = False
    checkpoint_records: int = 50_000
    sample: int = 2_000  # --dry-run: records transformed to estimate sizes


@dataclass
class Result:
    code: int
    lines: list[str] = field(default_factory=list)


class Backfill:
    def __init__(self, settings: Settings, opts: Options, progress: Progress | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.s, self.o, self.echo = settings, opts, echo
        self.progress = progress
        self.m: Manifest | None = None

    # -- plan ----------------------------------------------------------------------------------

    def _plan(self) -> dict[str, Any]:
        if self.o.files:
            return plan_files(self.o.files)
        return plan_kafka(self.s, self.o.since_ms)

    def _manifest(self) -> Manifest:
        found = Manifest.load(self.o.workdir)
        want_kind = "files" if self.o.files else "kafka"
        if found is not None:
            src = found.source
            same = src["kind"] == want_kind and (
                sorted(src["stop"]) == sorted(str(Path(p).resolve()) for p in self.o.files) if self.o.files
                else src.get("topics") == list(self.s.kafka.topics) and src.get("group") == self.s.kafka.group_id)
            if not same:
                raise ValueError(f"{self.o.workdir} holds another backfill ({src['kind']} "
                                 f"{src.get('topics') or list(src['stop'])}): use another --work-dir")
            return found
        plan = self._plan()
        return Manifest(source=plan, position=dict(plan["start"]))

    # -- phases --------------------------------------------------------------------------------

    def _processor(self) -> Any:
        from connector.pipeline.assembly import record_processor

        return record_processor(self.s)

    def _records(self, m: Manifest) -> Any:
        src = m.source
        if src["kind"] == "files":
            return read_files(src["stop"], m.position)
        return read_kafka(self.s, src["stop"], m.position, batch=self.s.kafka.consume_batch)

    def _read(self, m: Manifest) -> None:
        from connector.kafka.dlq import DeadLetterWriter
        from connector.kafka.source import producer_config

        writer = DeadLetterWriter(self.s.kafka.dlq_topic, producer_config(self.s.kafka))
        stager = Stager(self.o.workdir, m, self._processor(), writer, file_bytes=self.o.file_bytes,
                        checkpoint_records=self.o.checkpoint_records)
        total = _remaining(m)
        if self.progress:
            self.progress.begin("read", sum(m.source["stop"][k] - m.source["start"][k] for k in m.source["stop"]),
                                done=sum(m.source["stop"][k] - m.source["start"][k] for k in m.source["stop"]) - total)
        try:
            for chunk in self._records(m):
                stager.add(chunk)
                if self.progress:
                    self.progress.advance(len(chunk))
            m.read_done = True
            stager.checkpoint()
        finally:
            stager.close()
            if self.progress:
                self.progress.end()

    def _merge(self, m: Manifest) -> None:
        files = [UploadFile(Path(rel).name, rel, rel.split("/")[2], "event", size, 0)
                 for rel, size in sorted(m.staged.items()) if rel.startswith("staging/events/")]
        merged, dropped = profiles.merge(self.o.workdir, self.o.file_bytes)
        m.files = files + merged
        m.counts["profile_records"] = sum(f.records for f in merged)
        if dropped:
            m.counts["identities_dropped"] = m.counts.get("identities_dropped", 0) + len(dropped)
        m.batches = plan_batches(m.files, self.o.max_files)
        m.merged = True
        m.save(self.o.workdir)

    def _load(self, m: Manifest) -> list[Any]:
        client = BatchClient(self.s.aep)
        loader = Loader(self.o.workdir, m, client, small_limit=self.o.small_limit, chunk_bytes=self.o.chunk_bytes,
                        poll_s=self.o.poll_s, status_timeout_s=self.o.status_timeout_s,
                        progress=self.progress.advance if self.progress else None)
        try:
            if self.progress:
                done = {n for b in m.batches for n in b.uploaded}
                self.progress.begin("upload", sum(f.bytes for f in m.files),
                                    done=sum(f.bytes for f in m.files if f.name in done), unit="bytes")
            loader.upload_all()
            if self.progress:
                self.progress.end()
            failed = loader.follow()
        finally:
            m.counts["platform_retries"] = m.counts.get("platform_retries", 0) + client.retries
            m.save(self.o.workdir)
            client.close()
        return failed

    # -- the whole -----------------------------------------------------------------------------

    def run(self) -> Result:
        o = self.o
        try:
            m = self.m = self._manifest()
        except (ValueError, SourceError) as exc:
            return Result(ExitCode.CONFIG if isinstance(exc, ValueError) else ExitCode.CONSUMER, [f"error: {exc}"])
        if o.dry_run:
            return self._dry_run(m)
        o.workdir.mkdir(parents=True, exist_ok=True)
        if not (o.workdir / "manifest.json").exists():
            m.save(o.workdir)
        if m.handover in ("done", "skipped"):
            return Result(ExitCode.OK, self._summary(m, "already complete: nothing loaded"))
        try:
            if not m.read_done:
                self._read(m)
            if not m.merged:
                self._merge(m)
            if o.retry_failed:
                for b in m.batches:
                    if b.status is not None and b.status not in ("success", "active"):
                        b.id, b.uploaded, b.completed, b.status, b.errors = None, [], False, None, []
                m.save(o.workdir)
            failed = self._load(m)
        except SourceError as exc:
            return Result(ExitCode.CONSUMER, [f"error: reading {m.source['kind']}: {exc}"])
        except RegistryDown as exc:
            return Result(ExitCode.REGISTRY, [f"error: the Schema Registry stays unreachable: {exc}"])
        except DeadLettersUnusable as exc:
            return Result(ExitCode.DLQ, [f"error: {exc}"])
        except PlatformError as exc:
            return Result(ExitCode.PLATFORM, [f"error: {exc}", "run the same command again to resume"])
        except TimeoutError as exc:
            return Result(ExitCode.PLATFORM, [f"error: {exc}"])
        if failed:
            lines = [f"error: batch {b.id} (dataset {b.dataset}, {len(b.files)} files) ended {b.status}: "
                     + "; ".join(f"{e.get('code', '?')}: {e.get('description', '')}" for e in b.errors)
                     for b in failed]
            lines.append("the consumer group's offsets were not moved; fix the cause and run again with "
                         "--retry-failed (only the failed batches are loaded again)")
            return Result(ExitCode.BATCH_FAILED, self._summary(m, "") + lines)
        if m.source["kind"] != "kafka" or not o.handover:
            m.handover = "skipped"
            m.save(o.workdir)
            return Result(ExitCode.OK, self._summary(m, "loaded; hand-over skipped"))
        try:
            what = hand_over(self.s, m.source["stop"])
        except HandoverRefused as exc:
            return Result(ExitCode.HANDOVER, [*self._summary(m, ""), f"error: hand-over refused: {exc}"])
        m.handover = "done"
        m.save(o.workdir)
        return Result(ExitCode.OK, self._summary(m, f"hand-over {what}: group {self.s.kafka.group_id!r} starts at "
                                                    "the stop point"))

    def _summary(self, m: Manifest, status: str) -> list[str]:
        c = m.counts
        ok = sum(1 for b in m.batches if b.status in ("success", "active"))
        lines = [f"read {c.get('read', 0):,} records: {c.get('events', 0):,} events, {c.get('profile_updates', 0):,} "
                 f"profile updates merged into {c.get('profile_records', 0):,} profile records, "
                 f"{c.get('empty', 0):,} empty, {c.get('dead_lettered', 0):,} dead-lettered",
                 f"{len(m.files)} files ({sum(f.bytes for f in m.files):,} bytes) in {len(m.batches)} batches, "
                 f"{ok} succeeded"]
        for k in sorted(c):
            if k.startswith("dead_lettered."):
                lines.append(f"  {c[k]:8,d}  dead-lettered {k.removeprefix('dead_lettered.')}")
        for b in m.batches:
            lines.append(f"  batch {b.id} {b.kind:7s} dataset {b.dataset}: {len(b.files)} files, {b.status}")
        if status:
            lines.append(status)
        return lines

    def _dry_run(self, m: Manifest) -> Result:
        """What would be read, how many files and batches, and the expected size (from a sample)."""
        src = m.source
        remaining = _remaining(m)
        lines = [f"would read {remaining:,} records ({src['kind']}):"]
        for k in sorted(src["stop"]):
            start, stop = m.position.get(k, src["start"][k]), src["stop"][k]
            if stop > start:
                lines.append(f"  {k}: {start}..{stop} ({stop - start:,})")
        sample = Manifest(source=src, position=dict(m.position))  # counting only: no files, no dead letters
        counter = _SampleSink()
        processor = self._processor()
        read = 0
        bytes_by = counter.sizes
        for chunk in self._records(sample):
            chunk = chunk[: max(0, self.o.sample - read)]
            for record, outcome in zip(chunk, processor.run([r.value for r in chunk])):
                counter.take(record, outcome)
            read += len(chunk)
            if read >= self.o.sample:
                break
        if read:
            scale = remaining / read
            for kind in ("event", "profile"):
                size = bytes_by.get(kind, 0) * scale
                if kind == "profile" and counter.profile_updates:
                    size *= len(counter.customers) / counter.profile_updates  # merged: one per customer (at most)
                nfiles = math.ceil(size / self.o.file_bytes) if size else 0
                nbatches = math.ceil(nfiles / self.o.max_files) if nfiles else 0
                lines.append(f"{kind}s: about {size / 1e6:,.1f} MB in {nfiles} files and {nbatches} batches "
                             f"(estimated from {read:,} records)")
            lines.append(f"dead letters in the sample: {counter.rejected}")
        lines.append("nothing was read into files, uploaded or committed (dry run)")
        return Result(ExitCode.OK, lines)


class _SampleSink:
    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.customers: set[Any] = set()
        self.profile_updates = 0
        self.rejected = 0

    def take(self, _record: Any, outcome: Any) -> None:
        from connector.processing.record import Encoded

        if type(outcome) is not Encoded:
            self.rejected += type(outcome).__name__ == "Rejected"
            return
        for body, (kind, _t) in zip(outcome.bodies, outcome.labels):
            self.sizes[kind] = self.sizes.get(kind, 0) + len(body)
            if kind == "profile":
                self.profile_updates += 1
                self.customers.add(_hint(body))


def _hint(body: bytes) -> Any:
    from connector.delivery.coalesce import identity_hint

    return identity_hint(body)


def _remaining(m: Manifest) -> int:
    src = m.source
    return sum(max(0, src["stop"][k] - m.position.get(k, src["start"][k])) for k in src["stop"])
