"""The webhook ingress facing the internet, as a real process over real sockets: slow clients are cut
off (headers and body) and their admission slot freed, per-client caps answer 429 before the
global one, /metrics lives on its own listener, HTTPS with certificate files reloaded on change."""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from support import ManagedProcess, free_port, python_module, wait_until
from test_ingest import TOKEN, Ingress, start_ingress

pytestmark = pytest.mark.integration

EVENT = {"eventName": "pointsIssued", "eventId": "edge-1", "createdAt": 1_750_000_000_000,
         "data": {"customerIdentifiers": {"customerId": 7}}}


def _prefix() -> str:
    return f"e{uuid.uuid4().hex[:8]}.capillary.events."


def _slow_upload(ingress: Ingress, forwarded_for: str | None = None, declared: int = 500) -> socket.socket:
    """A client that sends authenticated headers and the first bytes of a body, then stalls."""
    sock = socket.create_connection(("127.0.0.1", int(ingress.url.rsplit(":", 1)[1])), timeout=30)
    head = (f"POST /capillary/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n")
    if forwarded_for:
        head += f"X-Forwarded-For: {forwarded_for}\r\n"
    sock.sendall(head.encode() + b"\r\n" + b'[{"eventName":')
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (blocks; the socket has a timeout)."""
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def _post(ingress: Ingress, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    event = {**EVENT, "eventId": f"edge-{uuid.uuid4()}"}
    return ingress.post(event, headers=headers)


@pytest.fixture()
def slow_ingress(broker: str, tmp_path: Path) -> Iterator[Ingress]:
    ing = start_ingress(tmp_path, broker, _prefix(), extra="max_inflight_requests = 1\nbody_timeout_s = 1.5\n"
                                                          "header_timeout_s = 1.5")
    yield ing
    ing.stop()


def test_a_slow_upload_is_cut_off_with_408_and_its_slot_freed(slow_ingress: Ingress) -> None:
    ingress = slow_ingress
    sock = _slow_upload(ingress)
    try:
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 1, 10, what="admitted")
        assert _post(ingress).status_code == 429  # the only slot is held by the slow upload
        answer = _read_until_closed(sock)  # the server answers and closes: no more waiting for the body
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request_timeout" in answer
    m = ingress.metrics()
    assert m["capillary_ingest_inflight_requests"] == 0
    assert m["capillary_ingest_timeouts_total{phase=body}"] == 1
    assert m["capillary_ingest_requests_total{status=408}"] == 1
    assert m["capillary_ingest_throttled_total{cap=requests}"] == 1
    assert _post(ingress).status_code == 200  # the slot is free again


def test_a_client_that_trickles_its_headers_is_cut_off(slow_ingress: Ingress) -> None:
    ingress = slow_ingress
    port = int(ingress.url.rsplit(":", 1)[1])
    trickle = socket.create_connection(("127.0.0.1", port), timeout=30)
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        trickle.sendall(b"POST /capillary/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        assert _read_until_closed(trickle).startswith(b"HTTP/1.1 408 ")
        assert _read_until_closed(silent).startswith(b"HTTP/1.1 408 ")  # connected, sent nothing
    finally:
        trickle.close()
        silent.close()
    assert ingress.metrics()["capillary_ingest_timeouts_total{phase=header}"] == 2
    with httpx.Client(base_url=ingress.url) as keep_alive:  # a prompt client is unaffected, across requests
        for _ in range(3):
            r = keep_alive.post("/capillary/events", content=orjson.dumps({**EVENT, "eventId": str(uuid.uuid4())}),
                                headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text


def test_per_address_and_per_credential_caps_come_before_the_global_one(broker: str, tmp_path: Path) -> None:
    ingress = start_ingress(tmp_path, broker, _prefix(), extra=(
        "max_inflight_requests = 10\nmax_inflight_per_address = 1\nmax_inflight_per_credential = 2\n"
        'forwarded_allow_ips = "127.0.0.1"'))  # as behind a trusted proxy: clients by X-Forwarded-For
    held: list[socket.socket] = []
    try:
        held.append(_slow_upload(ingress, forwarded_for="203.0.113.7"))
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 1, 10, what="admitted")
        same = _post(ingress, forwarded_for="203.0.113.7")
        assert same.status_code == 429 and "this client" in same.json()["detail"], same.text
        assert same.headers["retry-after"] == "5"
        assert _post(ingress, forwarded_for="203.0.113.8").status_code == 200  # another address gets in

        held.append(_slow_upload(ingress, forwarded_for="203.0.113.9"))
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 2, 10, what="admitted")
        by_credential = _post(ingress, forwarded_for="203.0.113.10")  # a fresh address, the same credential
        assert by_credential.status_code == 429, by_credential.text
        m = ingress.metrics()
        assert m["capillary_ingest_throttled_total{cap=address}"] == 1
        assert m["capillary_ingest_throttled_total{cap=credential}"] == 1
        assert m["capillary_ingest_throttled_total{cap=requests}"] == 0  # the global cap was never reached
    finally:
        for sock in held:
            sock.close()  # the client goes away: its slots are freed
    wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 0, 10, what="slots freed")
    assert _post(ingress, forwarded_for="203.0.113.7").status_code == 200
    ingress.stop()


def _chunked_upload(ingress: Ingress, nbytes: int) -> socket.socket:
    """A chunked upload (no Content-Length) that sends ``nbytes`` of body in 16 KiB chunks, then stalls."""
    sock = socket.create_connection(("127.0.0.1", int(ingress.url.rsplit(":", 1)[1])), timeout=30)
    sock.sendall(f"POST /capillary/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    body = b"[" + b" " * (nbytes - 1)
    for start in range(0, nbytes, 16 * 1024):
        chunk = body[start:start + 16 * 1024]
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            break  # the server answered and closed mid-upload (refused): its answer is read next
    return sock


def _answer_then_close(sock: socket.socket) -> bytes:
    """What the server sent before closing; a reset after it (unread upload bytes) ends it too."""
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_slow_chunked_uploads_hold_only_what_they_sent(broker: str, tmp_path: Path) -> None:
    """Without a Content-Length a request is charged as its body arrives: six stalled chunked
    uploads (which would each have been charged max_body_bytes, 1.5 MiB of a 1 MiB budget) leave
    room for a normal request, and an upload the budget cannot take is refused when it outgrows it."""
    ingress = start_ingress(tmp_path, broker, _prefix(), extra=(
        f"max_inflight_bytes = {1024 * 1024}\nmax_body_bytes = {256 * 1024}\nbody_timeout_s = 60"))
    held: list[socket.socket] = []
    try:
        for _ in range(6):
            held.append(_chunked_upload(ingress, 100))
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 6, 10, what="admitted")
        assert ingress.metrics()["capillary_ingest_inflight_bytes"] <= 6 * 64 * 1024
        assert _post(ingress).status_code == 200
        # Its charge is released after its answer is sent: wait for it, or the budget below is short.
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_requests"] == 6, 10, what="released")

        for _ in range(3):  # 3 x 180 KiB received (charged 192 KiB each) + the six small ones: 960 KiB
            held.append(_chunked_upload(ingress, 180 * 1024))
        wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_bytes"] == 960 * 1024, 10,
                   what="bodies received")
        assert _post(ingress).status_code == 200  # a small one still fits
        greedy = _chunked_upload(ingress, 250 * 1024)  # outgrows what is left while it arrives
        answer = _answer_then_close(greedy)
        greedy.close()
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert b"retry-after: 5" in answer.lower()
        m = ingress.metrics()
        assert m["capillary_ingest_throttled_total{cap=bytes}"] == 1
        assert m["capillary_ingest_inflight_requests"] == 9  # the greedy one's charge was released
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: ingress.metrics()["capillary_ingest_inflight_bytes"] == 0, 10, what="charges released")
    ingress.stop()


def test_requests_over_the_connection_limit_are_429_and_closed(broker: str, tmp_path: Path) -> None:
    ingress = start_ingress(tmp_path, broker, _prefix(), extra="max_connections = 3\nheader_timeout_s = 60")
    port = int(ingress.url.rsplit(":", 1)[1])
    ingress.http.close()  # its kept-alive connection (the start's health checks) would count for 5 s more
    ingress.http = httpx.Client(base_url=ingress.url, timeout=30)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        wait_until(lambda: ingress.metrics()["capillary_ingest_connections"] == 3, 10, what="connections open")
        with httpx.Client(base_url=ingress.url, timeout=10) as fourth:
            r = fourth.post("/capillary/events", content=orjson.dumps({**EVENT, "eventId": str(uuid.uuid4())}),
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 429 and r.json()["error"] == "overloaded", r.text
        assert r.headers["retry-after"] == "5" and r.headers["connection"] == "close"
        m = ingress.metrics()
        assert m["capillary_ingest_throttled_total{cap=connections}"] == 1
        assert m["capillary_ingest_requests_total{status=429}"] == 1
        idle.pop().close()
        wait_until(lambda: ingress.metrics()["capillary_ingest_connections"] == 2, 10, what="one closed")
        assert _post(ingress).status_code == 200  # room again (the test client's kept-alive connection)
    finally:
        for sock in idle:
            sock.close()
        ingress.stop()


def test_metrics_listener_that_cannot_bind_fails_the_start_with_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ManagedProcess(python_module("connector", "ingest"), log_path=tmp_path / "ingest.log", env={
            "CAPILLARY_AEP__INGEST__AUTH_TOKEN": TOKEN, "CAPILLARY_AEP__INGEST__LISTEN": f"127.0.0.1:{free_port()}",
            "CAPILLARY_AEP__INGEST__METRICS_LISTEN": f"127.0.0.1:{port}"})
        assert proc.wait(30) == 2
    assert f"ingest.metrics_listen: cannot listen on 127.0.0.1:{port}" in proc.log_text()


def test_a_short_token_fails_the_start_with_the_key_and_not_the_token(tmp_path: Path) -> None:
    short = "short-but-secret-token"
    proc = ManagedProcess(python_module("connector", "ingest"), log_path=tmp_path / "ingest.log", env={
        "CAPILLARY_AEP__INGEST__AUTH_TOKEN": short, "CAPILLARY_AEP__INGEST__LISTEN": f"127.0.0.1:{free_port()}",
        "CAPILLARY_AEP__INGEST__METRICS_LISTEN": ""})
    assert proc.wait(30) == 2
    assert "auth_token is 22 characters; at least 32 are required" in proc.log_text()
    assert short not in proc.log_text()


def _write_pair(ca: object, cert_path: Path, key_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")  # type: ignore[attr-defined]
    tmp_cert, tmp_key = cert_path.with_name(cert_path.name + ".new"), key_path.with_name(key_path.name + ".new")
    tmp_cert.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    tmp_key.write_bytes(cert.private_key_pem.bytes())
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)


def _client_for(ca: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)  # type: ignore[attr-defined]
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    """The TLS version negotiated with the ingress, or raises ssl.SSLError when it is refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


