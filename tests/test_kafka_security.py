"""``kafka.security``: config → librdkafka properties for every Kafka client, validation that names
the key, and the secrets (SASL password, OIDC client secret, key password) kept out of repr(),
error messages and logs. SASL against the embedded broker: tests/test_kafka_security_broker.py."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from connector.config import ConfigError, KafkaConfig, load_settings
from connector.ingest.config import IngestSettings
from connector.kafka import security as kafka_security
from connector.kafka.security import KafkaSecurityConfig, security_properties
from connector.kafka.source import consumer_config, producer_config
from connector.telemetry.logs import JsonFormatter, _RedactFilter, register_settings_secrets

PASSWORD = "Sasl-Pa55word-do-not-print"
GOOD = """
[aep]
inlet_id = "inlet"
org_id = "ORG@AdobeOrg"
authentication_required = false
[xdm.event]
dataset_id = "ds"
schema_id = "https://ns.adobe.com/t/schemas/e"
"""
SCRAM = """
[kafka.security]
protocol = "SASL_SSL"
[kafka.security.sasl]
mechanism = "SCRAM-SHA-512"
username = "svc-capillary"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def _sec(**kw: Any) -> KafkaSecurityConfig:
    return KafkaSecurityConfig.model_validate(kw)


def test_plaintext_by_default_and_nothing_else() -> None:
    assert security_properties(KafkaSecurityConfig()) == {"security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_with_a_password_maps_to_librdkafka(tmp_path: Path, mechanism: str) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    sec = _sec(protocol="SASL_SSL", ca_file=str(ca),
               sasl={"mechanism": mechanism, "username": "u", "password": PASSWORD})
    assert security_properties(sec) == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": mechanism, "sasl.username": "u", "sasl.password": PASSWORD}


