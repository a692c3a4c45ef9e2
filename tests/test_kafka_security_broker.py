"""SASL against the embedded broker (tansu 0.6 ``broker --authentication``).

Measured: tansu speaks SCRAM-SHA-256 and SCRAM-SHA-512 only (PLAIN and OAUTHBEARER end in
``NoSharedMechanism``). Its users are created through AlterUserScramCredentials, which itself needs an
authenticated connection once ``--authentication`` is on, and its storage here is memory-only, so no
user can exist: a login can only be refused. What these tests prove is that our settings drive a real
SCRAM exchange with the broker (it answers ``unknown-user``, which needs the client's SCRAM
first message) and that the password shows nowhere: not in ``check``'s output, nor in librdkafka's
errors. A successful SASL login is covered by the property mapping (test_kafka_security.py) only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from support import ManagedProcess, broker_binary, free_port, port_open, python_module, wait_until

from connector.dev.demo import connector_toml
from connector.kafka.security import KafkaSecurityConfig, security_properties

pytestmark = pytest.mark.integration
PASSWORD = "Scram-Pa55-never-printed"


@pytest.fixture()
def auth_broker(tmp_path: Path) -> Iterator[tuple[str, ManagedProcess]]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = ManagedProcess([broker_binary(), "broker", "--authentication", "--listener-url", url,
                           "--advertised-listener-url", url], log_path=tmp_path / "auth-broker.log",
                          stop_signal=signal.SIGINT)
    wait_until(lambda: port_open(port), timeout=20, what="broker port")
    yield f"127.0.0.1:{port}", proc
    proc.stop()


def _first_error(bootstrap: str, sec: KafkaSecurityConfig) -> str:
    got = threading.Event()
    errors: list[str] = []

    def on_error(err: object) -> None:
        errors.append(err.str())  # type: ignore[attr-defined]
        got.set()

    p = Producer({"bootstrap.servers": bootstrap, **security_properties(sec), "error_cb": on_error,
                  "log_level": 0})
    deadline = 20.0
    while not got.is_set() and deadline > 0:
        p.poll(0.2)  # error callbacks are served from poll()
        deadline -= 0.2
    return " | ".join(errors)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_reaches_the_broker_and_the_password_stays_out_of_errors(auth_broker, mechanism: str) -> None:
    bootstrap, _ = auth_broker
    sec = KafkaSecurityConfig.model_validate({"protocol": "SASL_PLAINTEXT", "sasl": {
        "mechanism": mechanism, "username": "svc-capillary", "password": PASSWORD}})
    error = _first_error(bootstrap, sec)
    assert "SASL SCRAM authentication failed" in error and "unknown-user" in error, error
    assert PASSWORD not in error


def test_plaintext_client_is_refused_by_an_authenticating_broker(auth_broker) -> None:
    bootstrap, _ = auth_broker
    error = _first_error(bootstrap, KafkaSecurityConfig())
    assert "SCRAM" not in error and error  # no SASL attempted: the control case of the test above


def test_check_names_the_sasl_failure_without_the_password(auth_broker, tmp_path: Path) -> None:
    bootstrap, _ = auth_broker
    pw = tmp_path / "kafka-password"
    pw.write_text(PASSWORD)
    cfg = tmp_path / "check.toml"
    cfg.write_text(connector_toml(bootstrap=bootstrap, emulator_url="http://127.0.0.1:9", metrics_port=free_port(),
                                  authenticated=False)
                   + f"\n[kafka.security]\nprotocol = 'SASL_PLAINTEXT'\n[kafka.security.sasl]\n"
                     f"mechanism = 'SCRAM-SHA-512'\nusername = 'svc-capillary'\npassword_file = '{pw}'\n")
    r = subprocess.run(python_module("connector", "check", "--config", str(cfg), "--timeout", "3"),
                       env={**os.environ}, capture_output=True, text=True, timeout=60)
    kafka_line = next(line for line in r.stdout.splitlines() if line.split()[1:2] == ["kafka"])
    assert kafka_line.startswith("✗") and "(SASL_PLAINTEXT)" in kafka_line, r.stdout
    assert "SASL SCRAM authentication failed" in kafka_line, r.stdout
    assert PASSWORD not in r.stdout + r.stderr


def test_a_connector_refused_by_the_broker_leaks_the_password_nowhere(auth_broker, emulator, prefix,
                                                                     tmp_path: Path) -> None:
    """The running connector with SCRAM settings: the refusal is in its log; the password is in
    neither its log, its metrics nor its health answers."""
    import httpx
    from harness import new_group, start_connector

    bootstrap, _ = auth_broker
    c = start_connector(tmp_path, bootstrap=bootstrap, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                        extra="[kafka.security]\nprotocol = 'SASL_PLAINTEXT'\n[kafka.security.sasl]\n"
                              "mechanism = 'SCRAM-SHA-256'\nusername = 'svc-capillary'\n",
                        env={"CAPILLARY_AEP__KAFKA__SECURITY__SASL__PASSWORD": PASSWORD})
    try:
        wait_until(lambda: "SASL SCRAM authentication failed" in c.proc.log_text(), 30, what="the SASL refusal logged")
        base = f"http://127.0.0.1:{c.metrics_port}"
        answers = [httpx.get(base + path, timeout=5).text for path in ("/metrics", "/healthz", "/readyz")]
        assert c.proc.alive()  # a refused login is retried, not fatal
    finally:
        c.stop()
    assert PASSWORD not in c.proc.log_text() and all(PASSWORD not in a for a in answers)
