"""Schema Registry credentials and TLS: basic auth and a bearer token as separate secrets, CA trust and
a client certificate, against the emulator's registry; the URL printed by ``check`` or carried by
``RegistryUnavailable`` never has userinfo; rejected credentials stop the process (exit 3) instead of
dead-lettering every record as an unknown schema."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest
from conftest import start_emulator
from pydantic import ValidationError
from tls_support import make_tls_files, start_https_emulator

from connector.config import ConfigError, DecodeConfig, bearer_token_supported, load_settings, strip_userinfo
from connector.decode.registry import RegistryLookup, client_config
from connector.errors import RegistryUnavailable
from connector.tools.check import _registry

USER, PASSWORD, TOKEN = "sr-key", "Sr-Secret-n0t-for-logs", "sr-Bearer-t0ken-n0t-for-logs"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SCHEMA = '{"type": "record", "name": "Ping", "namespace": "t", "fields": [{"name": "a", "type": "int"}]}'


def _register(url: str, authorization: str = "", verify: object = True) -> int:
    r = httpx.post(f"{url}/subjects/t.Ping/versions", json={"schema": SCHEMA}, timeout=5, verify=verify,
                   headers={"Authorization": authorization} if authorization else {})
    r.raise_for_status()
    return int(r.json()["id"])


# -- mapping and the URL (no server) -------------------------------------------------------------------
def test_client_config_maps_basic_bearer_and_tls(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("pem")
    d = DecodeConfig(schema_registry_url="https://sr.example", schema_registry_username=USER,
                     schema_registry_password=PASSWORD, schema_registry_ca_file=str(tmp_path / "ca.pem"),
                     schema_registry_cert_file=str(tmp_path / "c.pem"), schema_registry_key_file=str(tmp_path / "k.pem"))
    assert client_config(d) == {"url": "https://sr.example", "basic.auth.user.info": f"{USER}:{PASSWORD}",
                                "ssl.ca.location": str(tmp_path / "ca.pem"),
                                "ssl.certificate.location": str(tmp_path / "c.pem"),
                                "ssl.key.location": str(tmp_path / "k.pem")}
    if not bearer_token_supported():  # an older confluent-kafka: refused at start, naming the key
        with pytest.raises(ValidationError, match="schema_registry_bearer_token needs confluent-kafka >= 2.14"):
            DecodeConfig(schema_registry_url="https://sr.example", schema_registry_bearer_token=TOKEN)
        return
    d = DecodeConfig(schema_registry_url="https://sr.example", schema_registry_bearer_token=TOKEN,
                     schema_registry_logical_cluster="lsrc-1")
    assert client_config(d) == {"url": "https://sr.example", "bearer.auth.credentials.source": "STATIC_TOKEN",
                                "bearer.auth.token": TOKEN, "bearer.auth.logical.cluster": "lsrc-1"}


def test_credentials_in_the_url_move_to_the_secret_and_leave_the_url() -> None:
    d = DecodeConfig(schema_registry_url=f"https://{USER}:{PASSWORD}@sr.example:8081/base")
    assert d.schema_registry_url == "https://sr.example:8081/base"
    assert (d.schema_registry_username, d.schema_registry_password.get_secret_value()) == (USER, PASSWORD)
    assert PASSWORD not in repr(d) and PASSWORD not in RegistryLookup.from_config(d).url
    assert strip_userinfo("http://u:p@h:1/x?q=1") == "http://h:1/x?q=1"


@pytest.mark.parametrize(("env", "expected"), [
    ({"CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_USERNAME": USER}, "schema_registry_username and schema_registry_password"),
    ({"CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_USERNAME": USER, "CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_PASSWORD": PASSWORD,
      "CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_BEARER_TOKEN": TOKEN}, "exclude each other"),
    ({"CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_BEARER_TOKEN_FILE": "/nonexistent/t"},
     "schema_registry_bearer_token_file '/nonexistent/t' cannot be read"),
    ({"CAPILLARY_AEP__DECODE__SCHEMA_REGISTRY_CA_FILE": "/nonexistent/ca"}, "schema_registry_ca_file"),
])
def test_bad_registry_auth_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                        expected: str) -> None:
    from test_kafka_security import GOOD

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "decode" in str(info.value) and expected in str(info.value)
    assert PASSWORD not in str(info.value) and TOKEN not in str(info.value)


# -- against the emulator's registry -------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_registry_credentials_are_sent_and_never_printed(tmp_path: Path, mode: str) -> None:
    authorization = BASIC if mode == "basic" else f"Bearer {TOKEN}"
    if mode == "bearer" and not bearer_token_supported():  # refused at start: see the test above
        with pytest.raises(ValidationError, match="schema_registry_bearer_token"):
            DecodeConfig(schema_registry_url="http://127.0.0.1:9", schema_registry_bearer_token=TOKEN,
                         allow_insecure_http=True)
        return
    em = start_emulator(tmp_path, "--registry-authorization", authorization)
    try:
        sid = _register(em.url, authorization)
        creds = ({"schema_registry_username": USER, "schema_registry_password": PASSWORD} if mode == "basic"
                 else {"schema_registry_bearer_token": TOKEN})
        good = DecodeConfig(schema_registry_url=em.url, allow_insecure_http=True, **creds)  # the emulator: http
        assert '"Ping"' in RegistryLookup.from_config(good)(sid)
        result = _registry(good, timeout=5)
        assert result.status == "pass" and f"({mode} auth)" in result.line().replace("bearer token", "bearer auth")
        # Without credentials: 401 stops the process (RegistryUnavailable), it is not an unknown schema.
        with pytest.raises(RegistryUnavailable, match="rejected the credentials"):
            RegistryLookup.from_config(DecodeConfig(schema_registry_url=em.url))(sid)
        # Wrong credentials: the check fails with the status, never the secret (nor the URL's userinfo).
        wrong = DecodeConfig(schema_registry_url=f"http://{USER}:{PASSWORD}x@{em.url.removeprefix('http://')}",
                             allow_insecure_http=True)
        line = _registry(wrong, timeout=5).line()
        assert line.startswith("✗") and "HTTP 401" in line and PASSWORD not in line, line
        with pytest.raises(RegistryUnavailable) as info:
            RegistryLookup.from_config(wrong)(sid)
        assert PASSWORD not in str(info.value) and em.url in str(info.value)
    finally:
        em.proc.stop()


@pytest.mark.integration
def test_registry_over_https_with_ca_trust_and_a_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls, mtls=True)
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        sid = _register(url, verify=ctx)
        full = DecodeConfig(schema_registry_url=url, schema_registry_ca_file=str(tls.ca),
                            schema_registry_cert_file=str(tls.client_cert), schema_registry_key_file=str(tls.client_key))
        assert '"Ping"' in RegistryLookup.from_config(full)(sid)
        assert _registry(full, timeout=5).status == "pass"
        no_cert = DecodeConfig(schema_registry_url=url, schema_registry_ca_file=str(tls.ca))
        assert _registry(no_cert, timeout=5).status == "fail"  # the server requires a client certificate
        no_ca = DecodeConfig(schema_registry_url=url, schema_registry_cert_file=str(tls.client_cert),
                             schema_registry_key_file=str(tls.client_key))
        assert _registry(no_ca, timeout=5).status == "fail"  # trustme's CA is not in certifi
    finally:
        proc.stop()