def test_mutual_tls_and_no_hostname_check(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
    sec = _sec(protocol="SSL", cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"),
               key_password="kp-secret", verify_hostname=False)
    assert security_properties(sec) == {
        "security.protocol": "SSL", "ssl.certificate.location": str(tmp_path / "cert.pem"),
        "ssl.key.location": str(tmp_path / "key.pem"), "ssl.key.password": "kp-secret",
        "ssl.endpoint.identification.algorithm": "none"}


def test_oauthbearer_oidc_uses_librdkafkas_own_client_credentials() -> None:
    sec = _sec(protocol="SASL_SSL", sasl={
        "mechanism": "OAUTHBEARER", "token_endpoint_url": "https://idp.example/oauth2/token", "client_id": "cid",
        "client_secret": "oidc-secret", "scope": "kafka", "extensions": "logicalCluster=lkc-1,identityPoolId=pool-2"})
    assert security_properties(sec) == {
        "security.protocol": "SASL_SSL", "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
        "sasl.oauthbearer.client.id": "cid", "sasl.oauthbearer.client.secret": "oidc-secret",
        "sasl.oauthbearer.scope": "kafka", "sasl.oauthbearer.extensions": "logicalCluster=lkc-1,identityPoolId=pool-2"}


def test_msk_iam_token_callback_signs_lazily_with_the_aws_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Provider:
        @staticmethod
        def generate_auth_token(region: str) -> tuple[str, int]:
            calls.append(region)
            return "signed-token", 1_800_000_000_000

    fake = types.ModuleType("aws_msk_iam_sasl_signer")
    fake.MSKAuthTokenProvider = Provider  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", fake)
    monkeypatch.setattr(kafka_security.importlib.util, "find_spec", lambda name: object())
    sec = _sec(protocol="SASL_SSL", sasl={"mechanism": "OAUTHBEARER", "oauthbearer_method": "aws_msk_iam",
                                          "aws_region": "eu-west-1"})
    conf = security_properties(sec)
    assert conf["sasl.mechanism"] == "OAUTHBEARER" and "sasl.oauthbearer.method" not in conf
    assert calls == []  # nothing signed (nor imported) until librdkafka asks
    assert conf["oauth_cb"](None) == ("signed-token", 1_800_000_000.0)
    assert calls == ["eu-west-1"]


def test_msk_iam_without_the_aws_extra_fails_at_start_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_security.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the `aws` extra"):
        _sec(protocol="SASL_SSL", sasl={"mechanism": "OAUTHBEARER", "oauthbearer_method": "aws_msk_iam",
                                        "aws_region": "eu-west-1"})


@pytest.mark.parametrize(("toml", "expected"), [
    (SCRAM, "kafka.security: Value error, sasl.password is required for SCRAM-SHA-512"),
    ("[kafka.security]\nprotocol = 'SASL_SSL'\n[kafka.security.sasl]\nmechanism = 'OAUTHBEARER'\n",
     "OAUTHBEARER (oidc) needs sasl.token_endpoint_url, sasl.client_id, sasl.client_secret"),
    ("[kafka.security]\nprotocol = 'PLAINTEXT'\n[kafka.security.sasl]\nusername = 'u'\n",
     "sasl settings need protocol SASL_PLAINTEXT or SASL_SSL"),
    ("[kafka.security]\nprotocol = 'SSL'\nca_file = '/nonexistent/ca.pem'\n", "ca_file '/nonexistent/ca.pem' is not a"),
    ("[kafka.security]\nprotocol = 'SASL_PLAINTEXT'\nca_file = '/etc/hostname'\n", "ca_file needs protocol SSL"),
    ("[kafka.security]\nprotocol = 'TLS'\n", "kafka.security.protocol"),
    ("[kafka.security.sasl]\nmechanism = 'GSSAPI'\n", "kafka.security.sasl.mechanism"),
    ("[kafka]\nextra = { 'sasl.password' = 'in-clear' }\n", "kafka.extra: sasl.password is a secret"),
    # librdkafka's verdict at load, not a traceback at the first client of `run`:
    ("[kafka]\nextra = { 'fetch.max.bytez' = 5 }\n", 'kafka.extra: librdkafka refuses it: No such configuration '
                                                     'property: "fetch.max.bytez"'),
    ("[kafka]\nextra = { 'fetch.max.bytes' = 'lots' }\n", "kafka.extra: librdkafka refuses it: Invalid value"),
])
def test_bad_security_config_names_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, GOOD + toml))
    assert expected.replace("Value error, ", "") in str(info.value)
    assert "in-clear" not in str(info.value)


@pytest.mark.parametrize("prop", [
    "sasl.password", "sasl.oauthbearer.client.secret", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
    "sasl.oauthbearer.config", "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem", "sasl.kerberos.keytab",
    "sasl.oauthbearer.some.future.secret", "ssl.engine.key.password",  # not listed: refused by name
])
def test_every_secret_librdkafka_property_is_refused_in_extra_without_echoing_it(
        tmp_path: Path, prop: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, GOOD + f"[kafka]\nextra = {{ '{prop}' = 'in-clear-value' }}\n"))
    assert f"kafka.extra: {prop} is a secret" in str(info.value)
    assert "in-clear-value" not in str(info.value) + repr(info.value) + caplog.text


def test_public_material_and_ordinary_properties_stay_allowed_in_extra(tmp_path: Path) -> None:
    extra = "{ 'ssl.certificate.pem' = 'PEM', 'ssl.ca.pem' = 'PEM', 'fetch.min.bytes' = 1 }"
    settings = load_settings(_write(tmp_path, GOOD + f"[kafka]\nextra = {extra}\n"))
    assert set(settings.kafka.extra) == {"ssl.certificate.pem", "ssl.ca.pem", "fetch.min.bytes"}


