"""The emulated Batch Ingestion API and Catalog batch status hold AEP's documented rules (docs/emulator.md
names the page of each): shapes, the small-file limit and the chunked large-file upload, 1,500 files per
batch, a repeatable COMPLETE, a batch that fails whole on one bad row, and landing only on success."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import Emulator, start_emulator

from connector.dev.emulator import config as em

pytestmark = pytest.mark.integration
IMPORT = "/data/foundation/import/batches"
CATALOG = "/data/foundation/catalog/batches"
EVENTS, PROFILES = em.DEMO_EVENT_DATASET_ID, em.DEMO_PROFILE_DATASET_ID


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    e = start_emulator(tmp_path_factory.mktemp("batches"))
    e.http.post("/__emulator/batches/limits", json={"small_file_bytes": 1000, "max_files_per_batch": 3,
                                                    "processing_polls": 2}).raise_for_status()
    yield e
    e.proc.stop()


@pytest.fixture(scope="module")
def api(emulator: Emulator) -> httpx.Client:
    token = httpx.post(f"{emulator.url}/ims/token/v3", data={
        "grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
        "client_secret": em.DEMO_CLIENT_SECRET}).json()["access_token"]
    return httpx.Client(base_url=emulator.url, timeout=10, headers={
        "Authorization": f"Bearer {token}", "x-api-key": em.DEMO_CLIENT_ID, "x-gw-ims-org-id": em.DEMO_ORG_ID,
        "x-sandbox-name": "prod"})


def batch(api: httpx.Client, dataset: str = EVENTS) -> str:
    r = api.post(IMPORT, json={"datasetId": dataset, "inputFormat": {"format": "json"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "loading" and body["relatedObjects"] == [{"type": "dataSet", "id": dataset}]
    return str(body["id"])


def put(api: httpx.Client, batch_id: str, name: str, data: bytes, dataset: str = EVENTS) -> httpx.Response:
    return api.put(f"{IMPORT}/{batch_id}/datasets/{dataset}/files/{name}", content=data,
                   headers={"Content-Type": "application/octet-stream"})


def lines(*records: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def status(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    r = api.get(f"{CATALOG}/{batch_id}")
    assert r.status_code == 200, r.text
    return r.json()[batch_id]  # type: ignore[no-any-return]


def final(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    seen = [status(api, batch_id)["status"] for _ in range(2)]
    assert seen[0] == "processing"  # processing_polls = 2: the first read still processing
    return status(api, batch_id) if seen[1] == "processing" else {"status": seen[1], **status(api, batch_id)}


def ev(i: str) -> dict[str, Any]:
    return {"_id": i, "timestamp": "2026-01-01T00:00:00Z", "eventType": "loyalty.test"}


def test_create_needs_a_known_dataset_and_json(api: httpx.Client) -> None:
    assert api.post(IMPORT, json={"datasetId": "nope", "inputFormat": {"format": "json"}}).status_code == 400
    assert api.post(IMPORT, json={"datasetId": EVENTS, "inputFormat": {"format": "csv"}}).status_code == 400
    assert api.post(IMPORT, json={"datasetId": EVENTS}).status_code == 400
    assert httpx.post(api.base_url.join(IMPORT), json={"datasetId": EVENTS, "inputFormat": {"format": "json"}}
                      ).status_code == 400  # no x-api-key, org or token


def test_a_file_over_the_small_limit_is_refused_and_the_large_upload_takes_it(api: httpx.Client,
                                                                               emulator: Emulator) -> None:
    b = batch(api)
    ids = [uuid.uuid4().hex for _ in range(30)]
    data = lines(*(ev(i) for i in ids))
    assert len(data) > 1000
    assert put(api, b, "big.json", data).status_code == 413
    url = f"{IMPORT}/{b}/datasets/{EVENTS}/files/big.json"
    assert api.post(url, params={"action": "INITIALIZE"}).status_code == 201
    octets = {"Content-Type": "application/octet-stream"}
    chunks = [(i, data[i:i + 1000]) for i in range(0, len(data), 1000)]
    for first, chunk in chunks[:-1]:
        assert api.patch(url, content=chunk, headers={
            **octets, "Content-Range": f"bytes {first}-{first + len(chunk) - 1}/{len(data)}"}).status_code == 200
    # a gap (the last chunk is missing): completion checks the ranges
    assert api.post(url, params={"action": "COMPLETE"}).status_code == 400
    first, chunk = chunks[-1]
    assert api.patch(url, content=chunk, headers={
        **octets, "Content-Range": f"bytes {first}-{first + len(chunk) - 1}/{len(data)}"}).status_code == 200
    assert api.post(url, params={"action": "COMPLETE"}).status_code == 201
    assert api.post(f"{IMPORT}/{b}", params={"action": "COMPLETE"}).status_code == 200
    assert api.post(f"{IMPORT}/{b}", params={"action": "COMPLETE"}).status_code == 200  # safe to repeat
    assert final(api, b)["status"] == "success"
    landed = emulator.ids()
    assert [landed.get(i) for i in ids] == [1] * len(ids)


def test_overlapping_chunks_fail_the_file(api: httpx.Client) -> None:
    b = batch(api)
    url = f"{IMPORT}/{b}/datasets/{EVENTS}/files/x.json"
    api.post(url, params={"action": "INITIALIZE"}).raise_for_status()
    octets = {"Content-Type": "application/octet-stream"}
    for first in (0, 5):
        api.patch(url, content=b"x" * 10, headers={**octets, "Content-Range": f"bytes {first}-{first + 9}/15"}
                  ).raise_for_status()
    r = api.post(url, params={"action": "COMPLETE"})
    assert r.status_code == 400 and "overlap" in r.text


def test_files_per_batch_and_state_rules(api: httpx.Client) -> None:
    b = batch(api)
    for n in range(3):
        assert put(api, b, f"f{n}.json", lines(ev(uuid.uuid4().hex))).status_code == 200
    assert put(api, b, "f3.json", lines(ev(uuid.uuid4().hex))).status_code == 400  # 3 files at most (lowered)
    assert put(api, b, "f0.json", lines(ev(uuid.uuid4().hex))).status_code == 200  # same name: replaced
    assert put(api, b, "f0.json", b"{}", dataset=PROFILES).status_code == 400  # another dataset
    r = api.put(f"{IMPORT}/{b}/datasets/{EVENTS}/files/f9.json", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    api.post(f"{IMPORT}/{b}", params={"action": "COMPLETE"}).raise_for_status()
    assert put(api, b, "f1.json", lines(ev("late"))).status_code == 400  # not loading any more
    assert api.get(f"{CATALOG}/nope").status_code == 404
    assert api.post(f"{IMPORT}/nope", params={"action": "COMPLETE"}).status_code == 404


def test_one_bad_row_fails_the_batch_and_nothing_lands(api: httpx.Client, emulator: Emulator) -> None:
    b = batch(api)
    good = uuid.uuid4().hex
    put(api, b, "a.json", lines(ev(good)) + b"{not json\n").raise_for_status()
    api.post(f"{IMPORT}/{b}", params={"action": "COMPLETE"}).raise_for_status()
    got = final(api, b)
    assert got["status"] == "failed"
    assert got["errors"][0]["code"] == "INGEST-invalid_json" and "a.json line 2" in got["errors"][0]["description"]
    assert good not in emulator.ids()


def test_a_fault_fails_the_next_batch_of_a_dataset(api: httpx.Client, emulator: Emulator) -> None:
    emulator.http.post("/__emulator/batches/faults", json={"dataset_id": PROFILES, "errors": [
        {"code": "PROFILE-1001", "description": "emulated: profile store unavailable"}]}).raise_for_status()
    e = batch(api)
    put(api, e, "e.json", lines(ev(uuid.uuid4().hex))).raise_for_status()
    api.post(f"{IMPORT}/{e}", params={"action": "COMPLETE"}).raise_for_status()
    assert final(api, e)["status"] == "success"  # another dataset: not this fault's
    p = batch(api, PROFILES)
    pid = uuid.uuid4().hex
    record = {"_id": pid, "identityMap": {"CapillaryCustomerId": [{"id": "c-1", "primary": True}]}}
    put(api, p, "p.json", lines(record), dataset=PROFILES).raise_for_status()
    api.post(f"{IMPORT}/{p}", params={"action": "COMPLETE"}).raise_for_status()
    got = final(api, p)
    assert got["status"] == "failed" and got["errors"] == [
        {"code": "PROFILE-1001", "description": "emulated: profile store unavailable"}]
    assert pid not in emulator.ids()
