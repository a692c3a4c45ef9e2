"""Load stage: upload files into batches, complete them, follow their status to a final state.

Files are grouped per dataset into batches of at most ``max_files`` files (AEP: 1,500 per batch)
and ``max_batch_bytes`` (100 GB). Each step is written to the manifest as soon as AEP confirmed it
— the batch id once created, each file once uploaded, the batch once completed, its final status —
so a resumed run uploads only the files AEP has not confirmed: at most the one that was in flight
when the run died, again under the same name in the same batch (a PUT replaces it). A batch created
but not recorded (the run died between AEP's answer and the manifest) is left loading, with no
files: AEP abandons it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from connector.backfill.aep import FINAL, SUCCESS, BatchClient, describe_errors
from connector.backfill.manifest import BatchEntry, Manifest, UploadFile

log = logging.getLogger(__name__)

MAX_FILES = 1_500  # Batch ingestion API overview: maximum number of files per batch
MAX_BATCH_BYTES = 100 * 1024 ** 3  # ditto: maximum batch size, 100 GB


def plan_batches(files: list[UploadFile], max_files: int = MAX_FILES,
                 max_bytes: int = MAX_BATCH_BYTES) -> list[BatchEntry]:
    batches: list[BatchEntry] = []
    open_: dict[tuple[str, str], tuple[BatchEntry, int]] = {}
    for f in files:
        key = (f.dataset, f.kind)
        entry, size = open_.get(key, (None, 0))
        if entry is None or len(entry.files) >= max_files or size + f.bytes > max_bytes:
            entry, size = BatchEntry(f.dataset, f.kind, []), 0
            batches.append(entry)
        entry.files.append(f.name)
        open_[key] = (entry, size + f.bytes)
    return batches


class Loader:
    def __init__(self, workdir: Path, manifest: Manifest, client: BatchClient, *, small_limit: int,
                 chunk_bytes: int, poll_s: float = 5.0, poll_max_s: float = 60.0, status_timeout_s: float = 6 * 3600,
                 progress: Callable[[int], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.workdir, self.m, self.client = workdir, manifest, client
        self.small_limit, self.chunk_bytes = small_limit, chunk_bytes
        self.poll_s, self.poll_max_s, self.status_timeout_s = poll_s, poll_max_s, status_timeout_s
        self.progress = progress or (lambda _n: None)
        self._sleep = sleep
        self.status_polls = 0

    def _save(self) -> None:
        self.m.save(self.workdir)

    def upload_all(self) -> None:
        files = {f.name: f for f in self.m.files}
        for b in self.m.batches:
            if b.completed:
                continue
            if b.id is None:
                b.id = self.client.create_batch(b.dataset)
                log.info("batch %s created for dataset %s (%d files)", b.id, b.dataset, len(b.files))
                self._save()
            for name in b.files:
                if name in b.uploaded:
                    continue
                f = files[name]
                self.client.upload(b.id, b.dataset, name, self.workdir / f.path, small_limit=self.small_limit,
                                   chunk_bytes=self.chunk_bytes)
                b.uploaded.append(name)
                self._save()
                self.progress(f.bytes)
            self.client.complete(b.id)
            b.completed = True
            self._save()
            log.info("batch %s completed: %d files", b.id, len(b.files))

    def follow(self) -> list[BatchEntry]:
        """Read each batch's status until all are final; returns the batches that did not succeed."""
        deadline = time.monotonic() + self.status_timeout_s
        delay = self.poll_s
        while True:
            waiting = [b for b in self.m.batches if b.status is None]
            for b in waiting:
                assert b.id is not None
                found = self.client.status(b.id)
                self.status_polls += 1
                status = str(found["status"]).lower()
                if status in FINAL:
                    b.status, b.errors = status, describe_errors(found)
                    self._save()
                    log.log(logging.INFO if status in SUCCESS else logging.ERROR, "batch %s (dataset %s): %s%s",
                            b.id, b.dataset, status, f" {b.errors}" if b.errors else "")
            if all(b.status is not None for b in self.m.batches):
                return [b for b in self.m.batches if b.status not in SUCCESS]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(b.status is None for b in self.m.batches)} batches not final after "
                                   f"{self.status_timeout_s:.0f}s (run again to keep following them)")
            log.info("%d batches processing; next status read in %.0fs",
                     sum(b.status is None for b in self.m.batches), delay)
            self._sleep(delay)
            delay = min(self.poll_max_s, delay * 2)