def test_password_file_and_env_and_the_secret_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "kafka-password"
    pw.write_text(PASSWORD + "\n")
    s = load_settings(_write(tmp_path, GOOD + SCRAM + f"password_file = '{pw}'\n"))
    assert security_properties(s.kafka.security)["sasl.password"] == PASSWORD
    assert PASSWORD not in repr(s) and PASSWORD not in str(s) and PASSWORD not in repr(s.kafka)
    assert "**********" in repr(s.kafka.security.sasl)
    monkeypatch.setenv("CAPILLARY_AEP__KAFKA__SECURITY__SASL__PASSWORD", PASSWORD)
    s = load_settings(_write(tmp_path, GOOD + SCRAM))
    assert security_properties(s.kafka.security)["sasl.password"] == PASSWORD
    # An error elsewhere in the same file: the message names that key, never the password.
    monkeypatch.setenv("CAPILLARY_AEP__BATCH__LANES", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, GOOD + SCRAM))
    assert "batch.lanes" in str(info.value) and PASSWORD not in str(info.value)


def test_an_unreadable_password_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="password_file '/nonexistent/pw' cannot be read"):
        load_settings(_write(tmp_path, GOOD + SCRAM + "password_file = '/nonexistent/pw'\n"))


def test_every_kafka_client_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = KafkaConfig.model_validate({
        "security": {"protocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-256", "username": "u",
                                                       "password": PASSWORD}},
        "extra": {"socket.keepalive.enable": True, "fetch.min.bytes": 1}})
    wanted = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "u",
              "sasl.password": PASSWORD}
    consumer, producer = consumer_config(cfg), producer_config(cfg)
    ingest = IngestSettings.model_validate({"kafka": cfg.model_dump(), "ingest": {"auth_mode": "none"}})
    # model_dump() turns SecretStr into the mask; give the ingress the real config object.
    ingest = ingest.model_copy(update={"kafka": cfg})
    for conf in (consumer, producer, ingest.producer_config()):
        assert wanted.items() <= conf.items()
    assert producer["socket.keepalive.enable"] is True and "fetch.min.bytes" not in producer

    # dlq replay's consumer (it used to drop kafka.extra and could not reach a secured cluster).
    from connector.tools import replay as replay_mod

    seen: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    class FakeConsumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            seen.append(conf)

        def poll(self, _t: float) -> None:
            raise Stop

        def close(self) -> None:
            pass

    monkeypatch.setattr(replay_mod, "Consumer", FakeConsumer)
    settings = types.SimpleNamespace(kafka=cfg)
    with pytest.raises(Stop):
        replay_mod.replay(settings, replay_mod.ReplayFilter(frozenset(), frozenset(), None, None))
    assert wanted.items() <= seen[0].items() and seen[0]["socket.keepalive.enable"] is True


def test_registered_kafka_secrets_are_masked_in_log_lines(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, GOOD + SCRAM + f"password = '{PASSWORD}'\n"))
    register_settings_secrets(s)
    record = logging.LogRecord("connector", logging.ERROR, __file__, 1, "librdkafka said %s", (f"x {PASSWORD} y",),
                               None)
    _RedactFilter().filter(record)
    line = JsonFormatter().format(record)
    assert PASSWORD not in line and "**********" in line


def test_loading_settings_registers_the_ims_secret_for_every_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # dlq replay --direct, check and provision load settings the same way: none may log the IMS secret.
    ims_secret = "ims-Secret-Value-4242"
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", ims_secret)
    s = load_settings(_write(tmp_path, GOOD))
    register_settings_secrets(s)
    record = logging.LogRecord("connector", logging.ERROR, __file__, 1, "IMS said %s", (f"bad {ims_secret}",), None)
    assert ims_secret not in JsonFormatter().format(record)


def test_dead_letter_headers_mask_a_registered_secret(tmp_path: Path) -> None:
    from connector.kafka.dlq import DeadLetter

    s = load_settings(_write(tmp_path, GOOD + SCRAM + f"password = '{PASSWORD}'\n"))
    register_settings_secrets(s)
    letter = DeadLetter("t", 0, 1, None, b"{}", None, "decode", "X", "corrupt", detail=f"echoed {PASSWORD}",
                        aep_message=f"AEP echoed {PASSWORD}")
    headers = b"".join(v for _, v in letter.kafka_headers())
    assert PASSWORD.encode() not in headers and b"**********" in headers

