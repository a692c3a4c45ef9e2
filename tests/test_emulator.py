"""The AEP + IMS + Schema Registry emulator, over real HTTP on loopback (one child process)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from support import ManagedProcess, free_port, python_module, wait_until

from connector.dev.emulator import config as em

OPEN_INLET = "open-inlet-v2024"  # no auth, v2024 failure style, a validated dataset
RAW_INLET = "raw-inlet"
RAW_FLOW = "11111111-2222-4333-8444-555555555555"
VALIDATED_DATASET = "5f00000000000000000000v1"
CT = "application/vnd.adobe.xed-full+json;version=1"
EVENT_SCHEMA = {
    "type": "object",
    "required": ["_id", "timestamp"],
    "properties": {
        "_id": {"type": "string"},
        "timestamp": {"type": "string"},
        "eventType": {"type": "string"},
        "points": {"type": "number"},
    },
}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("emulator")
    base = em.demo_config()
    inlets = [i.model_dump(mode="json") for i in base.inlets] + [
        {"inlet_id": OPEN_INLET, "authentication_required": False, "batch_failure_style": "v2024",
         "datasets": {em.DEMO_EVENT_DATASET_ID: em.DEMO_EVENT_SCHEMA_ID,
                      VALIDATED_DATASET: {"schema_id": em.DEMO_EVENT_SCHEMA_ID, "json_schema": "event.schema.json"}}},
        {"inlet_id": RAW_INLET, "authentication_required": False, "data_type": "raw", "flow_ids": [RAW_FLOW]},
    ]
    (tmp / "event.schema.json").write_text(json.dumps(EVENT_SCHEMA))
    (tmp / "emulator.json").write_text(json.dumps({"inlets": inlets}))
    port = free_port()
    proc = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), "--config", str(tmp / "emulator.json")),
                          log_path=tmp / "emulator.log")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_until(lambda: client.get("/__emulator/health").json() == {"ok": True}, 30, what="emulator health")
        yield client
    finally:
        client.close()
        assert proc.stop() == 0, proc.log_text()
        assert "Traceback" not in proc.log_text(), proc.log_text()


@pytest.fixture(autouse=True)
def _clean(emu: httpx.Client) -> None:
    emu.post("/__emulator/reset", json={"faults": True}).raise_for_status()


# -- helpers -------------------------------------------------------------------------------


def envelope(rid: str, dataset: str = em.DEMO_EVENT_DATASET_ID, schema: str = em.DEMO_EVENT_SCHEMA_ID,
             **entity: Any) -> dict[str, Any]:
    ref = {"id": schema, "contentType": CT}
    return {
        "header": {"schemaRef": dict(ref), "imsOrgId": em.DEMO_ORG_ID, "datasetId": dataset,
                   "source": {"name": "test"}},
        "body": {"xdmMeta": {"schemaRef": dict(ref)},
                 "xdmEntity": {"_id": rid, "timestamp": "2024-01-01T00:00:00Z", "eventType": "loyalty.test", **entity}},
    }


def token(emu: httpx.Client, **extra: str) -> str:
    r = emu.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
                                        "client_secret": em.DEMO_CLIENT_SECRET, **extra})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def auth(emu: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(emu)}"}


def batch(emu: httpx.Client, messages: list[Any], inlet: str = em.DEMO_INLET_ID,
          headers: dict[str, str] | None = None) -> httpx.Response:
    if headers is None:
        headers = auth(emu) if inlet == em.DEMO_INLET_ID else {}
    return emu.post(f"/collection/batch/{inlet}", json={"messages": messages}, headers=headers)


def stats(emu: httpx.Client) -> dict[str, Any]:
    return emu.get("/__emulator/stats").json()


def jwt_payload(tok: str) -> dict[str, Any]:
    part = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# -- IMS -----------------------------------------------------------------------------------


def test_token_issuance_returns_jwt_with_ms_claims(emu: httpx.Client) -> None:
    r = emu.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
                                        "client_secret": em.DEMO_CLIENT_SECRET,
                                        "scope": "openid,AdobeID,read_organizations"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 86399  # seconds for v3
    claims = jwt_payload(body["access_token"])
    assert claims["client_id"] == em.DEMO_CLIENT_ID and claims["type"] == "access_token"
    assert claims["expires_in"] == "86399000"  # milliseconds as a string, like IMS
    assert abs(int(claims["created_at"]) - time.time() * 1000) < 60_000
    s = stats(emu)
    assert (s["token_requests"], s["tokens_issued"]) == (1, 1)


def test_token_params_from_query_string_and_body_wins(emu: httpx.Client) -> None:
    r = emu.post("/ims/token/v3", params={"client_id": em.DEMO_CLIENT_ID, "client_secret": "wrong"},
                 data={"grant_type": "client_credentials", "client_secret": em.DEMO_CLIENT_SECRET})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_secret": "nope"}, 401, "invalid_client"),
        ({"client_id": "someone-else"}, 400, "invalid_client"),
        ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type"),
        ({"client_secret": None}, 400, "invalid_request"),
        ({"client_id": None}, 400, "invalid_request"),
        ({"grant_type": None}, 400, "invalid_request"),
        ({"scope": "openid,write_everything"}, 400, "invalid_scope"),
    ],
)
def test_token_errors(emu: httpx.Client, form: dict[str, str | None], status: int, error: str) -> None:
    data = {"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
            "client_secret": em.DEMO_CLIENT_SECRET, **form}
    r = emu.post("/ims/token/v3", data={k: v for k, v in data.items() if v is not None})
    assert r.status_code == status
    assert r.json()["error"] == error and r.json()["error_description"]
    s = stats(emu)
    assert (s["token_requests"], s["tokens_issued"]) == (1, 0)


def test_ims_fault_and_legacy_v2(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"ims_status": 503, "ims_count": 1}).raise_for_status()
    form = {"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID, "client_secret": em.DEMO_CLIENT_SECRET}
    assert emu.post("/ims/token/v3", data=form).status_code == 503
    assert emu.post("/ims/token/v2", data=form).status_code == 200  # count exhausted; v2 behaves like v3


# -- DCS auth ------------------------------------------------------------------------------


def test_missing_and_unknown_token_get_401_problem(emu: httpx.Client) -> None:
    msgs = [envelope("a-1")]
    for headers in ({}, {"Authorization": "Bearer not-a-real-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = batch(emu, msgs, headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert body["status"] == "401" and body["title"] == "Authorization"  # a string, as documented
        assert body["type"].endswith("data-collection-service-authorization")
    assert "Ims service token is empty" in batch(emu, msgs, headers={}).json()["report"]["message"]
    assert stats(emu)["messages_accepted"] == 0


def test_token_expires_after_short_ttl(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"token_ttl_s": 1}).raise_for_status()
    tok = token(emu)
    assert jwt_payload(tok)["expires_in"] == "1000"
    headers = {"Authorization": f"Bearer {tok}"}
    assert batch(emu, [envelope("t-1")], headers=headers).status_code == 207
    r = wait_until(lambda: (x := batch(emu, [envelope("t-2")], headers=headers)).status_code == 401 and x,
                   timeout=10, what="token expiry")
    assert "expired" in r.json()["report"]["message"]
    assert batch(emu, [envelope("t-3")], headers=auth(emu)).status_code == 207  # a fresh token works


def test_revoked_tokens_are_rejected_and_reset_keeps_tokens(emu: httpx.Client) -> None:
    headers = auth(emu)
    emu.post("/__emulator/reset").raise_for_status()
    assert batch(emu, [envelope("r-1")], headers=headers).status_code == 207  # reset keeps tokens
    r = emu.post("/__emulator/faults", json={"revoke_tokens": True})
    assert r.json()["revoked_tokens"] >= 1
    assert batch(emu, [envelope("r-2")], headers=headers).status_code == 401
    assert "revoke_tokens" not in emu.get("/__emulator/faults").json()


def test_unauthenticated_inlet_ignores_authorization(emu: httpx.Client) -> None:
    r = batch(emu, [envelope("o-1")], inlet=OPEN_INLET, headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 207 and "xactionId" in r.json()["responses"][0]


# -- DCS batch -----------------------------------------------------------------------------


def test_batch_207_one_response_per_message_in_order_docs_style(emu: httpx.Client) -> None:
    bad_org = envelope("b-2")
    bad_org["header"]["imsOrgId"] = "OTHER@AdobeOrg"
    msgs = [envelope("b-0"), {"header": {}}, bad_org, envelope("b-3", dataset=em.DEMO_PROFILE_DATASET_ID,
                                                                  schema=em.DEMO_PROFILE_SCHEMA_ID)]
    r = batch(emu, msgs)
    assert r.status_code == 207
    body = r.json()
    assert body["inletId"] == em.DEMO_INLET_ID and isinstance(body["receivedTimeMs"], int)
    res = body["responses"]
    assert len(res) == 4
    assert res[0] == {"xactionId": f"{body['batchId']}:0"}
    assert res[3] == {"xactionId": f"{body['batchId']}:3"}
    assert res[1]["statusCode"] == 400 and res[1]["message"].endswith("Message has unknown xdm format")
    assert res[2]["statusCode"] == 400 and "absent or wrong ims org" in res[2]["message"]
    assert res[1]["message"].startswith(f"inletId: [{em.DEMO_INLET_ID}] imsOrgId: [{em.DEMO_ORG_ID}]")
    assert "xactionId" not in res[1]
    s = stats(emu)
    assert (s["messages_accepted"], s["messages_rejected"], s["batch_requests"]) == (2, 2, 1)
    assert s["accepted_by_dataset"] == {em.DEMO_EVENT_DATASET_ID: 1, em.DEMO_PROFILE_DATASET_ID: 1}
    assert s["requests"] == {"207": 1}


def test_batch_v2024_failure_style_and_all_failed_is_still_207(emu: httpx.Client) -> None:
    r = batch(emu, [{"body": {}}, "not an object"], inlet=OPEN_INLET)
    assert r.status_code == 207
    res = r.json()["responses"]
    prefixes = {e["xactionId"].rsplit("-", 1)[0] for e in res}
    assert len(prefixes) == 1 and len(prefixes.pop()) == 36  # "<uuid>-<index>"
    assert [int(e["xactionId"].rsplit("-", 1)[1]) for e in res] == [0, 1]
    assert all(e["status"] == 400 and "statusCode" not in e for e in res)


def _mutate(path: str, value: Any) -> dict[str, Any]:
    env = envelope("m-1")
    *parents, leaf = path.split(".")
    node = env
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return env


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "reason", "text"),
    [
        ("header", _DELETE, "unknown_xdm_format", "unknown xdm format"),
        ("body", _DELETE, "unknown_xdm_format", "unknown xdm format"),
        ("header.imsOrgId", "X@AdobeOrg", "wrong_ims_org", "absent or wrong ims org"),
        ("body.xdmMeta.schemaRef", _DELETE, "unknown_xdm_format", "unknown xdm format"),
        ("header.schemaRef", _DELETE, "unknown_xdm_format", "unknown xdm format"),
        ("body.xdmEntity", _DELETE, "missing_xdm_entity", "missing xdmEntity"),
        ("header.datasetId", _DELETE, "missing_dataset", "missing datasetId"),
        ("header.datasetId", "5f0000000000000000000zzz", "unknown_dataset", "does not exist"),
        ("header.datasetId", em.DEMO_PROFILE_DATASET_ID, "schema_mismatch", "does not match dataset"),
        ("body.xdmMeta.schemaRef.id", em.DEMO_PROFILE_SCHEMA_ID, "schema_mismatch", "body.xdmMeta.schemaRef.id"),
    ],
)
def test_per_message_envelope_failures(emu: httpx.Client, path: str, value: Any, reason: str, text: str) -> None:
    r = batch(emu, [envelope("ok-1"), _mutate(path, value)])
    assert r.status_code == 207
    ok, bad = r.json()["responses"]
    assert "xactionId" in ok
    assert bad["statusCode"] == 400 and text in bad["message"], bad
    s = stats(emu)
    assert s["rejected_by_reason"] == {reason: 1} and s["messages_accepted"] == 1
    rej = emu.get("/__emulator/rejections").json()["rejections"]
    assert rej[0]["index"] == 1 and rej[0]["reason"] == reason


def test_envelope_without_ims_org_is_accepted(emu: httpx.Client) -> None:
    env = envelope("no-org")
    del env["header"]["imsOrgId"]  # DCCS fills it in
    assert "xactionId" in batch(emu, [env]).json()["responses"][0]


@pytest.mark.parametrize("body", [b'{"messages": [', b"[1, 2]", b'{"messages": []}', b'{"msgs": [{}]}'])
def test_invalid_batch_bodies_get_400(emu: httpx.Client, body: bytes) -> None:
    r = emu.post(f"/collection/batch/{em.DEMO_INLET_ID}", content=body,
                 headers={**auth(emu), "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["status"] == 400


def test_unsupported_content_type(emu: httpx.Client) -> None:
    body = orjson.dumps({"messages": [envelope("ct-1")]})
    r = emu.post(f"/collection/batch/{em.DEMO_INLET_ID}", content=body,
                 headers={**auth(emu), "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = emu.post(f"/collection/batch/{em.DEMO_INLET_ID}", content=body,
                 headers={**auth(emu), "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 207


def test_gzip_body_is_decoded(emu: httpx.Client) -> None:
    body = gzip.compress(orjson.dumps({"messages": [envelope("gz-1")]}))
    r = emu.post(f"/collection/batch/{em.DEMO_INLET_ID}", content=body,
                 headers={**auth(emu), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 207 and emu.get("/__emulator/ids").json()["ids"] == {"gz-1": 1}


def test_unknown_inlet_404_problem(emu: httpx.Client) -> None:
    r = batch(emu, [envelope("x")], inlet="f" * 64, headers={})
    assert r.status_code == 404
    assert r.json()["status"] == 404 and r.json()["type"].endswith("data-collection-service/inlet")
    assert emu.post("/collection/" + "f" * 64, json=envelope("x")).status_code == 404


def _padded_body(size: int) -> bytes:
    env = envelope("big-1", padding="")
    skeleton = orjson.dumps({"messages": [env]})
    env["body"]["xdmEntity"]["padding"] = "x" * (size - len(skeleton))
    body = orjson.dumps({"messages": [env]})
    assert len(body) == size
    return body


def test_body_over_1_mib_gets_413_and_exactly_1_mib_is_accepted(emu: httpx.Client) -> None:
    headers = {**auth(emu), "Content-Type": "application/json"}
    url = f"/collection/batch/{em.DEMO_INLET_ID}"
    r = emu.post(url, content=_padded_body(1_048_577), headers=headers)
    assert r.status_code == 413 and r.content == b""
    r = emu.post(url, content=_padded_body(1_048_576), headers=headers)
    assert r.status_code == 207 and "xactionId" in r.json()["responses"][0]
    s = stats(emu)
    assert s["max_request_bytes"] == 1_048_577 and s["bytes_received"] == 2_097_153
    assert s["requests"] == {"413": 1, "207": 1}


# -- DCS single ----------------------------------------------------------------------------


def test_single_message_endpoint(emu: httpx.Client) -> None:
    env = envelope("s-1")
    env["header"]["flowId"] = em.DEMO_EVENT_FLOW_ID
    r = emu.post(f"/collection/{em.DEMO_INLET_ID}", json=env, headers=auth(emu))
    assert r.status_code == 200
    body = r.json()
    assert body["inletId"] == em.DEMO_INLET_ID and body["syncValidation"] == {"skipped": True}
    assert body["flowId"] == em.DEMO_EVENT_FLOW_ID
    ms, node, seq = body["xactionId"].split(":")
    assert int(ms) == body["receivedTimeMs"] and len(node) == 4 and int(seq) > 0
    bad = envelope("s-2")
    del bad["body"]["xdmMeta"]
    r = emu.post(f"/collection/{em.DEMO_INLET_ID}", json=bad, headers=auth(emu))
    assert r.status_code == 400 and "unknown xdm format" in r.json()["report"]["message"]
    assert stats(emu)["single_requests"] == 2


def test_sync_validation_on_single_endpoint(emu: httpx.Client) -> None:
    url = f"/collection/{OPEN_INLET}?syncValidation=true"
    r = emu.post(url, json=envelope("sv-1", dataset=VALIDATED_DATASET))
    assert r.status_code == 200 and r.json()["syncValidation"] == {"status": "pass"}
    r = emu.post(url, json=envelope("sv-2", dataset=VALIDATED_DATASET, points="many"))
    assert r.status_code == 400
    cause = r.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"]
    assert cause[0]["pointerToViolation"] == "#/points" and cause[0]["keyword"] == "type"
    assert emu.get("/__emulator/ids").json()["ids"] == {"sv-1": 1}  # failing record dropped


def test_raw_inlet_requires_a_flow_id(emu: httpx.Client) -> None:
    r = emu.post(f"/collection/{RAW_INLET}", json={"customerId": 1, "points": 5})
    assert r.status_code == 400 and "flow" in r.json()["report"]["message"]
    r = emu.post(f"/collection/{RAW_INLET}", json={"customerId": 1}, headers={"x-adobe-flow-id": "unknown"})
    assert r.status_code == 400
    r = emu.post(f"/collection/{RAW_INLET}", json={"_id": "raw-1", "customerId": 1},
                 headers={"x-adobe-flow-id": RAW_FLOW})
    assert r.status_code == 200 and r.json()["flowId"] == RAW_FLOW
    assert stats(emu)["accepted_by_dataset"] == {f"flow:{RAW_FLOW}": 1}


# -- fault knobs ---------------------------------------------------------------------------


def test_forced_status_with_count_and_retry_after(emu: httpx.Client) -> None:
    knobs = emu.post("/__emulator/faults", json={"status": 503, "count": 2, "retry_after": "7"}).json()
    assert knobs["status"] == 503 and knobs["count"] == 2
    headers = auth(emu)
    for _ in range(2):
        r = batch(emu, [envelope("f-1")], headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert emu.get("/__emulator/faults").json()["status"] is None  # count used up
    r = batch(emu, [envelope("f-1")], headers=headers)
    assert r.status_code == 207 and "retry-after" not in r.headers
    s = stats(emu)
    assert s["requests"] == {"503": 2, "207": 1} and s["faulted_requests"] == 2
    assert emu.get("/__emulator/ids").json()["ids"] == {"f-1": 1}


def test_forced_429_without_retry_after_and_rate_zero(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"status": 429}).raise_for_status()
    r = batch(emu, [envelope("q-1")])
    assert r.status_code == 429 and "retry-after" not in r.headers
    emu.post("/__emulator/faults", json={"rate": 0}).raise_for_status()  # merged: status kept, never fires
    assert batch(emu, [envelope("q-1")]).status_code == 207
    emu.delete("/__emulator/faults").raise_for_status()
    assert emu.get("/__emulator/faults").json()["status"] is None


def test_latency_does_not_block_other_requests(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"latency_ms": 500}).raise_for_status()

    def one(i: int) -> float:
        t0 = time.monotonic()
        with httpx.Client(base_url=str(emu.base_url), timeout=10) as c:
            assert c.post(f"/collection/batch/{OPEN_INLET}", json={"messages": [envelope(f"l-{i}")]}).status_code == 207
        return time.monotonic() - t0

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        durations = list(pool.map(one, range(4)))
    total = time.monotonic() - t0
    assert min(durations) >= 0.5
    assert total < 1.5, f"4 requests with 0.5 s latency took {total:.2f} s: the latency is blocking"


def test_dropped_connection_is_a_connection_error(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"drop_connection_rate": 1.0, "drop_connection_count": 1}).raise_for_status()
    with pytest.raises(httpx.TransportError):
        batch(emu, [envelope("d-1")], inlet=OPEN_INLET)
    r = batch(emu, [envelope("d-1")], inlet=OPEN_INLET)  # the count was 1
    assert r.status_code == 207
    s = stats(emu)
    assert s["dropped_connections"] == 1 and s["requests"] == {"dropped": 1, "207": 1}
    assert emu.get("/__emulator/ids").json()["ids"] == {"d-1": 1}


def test_message_failure_by_id_inside_207(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"message_status_by_id": {"poison": 400}}).raise_for_status()
    emu.post("/__emulator/faults", json={"message_status_by_id": {"flaky": {"status": 500, "count": 1}}})
    r = batch(emu, [envelope("fine-1"), envelope("poison"), envelope("flaky"), envelope("fine-2")])
    res = r.json()["responses"]
    assert "xactionId" in res[0] and "xactionId" in res[3]
    assert res[1]["statusCode"] == 400 and res[1]["message"]
    assert res[2]["statusCode"] == 500
    r = batch(emu, [envelope("poison"), envelope("flaky")])
    res = r.json()["responses"]
    assert res[0]["statusCode"] == 400 and "xactionId" in res[1]  # flaky failed only once
    assert emu.get("/__emulator/ids").json()["ids"] == {"fine-1": 1, "fine-2": 1, "flaky": 1}


def test_random_message_failures(emu: httpx.Client) -> None:
    emu.post("/__emulator/faults", json={"message_status": {"rate": 1.0, "status": 503, "count": 2}})
    res = batch(emu, [envelope(f"rm-{i}") for i in range(4)]).json()["responses"]
    assert [e.get("statusCode") for e in res] == [503, 503, None, None]


def test_invalid_fault_knobs_are_rejected(emu: httpx.Client) -> None:
    assert emu.post("/__emulator/faults", json={"status": 200}).status_code == 400
    assert emu.post("/__emulator/faults", json={"no_such_knob": 1}).status_code == 400
    assert emu.get("/__emulator/faults").json()["status"] is None


# -- inspection ----------------------------------------------------------------------------


def test_messages_ids_and_stats(emu: httpx.Client) -> None:
    r1 = batch(emu, [envelope("i-1"), envelope("i-2", eventType="loyalty.other")])
    r2 = batch(emu, [envelope("i-3"), envelope("i-1")])
    page = emu.get("/__emulator/messages", params={"offset": 0, "limit": 3}).json()
    assert [m["envelope"]["body"]["xdmEntity"]["_id"] for m in page["messages"]] == ["i-1", "i-2", "i-3"]
    assert page["next"] == 3 and page["total"] == 4
    assert page["messages"][0]["xactionId"] == r1.json()["responses"][0]["xactionId"]
    assert page["messages"][0]["envelope"] == envelope("i-1")
    rest = emu.get("/__emulator/messages", params={"offset": 3}).json()
    assert rest["messages"][0]["xactionId"] == r2.json()["responses"][1]["xactionId"]
    assert emu.get("/__emulator/messages", params={"offset": 4}).json()["messages"] == []
    assert emu.get("/__emulator/ids").json() == {"ids": {"i-1": 2, "i-2": 1, "i-3": 1}}
    s = stats(emu)
    assert s["duplicate_ids"] == 1 and s["unique_ids"] == 3 and s["messages_accepted"] == 4
    assert s["accepted_by_event_type"] == {"loyalty.test": 3, "loyalty.other": 1}
    assert s["null_or_empty"] == 0 and s["batch_requests"] == 2
    assert s["bytes_received"] > 0 and s["max_request_bytes"] <= s["bytes_received"]


def test_null_and_empty_values_are_accepted_but_counted(emu: httpx.Client) -> None:
    msgs = [
        envelope("n-1", tier=None),
        envelope("n-2", name=""),
        envelope("n-3", tags=[], loyalty={"points": 1, "extra": {}}),
        envelope("n-4", note='annulled "null" {} [] ""'),  # tokens inside a string are fine
    ]
    res = batch(emu, msgs).json()["responses"]
    assert all("xactionId" in e for e in res)
    s = stats(emu)
    assert s["null_or_empty"] == 3
    assert {x["_id"]: x["paths"] for x in s["null_or_empty_samples"]} == {
        "n-1": ["/tier"], "n-2": ["/name"], "n-3": ["/tags", "/loyalty/extra"]}


def test_async_validation_and_profile_dedup(emu: httpx.Client) -> None:
    msgs = [envelope("v-1", dataset=VALIDATED_DATASET, points=5),
            envelope("v-2", dataset=VALIDATED_DATASET, points="five"),
            envelope("v-1", dataset=VALIDATED_DATASET, points=6)]
    assert all("xactionId" in e for e in batch(emu, msgs, inlet=OPEN_INLET).json()["responses"])
    url = f"/__emulator/datasets/{VALIDATED_DATASET}"
    wait_until(lambda: emu.get(f"{url}/records").json()["pending"] == 0 and stats(emu)["validation"]["passed"],
               10, what="async validation")
    records = emu.get(f"{url}/records").json()
    assert [r["_id"] for r in records["records"]] == ["v-1"]
    assert records["records"][0]["entity"]["points"] == 5  # first wins
    assert records["dropped_duplicates"] == 1
    failed = emu.get(f"{url}/failed").json()
    assert [r["_id"] for r in failed["records"]] == ["v-2"]
    assert failed["records"][0]["errors"][0]["keyword"] == "type"
    assert stats(emu)["duplicate_ids"] == 1
    off = emu.get(f"/__emulator/datasets/{em.DEMO_EVENT_DATASET_ID}/records").json()
    assert off["validation"] == "disabled"
    assert emu.get("/__emulator/datasets/nope/records").status_code == 404


def test_reset_clears_store_and_counters(emu: httpx.Client) -> None:
    batch(emu, [envelope("z-1")])
    assert stats(emu)["messages_accepted"] == 1
    assert emu.post("/__emulator/reset").json()["ok"] is True
    s = stats(emu)
    assert (s["messages_accepted"], s["token_requests"], s["requests"], s["unique_ids"]) == (0, 0, {}, 0)
    assert emu.get("/__emulator/messages").json()["total"] == 0


# -- Schema Registry -----------------------------------------------------------------------


def test_schema_registry_with_the_confluent_client(emu: httpx.Client) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext

    url = str(emu.base_url).rstrip("/")
    topic = f"capillary.events.{time.monotonic_ns()}"
    schema = json.dumps({"type": "record", "name": "LoyaltyEvent", "namespace": "com.capillary",
                         "fields": [{"name": "eventId", "type": "string"}, {"name": "points", "type": "long"}]})
    ser = AvroSerializer(SchemaRegistryClient({"url": url}), schema, conf={"auto.register.schemas": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    wire = ser({"eventId": "e-1", "points": 42}, ctx)
    assert wire[0] == 0
    schema_id = int.from_bytes(wire[1:5], "big")
    # A fresh client (empty cache) must fetch the writer schema by id from the server.
    de = AvroDeserializer(SchemaRegistryClient({"url": url}))
    assert de(wire, ctx) == {"eventId": "e-1", "points": 42}

    client = SchemaRegistryClient({"url": url})
    subject = f"{topic}-value"
    assert client.register_schema(subject, Schema(schema, "AVRO")) == schema_id  # same schema, same id
    assert client.get_versions(subject) == [1]
    assert client.get_latest_version(subject).schema_id == schema_id
    other = json.dumps({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]})
    new_id = client.register_schema(subject, Schema(other, "AVRO"))
    assert new_id > schema_id and client.get_versions(subject) == [1, 2]
    assert client.get_version(subject, 2).schema_id == new_id
    assert client.lookup_schema(subject, Schema(schema, "AVRO")).version == 1
    assert {(v.subject, v.version) for v in client.get_schema_versions(schema_id)} == {(subject, 1)}
    assert subject in client.get_subjects()
    slashed = f"team/{topic}"  # the client percent-encodes "/" in subject names
    assert client.register_schema(slashed, Schema(schema, "AVRO")) == schema_id
    assert client.get_latest_version(slashed).version == 1

    with pytest.raises(SchemaRegistryError) as exc:
        client.lookup_schema(f"{topic}-missing", Schema(schema, "AVRO"))
    assert exc.value.http_status_code == 404 and exc.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as exc:
        client.get_schema(999_999)
    assert exc.value.http_status_code == 404 and exc.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as exc:
        client.register_schema(subject, Schema('{"type": "no.such.Type"}', "AVRO"))
    assert exc.value.http_status_code == 422

    r = emu.get(f"/schemas/ids/{schema_id}", params={"subject": subject, "format": "serialized"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")
    assert json.loads(r.json()["schema"]) == json.loads(schema)
    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility(subject, "NONE")
    assert client.get_compatibility(subject) == "NONE" and client.get_compatibility() == "BACKWARD"


def test_schema_registry_stores_and_answers_the_schema_type(emu: httpx.Client) -> None:
    """A shared registry holds JSON Schema and Protobuf subjects beside Avro ones: their schemaType
    is stored and answered (Confluent leaves it out for Avro), so the connector can refuse them."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    url = str(emu.base_url).rstrip("/")
    run = time.monotonic_ns()
    client = SchemaRegistryClient({"url": url})
    ids = {kind: client.register_schema(f"{kind.lower()}-{run}-value", Schema(text, kind)) for kind, text in [
        ("JSON", '{"type": "object", "properties": {"id": {"type": "string"}}}'),
        ("PROTOBUF", f'syntax = "proto3"; message M{run} {{ string id = 1; }}'),
        ("AVRO", json.dumps({"type": "record", "name": f"R{run}", "fields": []}))]}
    assert len(set(ids.values())) == 3
    fresh = SchemaRegistryClient({"url": url})  # no cache: fetched by id from the server
    assert {kind: (fresh.get_schema(sid).schema_type or "AVRO") for kind, sid in ids.items()} == {
        "JSON": "JSON", "PROTOBUF": "PROTOBUF", "AVRO": "AVRO"}
    assert emu.get(f"/schemas/ids/{ids['PROTOBUF']}").json()["schemaType"] == "PROTOBUF"
    assert "schemaType" not in emu.get(f"/schemas/ids/{ids['AVRO']}").json()
