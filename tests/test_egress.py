"""``aep.http``: proxy, CA bundle and client certificate towards IMS and the inlet. Against the
project's emulator over HTTPS (trustme certificates; mutual TLS required by the server) and through a
loopback CONNECT proxy, with ``capillary-aep check`` (which gets a token from IMS and probes the
inlet with the connector's own client) as the witness."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from support import free_port, python_module
from test_kafka_security import GOOD
from tls_support import ConnectProxy, make_tls_files, start_https_emulator

from connector.config import ConfigError, load_settings
from connector.delivery.egress import AepHttpConfig, client_options
from connector.dev.demo import connector_toml
from connector.dev.emulator import config as em

PROXY_PASSWORD = "Pr0xy-pass-n0t-for-logs"


def _verdicts(out: str) -> dict[str, str]:
    return {line.split()[1]: line[0] for line in out.splitlines() if line[:1] in "✓✗–"}


def _check(tmp_path: Path, url: str, http: str, **env: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "check.toml"
    cfg.write_text(connector_toml(bootstrap=f"127.0.0.1:{free_port()}", emulator_url=url, metrics_port=None,
                                  extra="[aep.http]\n" + http))
    full = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    full.update({"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET, **env})
    return subprocess.run(python_module("connector", "check", "--config", str(cfg), "--timeout", "2"), env=full,
                          capture_output=True, text=True, timeout=90)


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("http", "expected"), [
    ("proxy = 'http://user:pw@proxy:3128'", "aep.http: Value error, proxy: put the credentials in proxy_username"),
    ("proxy = 'socks5://proxy:1080'", "proxy must be an http:// or https:// URL"),
    ("proxy_username = 'u'", "proxy_username and proxy_password go together"),
    ("ca_file = '/nonexistent/ca.pem'", "ca_file '/nonexistent/ca.pem' is not a readable file"),
    ("client_key = '/etc/hostname'", "client_key needs client_cert"),
    ("ca_file = '/etc/hostname'", "ca_file/client_cert/client_key cannot be loaded"),
])
def test_bad_egress_config_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: str,
                                         expected: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD + "[aep.http]\n" + http + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert expected.replace("Value error, ", "") in str(info.value)
    assert "pw@" not in str(info.value)


def test_client_options(tmp_path: Path) -> None:
    assert client_options(AepHttpConfig()) == {}  # httpx's defaults: certifi, the proxy environment
    tls = make_tls_files(tmp_path)
    opts = client_options(AepHttpConfig(proxy="http://127.0.0.1:3128", proxy_username="u",
                                        proxy_password=PROXY_PASSWORD, ca_file=str(tls.ca),
                                        client_cert=str(tls.client_cert), client_key=str(tls.client_key)))
    assert opts["trust_env"] is False and isinstance(opts["proxy"], httpx.Proxy)
    assert opts["proxy"].raw_auth == (b"u", PROXY_PASSWORD.encode())
    assert opts["verify"].verify_mode.name == "CERT_REQUIRED"
    assert PROXY_PASSWORD not in repr(AepHttpConfig(proxy_username="u", proxy_password=PROXY_PASSWORD))


# -- against the HTTPS emulator ------------------------------------------------------------------------
@pytest.mark.integration
def test_ims_and_inlet_over_mutual_tls_with_a_private_ca(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls, mtls=True)
    try:
        full = f"ca_file = '{tls.ca}'\nclient_cert = '{tls.client_cert}'\nclient_key = '{tls.client_key}'\n"
        r = _check(tmp_path, url, full)
        v = _verdicts(r.stdout)
        assert (v["ims"], v["inlet"]) == ("✓", "✓"), r.stdout + r.stderr
        # Without the client certificate the server refuses the handshake; without the CA the client does.
        for http in (f"ca_file = '{tls.ca}'\n", f"client_cert = '{tls.client_cert}'\nclient_key = '{tls.client_key}'\n"):
            r = _check(tmp_path, url, http)
            assert _verdicts(r.stdout)["ims"] == "✗", r.stdout
            assert "IMS unreachable" in r.stdout, r.stdout
    finally:
        proc.stop()


@pytest.mark.integration
def test_ims_and_inlet_through_an_authenticating_proxy(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls)
    proxy = ConnectProxy(authorization="Basic " + base64.b64encode(f"egress:{PROXY_PASSWORD}".encode()).decode())
    try:
        port = url.rsplit(":", 1)[1]
        http = f"proxy = '{proxy.url}'\nproxy_username = 'egress'\nca_file = '{tls.ca}'\n"
        r = _check(tmp_path, url, http, CAPILLARY_AEP__AEP__HTTP__PROXY_PASSWORD=PROXY_PASSWORD)
        v = _verdicts(r.stdout)
        assert (v["ims"], v["inlet"]) == ("✓", "✓"), r.stdout + r.stderr
        assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{port}"}  # IMS and inlet both tunnelled
        assert PROXY_PASSWORD not in r.stdout + r.stderr
        # The proxy's environment variables lose against the setting, and a wrong password is refused.
        tunnels = len(proxy.targets)
        r = _check(tmp_path, url, http, CAPILLARY_AEP__AEP__HTTP__PROXY_PASSWORD="wrong-" + PROXY_PASSWORD,
                   HTTPS_PROXY=f"http://127.0.0.1:{free_port()}")
        assert _verdicts(r.stdout)["ims"] == "✗" and proxy.refused >= 1 and len(proxy.targets) == tunnels
        assert PROXY_PASSWORD not in r.stdout + r.stderr
    finally:
        proxy.close()
        proc.stop()


@pytest.mark.integration
def test_the_connector_delivers_over_mutual_tls_through_the_proxy(broker, prefix, tmp_path: Path) -> None:
    """The running connector (not only check): IMS token and inlet batches over mTLS, via the proxy."""
    import ssl

    from harness import new_group, start_connector

    from connector.dev.produce import produce_events
    from connector.dev.samples import generate_events

    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls, mtls=True)
    proxy = ConnectProxy()
    try:
        events = generate_events(30, seed=1818)
        produce_events(broker, events, "json", topic_prefix=prefix)
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=url, prefix=prefix, group=new_group(),
                            extra=f"[aep.http]\nproxy = '{proxy.url}'\nca_file = '{tls.ca}'\n"
                                  f"client_cert = '{tls.client_cert}'\nclient_key = '{tls.client_key}'\n")
        try:
            c.wait_acknowledged(len(events))
        finally:
            c.stop()
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        stats = httpx.get(f"{url}/__emulator/stats", verify=ctx, timeout=5).json()
        assert stats["messages_accepted"] >= len(events) and stats["tokens_issued"] >= 1, stats
        assert proxy.targets and set(proxy.targets) == {url.removeprefix("https://")}
    finally:
        proxy.close()
        proc.stop()


@pytest.mark.parametrize(("url", "cause", "hint"), [
    ("http://127.0.0.1:{port}", "ConnectError: [Errno 111] Connection refused", None),
    ("http://no-such-host.invalid", "ConnectError:", "check the URL, DNS, or whether egress needs aep.http.proxy"),
])
def test_an_unreachable_ims_keeps_httpxs_cause_in_the_error(url: str, cause: str, hint: str | None) -> None:
    from connector.config import ImsConfig
    from connector.delivery.auth import TokenProvider
    from connector.errors import TransientError

    secret = "never-in-the-message-0042"
    ims = ImsConfig(url=url.format(port=free_port()), client_id="c", client_secret=secret)
    with httpx.Client(timeout=5) as client, pytest.raises(TransientError) as info:
        TokenProvider(ims, client).token()
    message = str(info.value)
    assert message.startswith("IMS unreachable: ") and cause in message, message
    assert hint is None or hint in message
    assert secret not in message


def test_a_certificate_error_hints_at_the_proxys_ca(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls)
    try:
        from connector.delivery.egress import describe_http_error

        with httpx.Client(timeout=5) as client, pytest.raises(httpx.HTTPError) as info:
            client.get(url + "/__emulator/health")  # the private CA is not trusted
        message = describe_http_error(info.value)
        assert "CERTIFICATE_VERIFY_FAILED" in message and "set aep.http.ca_file" in message
    finally:
        proc.stop()


def test_a_batch_ingestion_upload_is_freed_when_its_exchange_ends(tmp_path: Path) -> None:
    """The backfill's file and chunk uploads go as OneShotBody, as the inlet's requests do: httpx's
    request objects sit in reference cycles, and a bytes body would live (a whole file, a 64 MB
    chunk) until the cyclic GC's next full collection. Real loopback HTTP, the cyclic GC off."""
    from support import held_without_gc, loopback_http

    from connector.backfill.aep import BatchClient
    from connector.config import AepConfig, ImsConfig

    got: list[tuple[str, int]] = []

    def platform(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path.startswith("/ims/token/v3"):
            return 200, b'{"access_token": "t", "expires_in": 86399}'
        got.append((method, len(body)))
        return 200, b"{}"

    data = tmp_path / "part.json"
    data.write_bytes(b"x" * 3_000_000)
    with loopback_http(platform) as url, httpx.Client() as http:
        aep = AepConfig(dcs_url=url, platform_url=url, inlet_id="i", org_id="O@AdobeOrg", allow_insecure_http=True,
                        ims=ImsConfig(url=url, client_id="c", client_secret="s"))
        batches = BatchClient(aep, client=http)
        held = held_without_gc(lambda: [batches.upload("b", "d", f"f{n}.json", data, small_limit=1_000_000,
                                                       chunk_bytes=1_000_000) for n in range(3)])
    assert got == [("POST", 0), ("PATCH", 1_000_000), ("PATCH", 1_000_000), ("PATCH", 1_000_000), ("POST", 0)] * 3
    assert held < 1_500_000, held  # nine chunks of 1 MB would be 9 MB
