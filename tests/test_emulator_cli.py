"""The emulator's command line, config files, clean shutdown, and create_app under a plain uvicorn."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from support import ManagedProcess, free_port, port_open, python_module, wait_until

from connector.dev.emulator import DEMO_INLET_ID, create_app, demo_config
from connector.dev.emulator import config as em


def start(tmp_path: Path, *args: str, stop_signal: int = signal.SIGTERM) -> tuple[ManagedProcess, httpx.Client]:
    port = free_port()
    proc = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), *args),
                          log_path=tmp_path / f"emulator-{port}.log", stop_signal=stop_signal)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_until(lambda: client.get("/__emulator/health").status_code == 200, 30, what="emulator health")
    return proc, client


def envelope(rid: str) -> dict[str, object]:
    ref = {"id": em.DEMO_EVENT_SCHEMA_ID, "contentType": "application/vnd.adobe.xed-full+json;version=1"}
    return {"header": {"schemaRef": ref, "imsOrgId": em.DEMO_ORG_ID, "datasetId": em.DEMO_EVENT_DATASET_ID},
            "body": {"xdmMeta": {"schemaRef": ref}, "xdmEntity": {"_id": rid, "timestamp": "2024-01-01T00:00:00Z"}}}


def test_cli_flags(tmp_path: Path) -> None:
    proc, c = start(tmp_path, "--no-auth", "--failure-style", "v2024", "--no-store-bodies", "--token-ttl", "5",
                    "--no-null-check")
    try:
        r = c.post(f"/collection/batch/{DEMO_INLET_ID}", json={"messages": [envelope("c-1"), {"header": {}}]})
        assert r.status_code == 207  # --no-auth: no token needed
        ok, bad = r.json()["responses"]
        assert "xactionId" in ok and bad["status"] == 400 and bad["xactionId"].endswith("-1")  # v2024 style
        assert c.get("/__emulator/messages").json()["total"] == 0  # --no-store-bodies
        assert c.get("/__emulator/ids").json()["ids"] == {"c-1": 1}  # ids are always kept
        nulls = envelope("c-2")
        nulls["body"]["xdmEntity"]["tier"] = None  # type: ignore[index]
        assert c.post(f"/collection/{DEMO_INLET_ID}", json=nulls).status_code == 200
        s = c.get("/__emulator/stats").json()
        assert s["null_check"] is False and s["null_or_empty"] == 0 and s["messages_accepted"] == 2
        tok = c.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
                                            "client_secret": em.DEMO_CLIENT_SECRET})
        assert tok.json()["expires_in"] == 5
    finally:
        c.close()
        assert proc.stop() == 0  # SIGTERM: clean exit
    assert "Traceback" not in proc.log_text()


def test_toml_config_overrides_the_demo(tmp_path: Path) -> None:
    cfg = tmp_path / "emulator.toml"
    cfg.write_text('invalid_token_status = 403\nunknown_inlet_status = 410\ntoken_ttl_s = 60\n'
                   'max_stored_messages = 1\n')
    proc, c = start(tmp_path, "--config", str(cfg), stop_signal=signal.SIGINT)
    try:
        url = f"/collection/batch/{DEMO_INLET_ID}"
        body = {"messages": [envelope("t-1")]}
        assert c.post(url, json=body).status_code == 401  # missing token stays 401
        r = c.post(url, json=body, headers={"Authorization": "Bearer forged"})
        assert r.status_code == 403 and r.json()["status"] == "403"
        assert c.post("/collection/batch/unknown", json=body).status_code == 410
        assert c.get("/__emulator/config").json()["token_ttl_s"] == 60
        r = c.post(url, json={"messages": [envelope("t-2"), envelope("t-3")]}, headers=_bearer(c))
        assert r.status_code == 207
        page = c.get("/__emulator/messages").json()
        assert page["total"] == 1 and page["messages"][0]["envelope"]["body"]["xdmEntity"]["_id"] == "t-2"
        assert c.get("/__emulator/stats").json()["messages_not_stored"] == 1
        assert c.get("/__emulator/ids").json()["ids"] == {"t-2": 1, "t-3": 1}
    finally:
        c.close()
        assert proc.stop() == 0  # SIGINT: clean exit too


def _bearer(c: httpx.Client) -> dict[str, str]:
    r = c.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
                                      "client_secret": em.DEMO_CLIENT_SECRET})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def plain_uvicorn() -> Iterator[str]:
    """create_app under a stock uvicorn in a thread (no emulator protocol class)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(demo_config()), host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: port_open(port), 10, what="uvicorn thread")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_create_app_in_a_thread_and_drop_fallback(plain_uvicorn: str) -> None:
    with httpx.Client(base_url=plain_uvicorn, timeout=10) as c:
        assert c.get("/__emulator/health").json() == {"ok": True}
        c.post("/__emulator/faults", json={"drop_connection_rate": 1, "drop_connection_count": 1})
        with pytest.raises(httpx.TransportError):
            c.post(f"/collection/batch/{DEMO_INLET_ID}", json={"messages": [envelope("x")]})
        assert c.post(f"/collection/batch/{DEMO_INLET_ID}", json={"messages": [envelope("x")]}).status_code == 401
