"""Operability on real processes: /healthz and /readyz semantics, per-format decode counts, and
`capillary-aep check` against the broker and the emulator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import dlq_topic, new_group, start_connector
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, python_module, wait_until

from connector.dev.demo import connector_toml
from connector.dev.emulator import config as em
from connector.dev.produce import ensure_topics, produce_events
from connector.dev.samples import generate_events

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, dict]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return r.status_code, r.json()


def test_readyz_follows_assignment_and_inlet_health_while_healthz_stays_up(
        broker, emulator, prefix, tmp_path: Path) -> None:
    emulator.faults(status=503)  # the inlet fails from the first request
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                        env={"CAPILLARY_AEP__DELIVERY__UNHEALTHY_AFTER_S": "1"})
    port = c.metrics_port
    # No topic matches the subscription yet: alive, holding a token, not ready.
    doc = wait_until(lambda: (d := _get(port, "/readyz")[1])["checks"]["token_valid"] and d, 20, what="a token")
    assert doc["ok"] is False and doc["checks"]["partitions_assigned"] is False
    assert doc["checks"]["credentials_accepted"] is True and _get(port, "/readyz")[0] == 503
    assert _get(port, "/healthz") == (200, {"ok": True, "checks": {"loop_running": True}})

    events = generate_events(30, seed=21)
    produce_events(broker, events, "json", topic_prefix=prefix)
    # Assigned, but the inlet has failed for longer than unhealthy_after_s.
    doc = wait_until(lambda: (d := _get(port, "/readyz")[1])["checks"]["partitions_assigned"]
                     and not d["checks"]["inlet_healthy"] and d, 30, what="assigned and inlet unhealthy")
    assert doc["ok"] is False and _get(port, "/readyz")[0] == 503
    assert _get(port, "/healthz")[0] == 200  # a failing inlet is not a reason to restart
    assert c.metric("capillary_aep_records_acknowledged_total") == 0

    emulator.clear_faults()
    c.wait_acknowledged(len(events))
    wait_until(lambda: _get(port, "/readyz")[0] == 200, 20, what="ready again")
    assert c.stop() == 0


def test_readyz_reports_rejected_credentials(broker, emulator, prefix, tmp_path: Path) -> None:
    produce_events(broker, generate_events(5, seed=22), "json", topic_prefix=prefix)
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                        env={"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "not-the-Secret-31"})
    status, doc = wait_until(lambda: (r := _get(c.metrics_port, "/readyz"))[1]["checks"]["partitions_assigned"]
                             and r, 30, what="assignment")
    assert status == 503
    assert doc["checks"]["credentials_accepted"] is False and doc["checks"]["token_valid"] is False
    assert _get(c.metrics_port, "/healthz")[0] == 200
    assert c.metric("capillary_aep_auth_failed") >= 1  # one per pipeline process
    assert c.metric("capillary_aep_paused_partitions") == c.metric("capillary_aep_assigned_partitions") > 0
    assert c.stop() == 0
    assert "not-the-Secret-31" not in c.proc.log_text()


def test_decoded_records_are_counted_per_topic_and_format(broker, emulator, prefix, tmp_path: Path) -> None:
    by_format = {"json": generate_events(12, seed=23), "avro-single": generate_events(9, seed=24),
                 "avro-registry": generate_events(7, seed=25)}
    for encoding, events in by_format.items():
        produce_events(broker, events, encoding, registry_url=emulator.url, topic_prefix=prefix)
    total = sum(len(e) for e in by_format.values())
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group())
    c.wait_acknowledged(total)
    text = httpx.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
    assert c.stop() == 0
    decoded: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "capillary_aep_records_decoded_total":
                assert s.labels["topic"].startswith(prefix)
                decoded[s.labels["format"]] = decoded.get(s.labels["format"], 0) + s.value
    assert decoded == {fmt: len(events) for fmt, events in by_format.items()}


# -- capillary-aep check ------------------------------------------------------------------------------
def _check(tmp_path: Path, broker: str, emulator_url: str, prefix: str, timeout: float = 5,
           **env: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "check.toml"
    cfg.write_text(connector_toml(bootstrap=broker, emulator_url=emulator_url, metrics_port=free_port()))
    full = {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET,
            "CAPILLARY_AEP__KAFKA__TOPICS": json.dumps(["^" + prefix.replace(".", r"\.") + ".*"]),
            "CAPILLARY_AEP__KAFKA__DLQ_TOPIC": dlq_topic(prefix), **env}
    return subprocess.run(python_module("connector", "check", "--config", str(cfg), "--timeout", str(timeout)), env=full,
                          capture_output=True, text=True, timeout=60)


def _verdicts(out: str) -> dict[str, str]:
    return {line.split()[1]: line[0] for line in out.splitlines() if line[:1] in "✓✗–"}


def test_check_passes_against_broker_and_emulator_and_writes_nothing(broker, emulator, prefix,
                                                                     tmp_path: Path) -> None:
    produce_events(broker, generate_events(6, seed=26), "json", topic_prefix=prefix)
    ensure_topics(broker, [dlq_topic(prefix)], partitions=1)
    r = _check(tmp_path, broker, emulator.url, prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _verdicts(r.stdout) == {**dict.fromkeys(["config", "kafka", "topics", "dlq", "group", "registry", "ims",
                                                    "inlet"], "✓"), "budget": "–"}  # no send budget configured
    assert "All 9 checks passed." in r.stdout and "nothing written" in r.stdout
    assert em.DEMO_CLIENT_SECRET not in r.stdout + r.stderr and "**********" in r.stdout
    stats = emulator.stats()
    assert stats["messages_accepted"] == 0 and sum(emulator.ids().values()) == 0


def test_check_fails_on_a_wrong_secret_without_printing_it(broker, emulator, prefix, tmp_path: Path) -> None:
    produce_events(broker, generate_events(3, seed=27), "json", topic_prefix=prefix)
    ensure_topics(broker, [dlq_topic(prefix)], partitions=1)
    secret = "wrong-Secret-4242"
    r = _check(tmp_path, broker, emulator.url, prefix, CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET=secret)
    assert r.returncode == 1
    verdicts = _verdicts(r.stdout)
    assert verdicts["ims"] == "✗" and verdicts["inlet"] == "–" and verdicts["kafka"] == "✓"
    assert "401" in r.stdout and "1 of 9 checks failed." in r.stdout
    assert secret not in r.stdout + r.stderr


def test_check_reports_an_unknown_inlet_and_an_unreachable_broker(emulator, prefix, tmp_path: Path) -> None:
    r = _check(tmp_path, f"127.0.0.1:{free_port()}", emulator.url, prefix, timeout=2,
               CAPILLARY_AEP__AEP__INLET_ID="f" * 64)
    assert r.returncode == 1
    verdicts = _verdicts(r.stdout)
    assert (verdicts["kafka"], verdicts["topics"], verdicts["dlq"], verdicts["group"]) == ("✗", "–", "–", "–")
    assert (verdicts["registry"], verdicts["ims"], verdicts["inlet"]) == ("✓", "✓", "✗")
    assert "inlet not found (HTTP 404)" in r.stdout
    assert r.stderr == ""  # librdkafka's connection errors stay out of the report


def test_check_fails_before_the_first_record_when_the_dead_letter_topic_is_missing(broker, emulator, prefix,
                                                                                  tmp_path: Path) -> None:
    """Managed Kafka creates no topic on first use: the first dead letter would stop the connector
    (exit 6), so check reports the missing topic by name (tansu does not say it auto-creates)."""
    produce_events(broker, generate_events(3, seed=28), "json", topic_prefix=prefix)
    r = _check(tmp_path, broker, emulator.url, prefix)
    assert r.returncode == 1, r.stdout + r.stderr
    verdicts = _verdicts(r.stdout)
    assert verdicts["dlq"] == "✗" and verdicts["topics"] == "✓" and verdicts["group"] == "✓", r.stdout
    dlq_line = next(line for line in r.stdout.splitlines() if line.split()[1:2] == ["dlq"])
    assert f"dead-letter topic {dlq_topic(prefix)} does not exist" in dlq_line
    assert "1 of 9 checks failed." in r.stdout
