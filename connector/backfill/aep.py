"""AEP's Batch Ingestion API and the Catalog's batch status, as the developer guide documents them.

    POST  /data/foundation/import/batches                                  create (inputFormat json)
    PUT   …/batches/{id}/datasets/{ds}/files/{name}                        a file of ≤ 256 MB
    POST  …/files/{name}?action=INITIALIZE, PATCH (Content-Range) …, POST …?action=COMPLETE   larger
    POST  …/batches/{id}?action=COMPLETE                                   safe to repeat
    GET   /data/foundation/catalog/batches/{id}                            {id: {status, errors, …}}

The client is the connector's (connector.delivery.egress: proxy, CA bundle, client certificate) with its IMS
tokens (connector.delivery.auth). Transport errors, 429 and 5xx are retried with backoff, at most
``attempts`` times, each retry logged and counted (:attr:`BatchClient.retries`); a 401 gets one fresh
token. Anything else is a :class:`PlatformError` with AEP's words (secrets masked by the logger and
never put in the message).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from connector.config import AepConfig
from connector.delivery.auth import TokenProvider
from connector.delivery.egress import OneShotBody, aep_client, describe_http_error
from connector.errors import AuthFailure, TransientError
from connector.provision.platform import PlatformError, _detail

log = logging.getLogger(__name__)

IMPORT = "/data/foundation/import/batches"
CATALOG = "/data/foundation/catalog/batches"
SMALL_FILE_LIMIT = 256 * 1024 * 1024  # Batch ingestion developer guide: small files, 256 MB or less
CHUNK_BYTES = 64 * 1024 * 1024
SUCCESS = frozenset({"success", "active"})
# Catalog statuses after which nothing changes (the troubleshooting guide's list; "success"/"active"
# is the good one).
FINAL = SUCCESS | {"failed", "failure", "aborted", "abandoned", "deleted", "inactive"}


class BatchClient:
    def __init__(self, aep: AepConfig, *, attempts: int = 8, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self._http = client or aep_client(aep.http, timeout=300)
        self._base = aep.platform_url.rstrip("/")
        self._tokens = TokenProvider(aep.ims, self._http)
        self._headers = {"x-api-key": aep.ims.client_id, "x-gw-ims-org-id": aep.org_id, "x-sandbox-name": aep.sandbox}
        self.attempts, self.backoff_s, self.backoff_max_s = attempts, backoff_s, backoff_max_s
        self._sleep = sleep
        self.retries = 0  # every retried call (the run's summary and its log lines)
        self.bytes_sent = 0

    def close(self) -> None:
        self._http.close()

    def _call(self, what: str, method: str, path: str, *, json: Any = None, content: bytes | None = None,
              headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx.Response:
        refreshed = False
        for attempt in range(1, self.attempts + 1):
            try:
                token = self._tokens.token()
            except AuthFailure as exc:
                raise PlatformError("IMS access token", None, str(exc)) from None
            except TransientError as exc:
                problem: str = str(exc)
            else:
                h = {**self._headers, "Authorization": f"Bearer {token}", **(headers or {})}
                body = None
                if content is not None:
                    h["Content-Length"] = str(len(content))
                    body = OneShotBody(content)
                try:
                    resp = self._http.request(method, self._base + path, json=json, content=body, headers=h,
                                              params=params)
                except httpx.HTTPError as exc:
                    problem = describe_http_error(exc)
                else:
                    if resp.status_code < 400:
                        if content:
                            self.bytes_sent += len(content)
                        return resp
                    if resp.status_code in (401, 403) and not refreshed:
                        self._tokens.invalidate(token)
                        refreshed = True
                        continue
                    if resp.status_code != 429 and resp.status_code < 500:
                        raise PlatformError(what, resp.status_code, _detail(resp))
                    problem = f"HTTP {resp.status_code} {_detail(resp)}".strip()
                finally:
                    if body is not None:
                        body.release()  # the file or chunk is not kept by httpx's reference cycles
            if attempt == self.attempts:
                raise PlatformError(what, None, f"still failing after {attempt} attempts: {problem}")
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            self.retries += 1
            log.warning("%s failed (%s): retry %d of %d in %.1fs", what, problem, attempt, self.attempts - 1, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def create_batch(self, dataset_id: str) -> str:
        what = f"create a batch for dataset {dataset_id}"
        resp = self._call(what, "POST", IMPORT, json={
            "datasetId": dataset_id, "inputFormat": {"format": "json"}})  # single-line JSON, as Adobe recommends
        try:
            batch_id = resp.json()["id"]
        except (ValueError, KeyError, TypeError):
            raise PlatformError(what, resp.status_code, "the answer has no batch id") from None
        if not isinstance(batch_id, str) or not batch_id:
            raise PlatformError(what, resp.status_code, "the answer has no batch id")
        return batch_id

    def _file_path(self, batch_id: str, dataset_id: str, name: str) -> str:
        return f"{IMPORT}/{quote(batch_id, safe='')}/datasets/{quote(dataset_id, safe='')}/files/{quote(name, safe='')}"

    def upload(self, batch_id: str, dataset_id: str, name: str, path: Path, *,
               small_limit: int = SMALL_FILE_LIMIT, chunk_bytes: int = CHUNK_BYTES) -> None:
        """One file into the batch: a single PUT up to ``small_limit`` bytes, else the large-file
        upload in chunks of ``chunk_bytes`` (each read from disk when it is sent)."""
        size = path.stat().st_size
        url = self._file_path(batch_id, dataset_id, name)
        octets = {"Content-Type": "application/octet-stream"}
        what = f"upload {name} to batch {batch_id}"
        if size <= small_limit:
            self._call(what, "PUT", url, content=path.read_bytes(), headers=octets)
            return
        self._call(f"{what} (initialize)", "POST", url, params={"action": "INITIALIZE"})
        for start, data in _chunks(path, chunk_bytes):
            end = start + len(data) - 1
            self._call(f"{what} (bytes {start}-{end})", "PATCH", url, content=data,
                       headers={**octets, "Content-Range": f"bytes {start}-{end}/{size}"})
        self._call(f"{what} (complete)", "POST", url, params={"action": "COMPLETE"})

    def complete(self, batch_id: str) -> None:
        self._call(f"complete batch {batch_id}", "POST", f"{IMPORT}/{quote(batch_id, safe='')}",
                   params={"action": "COMPLETE"})

    def status(self, batch_id: str) -> dict[str, Any]:
        what = f"read the status of batch {batch_id}"
        resp = self._call(what, "GET", f"{CATALOG}/{quote(batch_id, safe='')}")
        try:
            body = resp.json()
            found = body.get(batch_id) or next(iter(body.values()))
        except (ValueError, AttributeError, StopIteration):
            raise PlatformError(what, resp.status_code, "the answer holds no batch") from None
        if not isinstance(found, dict) or not isinstance(found.get("status"), str):
            raise PlatformError(what, resp.status_code, "the batch has no status")
        return found


def _chunks(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        start = 0
        while data := f.read(size):
            yield start, data
            start += len(data)


def describe_errors(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The Catalog's errors of a batch, each reduced to code, description and record count."""
    out = []
    for e in batch.get("errors") or []:
        if isinstance(e, dict):
            out.append({k: e[k] for k in ("code", "description", "recordCount", "rows") if k in e})
    return out
