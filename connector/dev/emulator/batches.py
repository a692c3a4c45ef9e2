"""Emulated Batch Ingestion API and Catalog batch status: the subset ``capillary-aep backfill`` uses.

Held to Experience League's pages (docs/emulator.md lists each rule with its page):

* ``POST /data/foundation/import/batches`` {datasetId, inputFormat: {format: "json"}} → 201 and the
  batch object (status ``loading``). The dataset must exist; only ``json`` is emulated.
* ``PUT …/batches/{id}/datasets/{ds}/files/{name}`` (small file, ≤ 256 MB) → 200, empty body.
  Larger bodies → 413: use the large-file upload.
* Large file: ``POST …/files/{name}?action=INITIALIZE`` → 201; ``PATCH …/files/{name}`` with
  ``Content-Range: bytes a-b/total`` → 200; ``POST …/files/{name}?action=COMPLETE`` → 201, or 400 when
  chunks overlap or leave a gap (ranges are checked at completion, as the troubleshooting guide says).
* At most 1,500 files and 100 GB per batch; files only into a ``loading`` batch and its own dataset.
* ``POST …/batches/{id}?action=COMPLETE`` → 200, and 200 again when repeated (safe to retry).
  ``?action=ABORT`` → the batch ends ``aborted``.
* ``GET /data/foundation/catalog/batches/{id}`` → ``{"<id>": {status, errors, metrics, …}}``; a
  completed batch is ``processing`` for ``processing_polls`` reads, then ``success`` or ``failed``.
  Without partial ingestion a batch with one bad row fails whole: a line that is not one JSON object
  (single-line JSON), a record without ``_id``, or one its dataset's schema refuses (strict mode).

A batch that succeeds *lands*: its records' ``_id`` join the store's ``ids`` (one count for both
doors, so a record sent by batch and by stream shows as a duplicate), and a profile dataset's
records go through :class:`Profiles` (Identity Service's guardrails), in **reverse** file order —
AEP does not promise an order within a batch, so a client that relies on one is caught.

Test-only: ``/__emulator/batches`` (what was created, uploads per file), ``…/limits`` (lower the size
and count limits, the number of status reads before a final state) and ``…/faults`` (the next
completed batch of a dataset, or any, fails with the given error).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.dev.emulator.platform import ApiError
from connector.dev.emulator.validation import build_validator, violations

if TYPE_CHECKING:
    from connector.dev.emulator.app import Emulator

IMPORT = "/data/foundation/import/batches"
CATALOG = "/data/foundation/catalog/batches"
MB = 1024 * 1024
FINAL = ("success", "failed", "aborted")
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass
class Limits:
    small_file_bytes: int = 256 * MB  # Batch ingestion developer guide: small files, 256 MB or less
    max_files_per_batch: int = 1_500  # Batch ingestion API overview: constraints
    max_batch_bytes: int = 100 * 1024 * MB  # ditto: 100 GB
    processing_polls: int = 1  # status reads answered "processing" after COMPLETE
    latency_ms: int = 0  # added to every file upload and chunk (asyncio.sleep: other calls go on)


@dataclass
class LargeFile:
    total: int | None = None
    chunks: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class Batch:
    id: str
    dataset_id: str
    input_format: dict[str, Any]
    created: int
    status: str = "loading"
    files: dict[str, bytes] = field(default_factory=dict)
    large: dict[str, LargeFile] = field(default_factory=dict)
    polls_left: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    records_read: int = 0
    records_written: int = 0
    updated: int = 0
    completes: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id, "imsOrg": "", "status": self.status, "created": self.created,
            "updated": self.updated or self.created,
            "relatedObjects": [{"type": "dataSet", "id": self.dataset_id}], "version": "1.0.0", "tags": {},
            "inputFormat": self.input_format, "errors": self.errors,
            "metrics": {"recordsRead": self.records_read, "recordsWritten": self.records_written,
                        "failedRecordCount": self.records_read - self.records_written},
        }


class Refusal(Exception):
    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _now() -> int:
    return int(time.time() * 1000)


class BatchApi:
    def __init__(self, em: Emulator) -> None:
        self.em = em
        self.limits = Limits()
        self.batches: dict[str, Batch] = {}
        self.puts: Counter[str] = Counter()  # "<batch>/<file>" → small-file PUTs (tests: nothing uploaded twice)
        self.fail_next: list[dict[str, Any]] = []  # faults: {"dataset_id"?, "errors": [...]}
        self.records_landed = 0
        self._seq = itertools.count(1)

    # -- plumbing ------------------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> Any:
        for inlet in self.em.dcs.inlets.values():
            if dataset_id in inlet.datasets:
                return inlet.datasets[dataset_id]
        return None

    def _batch(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise Refusal(404, "Not Found", f"batch {batch_id} does not exist")
        return batch

    def _loading(self, request: Request) -> tuple[Batch, str]:
        batch = self._batch(request.path_params["batch_id"])
        ds = request.path_params["dataset_id"]
        if ds != batch.dataset_id:
            raise Refusal(400, "Bad Request", f"batch {batch.id} belongs to dataset {batch.dataset_id}, not {ds}")
        if batch.status != "loading":
            raise Refusal(400, "Bad Request", f"batch {batch.id} is {batch.status}: files are taken only while loading")
        return batch, request.path_params["name"]

    def _room(self, batch: Batch, name: str, size: int) -> None:
        names = set(batch.files) | set(batch.large)
        if name not in names and len(names) >= self.limits.max_files_per_batch:
            raise Refusal(400, "Bad Request", f"a batch holds at most {self.limits.max_files_per_batch} files")
        held = sum(len(b) for n, b in batch.files.items() if n != name)
        if held + size > self.limits.max_batch_bytes:
            raise Refusal(400, "Bad Request", f"a batch holds at most {self.limits.max_batch_bytes} bytes")

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self.em.platform._guard(request)  # noqa: SLF001 - the same header and token checks as every Platform API
                return await handler(request)  # type: ignore[no-any-return]
            except Refusal as exc:
                return _json({"type": f"http://ns.adobe.com/aep/errors/{exc.status}", "title": exc.title,
                              "status": exc.status, "detail": exc.detail}, exc.status)
            except ApiError as exc:
                return _json({"type": f"http://ns.adobe.com/aep/errors/{exc.status}", "title": exc.title,
                              "status": exc.status, "detail": exc.detail}, exc.status)
        return endpoint

    # -- Batch Ingestion API -------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise Refusal(400, "Bad Request", "body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("datasetId"), str):
            raise Refusal(400, "Bad Request", "datasetId is required")
        if self._dataset(body["datasetId"]) is None:
            raise Refusal(400, "Bad Request", f"dataset {body['datasetId']} does not exist")
        fmt = body.get("inputFormat")
        if not isinstance(fmt, dict) or fmt.get("format") != "json":
            raise Refusal(400, "Bad Request", "inputFormat.format must be json (the only format emulated)")
        if not isinstance(fmt.get("isMultiLineJson", False), bool):
            raise Refusal(400, "Bad Request", "inputFormat.isMultiLineJson must be a boolean")
        batch_id = f"{next(self._seq):08d}{uuid.uuid4().hex[:24]}"
        batch = self.batches[batch_id] = Batch(batch_id, body["datasetId"], fmt, _now())
        return _json(batch.body(), 201)

    async def _delay(self) -> None:
        if self.limits.latency_ms:
            await asyncio.sleep(self.limits.latency_ms / 1000)

    async def put_file(self, request: Request) -> Response:
        await self._delay()
        batch, name = self._loading(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/octet-stream":
            raise Refusal(400, "Bad Request", "Content-Type must be application/octet-stream")
        data = await request.body()
        if len(data) > self.limits.small_file_bytes:
            raise Refusal(413, "Payload Too Large",
                          f"{len(data)} bytes: files over {self.limits.small_file_bytes} need the large-file upload")
        self._room(batch, name, len(data))
        batch.large.pop(name, None)
        batch.files[name] = data  # a PUT to the same name replaces the file (HTTP PUT is idempotent)
        self.puts[f"{batch.id}/{name}"] += 1
        return Response(b"", 200)

    async def file_action(self, request: Request) -> Response:
        batch, name = self._loading(request)
        action = request.query_params.get("action", "").upper()
        if action == "INITIALIZE":
            self._room(batch, name, 0)
            batch.files.pop(name, None)
            batch.large[name] = LargeFile()
            return Response(b"", 201)
        if action != "COMPLETE":
            raise Refusal(400, "Bad Request", "action must be INITIALIZE or COMPLETE")
        large = batch.large.get(name)
        if large is None:
            raise Refusal(400, "Bad Request", f"large file {name} was not initialized")
        chunks = sorted(large.chunks, key=lambda c: c[0])
        pos = 0
        for start, data in chunks:
            if start != pos:
                raise Refusal(400, "Bad Request", f"large file {name}: chunks {'overlap' if start < pos else 'leave a gap'}"
                                                   f" at byte {min(start, pos)}")
            pos += len(data)
        if large.total is None or pos != large.total:
            raise Refusal(400, "Bad Request", f"large file {name}: {pos} of {large.total} bytes uploaded")
        self._room(batch, name, pos)
        del batch.large[name]
        batch.files[name] = b"".join(d for _, d in chunks)
        self.puts[f"{batch.id}/{name}"] += 1
        return Response(b"", 201)

    async def patch_chunk(self, request: Request) -> Response:
        await self._delay()
        batch, name = self._loading(request)
        large = batch.large.get(name)
        if large is None:
            raise Refusal(400, "Bad Request", f"large file {name} was not initialized")
        m = _RANGE.match(request.headers.get("content-range", ""))
        if m is None:
            raise Refusal(400, "Bad Request", "Content-Range: bytes <first>-<last>/<total> is required")
        first, last, total = (int(g) for g in m.groups())
        data = await request.body()
        if last < first or last - first + 1 != len(data) or last >= total:
            raise Refusal(400, "Bad Request", f"Content-Range {m.group(0)} does not match {len(data)} bytes")
        if len(data) > self.limits.small_file_bytes:
            raise Refusal(413, "Payload Too Large", f"a chunk of {len(data)} bytes")
        if large.total not in (None, total):
            raise Refusal(400, "Bad Request", f"total {total} differs from {large.total}")
        large.total = total
        large.chunks.append((first, data))
        return Response(b"", 200)

    async def batch_action(self, request: Request) -> Response:
        batch = self._batch(request.path_params["batch_id"])
        action = request.query_params.get("action", "").upper()
        if action == "ABORT":
            if batch.status == "loading":
                batch.status, batch.updated = "aborted", _now()
            return Response(b"", 200)
        if action != "COMPLETE":
            raise Refusal(400, "Bad Request", "action must be COMPLETE or ABORT")
        batch.completes += 1
        if batch.status == "aborted":
            raise Refusal(400, "Bad Request", f"batch {batch.id} was aborted")
        if batch.status == "loading":
            if batch.large:
                raise Refusal(400, "Bad Request", f"large files not completed: {sorted(batch.large)}")
            batch.status, batch.updated = "processing", _now()
            batch.polls_left = self.limits.processing_polls
            if batch.polls_left <= 0:
                self._finish(batch)
        return Response(b"", 200)  # a repeated COMPLETE answers as the first did

    # -- Catalog -------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        batch = self._batch(request.path_params["batch_id"])
        if batch.status == "processing":
            batch.polls_left -= 1
            if batch.polls_left <= 0:
                self._finish(batch)
        return _json({batch.id: batch.body()})

    def _finish(self, batch: Batch) -> None:
        batch.updated = _now()
        records, errors = self._read(batch)
        batch.records_read = len(records) + sum(e.get("recordCount", 0) for e in errors)
        forced = next((f for f in self.fail_next if f.get("dataset_id") in (None, batch.dataset_id)), None)
        if forced is not None:
            self.fail_next.remove(forced)
            errors = forced.get("errors") or [{"code": "INGEST-1000-500", "description": "emulated failure"}]
        if not batch.files:
            errors = [{"code": "INGEST-1000-400", "description": "the batch has no files"}]
        if errors:
            batch.status, batch.errors = "failed", errors
            return
        batch.status, batch.records_written = "success", len(records)
        self._land(batch, records)

    def _read(self, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every record of the batch's files, in file order, and the errors that fail the batch."""
        records: list[dict[str, Any]] = []
        bad: Counter[str] = Counter()
        samples: dict[str, str] = {}
        ds = self._dataset(batch.dataset_id)
        validator = (build_validator(ds.json_schema) if ds is not None and ds.json_schema is not None
                     and self.em.cfg.strict_schemas else None)
        multi = batch.input_format.get("isMultiLineJson") is True
        for name, data in batch.files.items():
            if multi:
                bad["multi_line_not_emulated"] += 1
                samples.setdefault("multi_line_not_emulated", name)
                continue
            for n, line in enumerate(data.split(b"\n"), start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    bad["invalid_json"] += 1
                    samples.setdefault("invalid_json", f"{name} line {n}")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("_id"), str):
                    bad["not_an_xdm_record"] += 1
                    samples.setdefault("not_an_xdm_record", f"{name} line {n}")
                    continue
                if validator is not None and (found := violations(validator, record)):
                    bad["schema_violation"] += 1
                    samples.setdefault("schema_violation", f"{name} line {n}: {found[0]['message'][:200]}")
                    continue
                records.append(record)
        errors = [{"code": f"INGEST-{reason}", "description": f"{count} rows: {reason} (first: {samples[reason]})",
                   "recordCount": count} for reason, count in bad.items()]
        return records, errors

    def _land(self, batch: Batch, records: list[dict[str, Any]]) -> None:
        store = self.em.store
        ids = store.ids
        for record in records:
            rid = record["_id"]
            n = ids.get(rid, 0)
            if n:
                store.duplicate_ids += 1
                store.duplicate_ids_by_dataset[batch.dataset_id] = store.duplicate_ids_by_dataset.get(batch.dataset_id, 0) + 1
            ids[rid] = n + 1
        self.records_landed += len(records)
        ds = self._dataset(batch.dataset_id)
        if ds is not None and ds.record_type == "profile":
            store.profiles.accept_request(list(reversed(records)))  # no order is promised within a batch

    # -- test-only control ---------------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        return {
            "batches": {b.id: {**b.body(), "files": {n: len(d) for n, d in b.files.items()}, "completes": b.completes}
                        for b in self.batches.values()},
            "puts": dict(self.puts),
            "records_landed": self.records_landed,
            "limits": self.limits.__dict__,
            "fail_next": self.fail_next,
        }

    async def set_limits(self, request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        unknown = set(body) - set(self.limits.__dict__)
        if unknown or not all(isinstance(v, int) and v >= 0 for v in body.values()):
            return _json({"error": f"unknown or invalid limits: {sorted(unknown) or body}"}, 400)
        for k, v in body.items():
            setattr(self.limits, k, v)
        return _json(self.limits.__dict__)

    async def set_faults(self, request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        if not isinstance(body, dict) or not isinstance(body.get("errors", []), list):
            return _json({"error": "{dataset_id?, errors: [{code, description}]}"}, 400)
        self.fail_next.append(body)
        return _json({"fail_next": self.fail_next})

    def routes(self) -> list[Route]:
        w = self._wrap
        files = f"{IMPORT}/{{batch_id}}/datasets/{{dataset_id}}/files/{{name:path}}"
        return [
            Route(IMPORT, w(self.create), methods=["POST"]),
            Route(files, w(self.put_file), methods=["PUT"]),
            Route(files, w(self.file_action), methods=["POST"]),
            Route(files, w(self.patch_chunk), methods=["PATCH"]),
            Route(f"{IMPORT}/{{batch_id}}", w(self.batch_action), methods=["POST"]),
            Route(f"{CATALOG}/{{batch_id}}", w(self.status), methods=["GET"]),
            Route("/__emulator/batches", lambda request: _json(self.inventory()), methods=["GET"]),
            Route("/__emulator/batches/limits", self.set_limits, methods=["POST"]),
            Route("/__emulator/batches/faults", self.set_faults, methods=["POST"]),
        ]
