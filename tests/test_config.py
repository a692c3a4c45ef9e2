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