def _legacy_client(ca: object, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client that offers only ``version`` and ``ciphers`` (with OpenSSL's own floor lowered)."""
    ctx = _client_for(ca)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return ctx


# CBC suites: with SHA-1 (uvicorn's old "TLSv1" default admitted them), with SHA-2 (Python's default does).
CBC_SHA1 = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA"
CBC_SHA2 = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384"


def _assert_tls_policy(port: int, ca: object) -> None:
    assert _handshake(port, _client_for(ca)) == "TLSv1.3"
    assert _handshake(port, _legacy_client(ca, ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM")) == "TLSv1.2"
    for version, ciphers in ((ssl.TLSVersion.TLSv1_2, CBC_SHA1), (ssl.TLSVersion.TLSv1_2, CBC_SHA2),
                             (ssl.TLSVersion.TLSv1_1, "ALL"),
                             (ssl.TLSVersion.TLSv1, "ALL")):
        with pytest.raises(ssl.SSLError):
            _handshake(port, _legacy_client(ca, version, ciphers))


def test_https_with_a_certificate_reloaded_when_its_files_change(broker: str, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    first, second = trustme.CA(), trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _write_pair(first, cert, key)
    ingress = start_ingress(tmp_path, broker, _prefix(), extra=(
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\ntls_reload_interval_s = 0.2'), scheme="https",
        verify=_client_for(first))
    try:
        https = ingress.url
        assert https.startswith("https://")
        event = {**EVENT, "eventId": f"tls-{uuid.uuid4()}"}
        r = httpx.post(f"{https}/capillary/events", content=orjson.dumps(event), verify=_client_for(first),
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 200, r.text
        port = int(https.rsplit(":", 1)[1])
        _assert_tls_policy(port, first)  # TLS 1.2+ and AEAD suites only
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port gets nothing useful
            httpx.get(https.replace("https://", "http://") + "/healthz", timeout=5).raise_for_status()
        with pytest.raises(httpx.ConnectError):  # a client that trusts only the next CA refuses this one
            httpx.get(f"{https}/healthz", verify=_client_for(second), timeout=5)

        _write_pair(second, cert, key)  # certificate rotation: new files, same paths, no restart
        wait_until(lambda: httpx.get(f"{https}/healthz", verify=_client_for(second), timeout=5).status_code == 200,
                   20, what="the new certificate in service")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{https}/healthz", verify=_client_for(first), timeout=5)
        assert "TLS certificate reloaded" in ingress.proc.log_text()
        _assert_tls_policy(port, second)  # the reloaded pair is served under the same policy
        assert ingress.proc.alive()
    finally:
        ingress.stop()


def test_a_tls_handshake_is_under_the_header_deadline(broker: str, tmp_path: Path) -> None:
    """A client that connects to the HTTPS port and never sends its ClientHello is dropped within
    header_timeout_s (asyncio's own handshake limit is 60 s), and a prompt client is unaffected."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _write_pair(ca, cert, key)
    ingress = start_ingress(tmp_path, broker, _prefix(), extra=(
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\nheader_timeout_s = 1'), scheme="https",
        verify=_client_for(ca))
    try:
        port = int(ingress.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert _answer_then_close(silent) == b""  # closed without a word (a TimeoutError fails the test)
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                _client_for(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            started = time.monotonic()  # handshake done, no request: the rest of the deadline, then 408
            assert _answer_then_close(tls).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 5
        assert ingress.http.get("/healthz").status_code == 200
    finally:
        ingress.stop()
