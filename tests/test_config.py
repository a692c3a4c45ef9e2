"""Malformed configuration fails at start, naming the key and the reason; secrets stay masked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import python_module

from connector.config import ConfigError, load_settings

GOOD = """
[aep]
inlet_id = "inlet"
org_id = "ORG@AdobeOrg"
[aep.ims]
client_id = "cid"
[xdm.event]
dataset_id = "ds"
schema_id = "https://ns.adobe.com/t/schemas/e"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_valid_file_with_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("CAPILLARY_AEP__BATCH__LANES", "3")
    s = load_settings(write(tmp_path, GOOD))
    assert s.batch.lanes == 3
    assert s.aep.batch_url == "https://dcs.adobedc.net/collection/batch/inlet"
    assert "s3cr3t-value" not in repr(s)


@pytest.mark.parametrize(("text", "env", "expected"), [
    (GOOD, {}, "aep: ims.client_secret is required"),
    (GOOD.replace("ORG@AdobeOrg", "not-an-org"), {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "x"}, "aep.org_id"),
    (GOOD, {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "x", "CAPILLARY_AEP__BATCH__MAX_BYTES": "2000000"},
     "batch.max_bytes: Input should be less than or equal to 1048576"),
    (GOOD + "[kafka]\ndlq_topic = 'capillary.events.dlq'\n", {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "x"},
     "is matched by the subscription"),
    (GOOD + "[kafka]\nbogus = 1\n", {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "x"}, "kafka.bogus: Extra inputs"),
    ("[aep\n", {}, "is not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                  env: dict[str, str], expected: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert expected in str(info.value)


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    s = load_settings(write(tmp_path, GOOD.replace('client_id = "cid"', f'client_id = "cid"\nclient_secret_file = "{secret}"')))
    assert s.aep.ims.client_secret.get_secret_value() == "from-a-file"


def test_run_exits_2_with_the_reason_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(python_module("connector", "run", "--config", str(write(tmp_path, GOOD))),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ims.client_secret is required" in proc.stderr and "Traceback" not in proc.stderr


# -- credentials never travel over plain http unless the operator opted in (a local emulator) --------

@pytest.mark.parametrize(("table", "line", "key"), [
    ("[aep]\n", 'dcs_url = "http://aep.internal"\n', "aep: dcs_url 'http://aep.internal' is plain http"),
    ("[aep.ims]\n", 'url = "http://ims.internal"\n', "aep: ims.url 'http://ims.internal' is plain http"),
    ("[decode]\n", 'schema_registry_url = "http://u:p4ss@sr.internal"\n',
     "decode: schema_registry_url 'http://sr.internal' is plain http"),
])
def test_credentials_over_plain_http_fail_the_start_naming_the_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, line: str, key: str) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    text = GOOD.replace(table, table + line) if table in GOOD else GOOD + table + line
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in str(info.value) and "allow_insecure_http = true" in str(info.value)
    assert "s3cr3t-value" not in str(info.value) and "p4ss" not in str(info.value)


def test_plain_http_is_allowed_when_opted_in_or_when_nothing_secret_travels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    opted_in = GOOD.replace("[aep]\n", '[aep]\ndcs_url = "http://127.0.0.1:8080"\nallow_insecure_http = true\n')
    assert load_settings(write(tmp_path, opted_in)).aep.dcs_url == "http://127.0.0.1:8080"
    anonymous = GOOD.replace("[aep]\n", '[aep]\ndcs_url = "http://127.0.0.1:8080"\nauthentication_required = false\n')
    assert load_settings(write(tmp_path, anonymous)).aep.batch_url.startswith("http://")
    registry = GOOD + '[decode]\nschema_registry_url = "http://sr.internal"\n'  # no credentials: fine
    assert load_settings(write(tmp_path, registry)).decode.schema_registry_url == "http://sr.internal"


def test_provision_refuses_a_plain_http_platform_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.config import ProvisionSettings

    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    text = GOOD.replace("[aep]\n", '[aep]\nsandbox = "dev"\nplatform_url = "http://platform.internal"\n')
    with pytest.raises(ConfigError, match="platform_url 'http://platform.internal' is plain http"):
        load_settings(write(tmp_path, text), ProvisionSettings)


def test_a_placeholder_id_fails_the_start_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    text = GOOD.replace('inlet_id = "inlet"', 'inlet_id = "<64-hex inletId from Flow Service>"')
    text = text.replace('dataset_id = "ds"', 'dataset_id = "<ExperienceEvent dataset id>"')
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert "aep.inlet_id" in str(info.value) and "xdm.event.dataset_id" in str(info.value)


@pytest.mark.parametrize(("change", "expected"), [
    (('sandbox = "dev"', 'sandbx = "dev"'), "unknown key(s) sandbx"),  # a typo no longer means prod
    (('sandbox = "dev"\n', ''), "aep.sandbox"),  # required: provisioning the wrong sandbox is not undone
    (('[xdm.event]', '[xdmm]\nx = 1\n[xdm.event]'), "unknown table(s) xdmm"),
])
def test_provision_refuses_unknown_keys_and_needs_the_sandbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], expected: str) -> None:
    from connector.config import ProvisionSettings

    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    good = GOOD.replace("[aep]\n", '[aep]\nsandbox = "dev"\n')
    assert load_settings(write(tmp_path, good), ProvisionSettings).aep.sandbox == "dev"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, good.replace(*change)), ProvisionSettings)


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("CAPILLARY_AEP__KAFKA__TOPICS", "capillary.events.points",
     """CAPILLARY_AEP__KAFKA__TOPICS: expected JSON, e.g. CAPILLARY_AEP__KAFKA__TOPICS='["a", "b"]'"""),
    ("CAPILLARY_AEP__BATCH__LANES", "many", "batch.lanes: Input should be a valid integer"),
])
def test_a_bad_environment_override_names_the_variable_and_the_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert expected in str(info.value) and variable in str(info.value)
    assert "s3cr3t-value" not in str(info.value)


def test_the_images_metrics_default_answers_on_every_interface_and_a_file_still_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support import ROOT

    from connector.config import MetricsConfig

    assert MetricsConfig().listen == "127.0.0.1:9400"  # a laptop: loopback
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "CAPILLARY_AEP_METRICS_DEFAULT=0.0.0.0:9400" in dockerfile and "EXPOSE 9400" in dockerfile
    monkeypatch.setenv("CAPILLARY_AEP_METRICS_DEFAULT", "0.0.0.0:9400")
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "s3cr3t-value")
    assert load_settings(write(tmp_path, GOOD)).metrics.listen == "0.0.0.0:9400"
    text = GOOD + '[metrics]\nlisten = "127.0.0.1:9555"\n'
    assert load_settings(write(tmp_path, text)).metrics.listen == "127.0.0.1:9555"  # a default, not an override
