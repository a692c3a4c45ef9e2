"""Operability pieces in isolation: the metric catalogue, the health server, log redaction, and the
verdicts of ``capillary-aep check`` that need no broker."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from support import ROOT, free_port

from connector.cli import main
from connector.config import load_settings
from connector.decode.avro_schemas import default_schemas
from connector.decode.decoder import format_of as _format_of
from connector.dev.demo import connector_toml
from connector.dev.emulator import config as em
from connector.dev.produce import SampleEncoder
from connector.pipeline.acknowledge import _event_type_label
from connector.runtime.health import serve_health
from connector.runtime.supervisor import SupervisorMetrics
from connector.telemetry import logs
from connector.telemetry.metrics import Metrics
from connector.tools import check

_BOUNDED_LABELS = {"topic", "partition", "format", "kind", "event_type", "stage", "reason", "endpoint", "status",
                   "outcome", "error", "retriable",
                   "cause",  # cause: record/unknown, why the supervisor restarted a pipeline process
                   # lane: below batch.lanes; state: idle/filling/sending/blocked; batches: in flight,
                   # at most lanes × max_inflight_per_lane
                   "lane", "state", "batches"}


def _families(metrics: Any) -> dict[str, str]:
    """Exported family name → type (counters as their ``_total`` sample name); the connector's own
    (the standard ``process_*`` and ``python_info`` families are prometheus_client's)."""
    out = {}
    for fam in metrics.registry.collect():
        if not fam.name.startswith("capillary_aep_"):
            continue
        name = fam.name + "_total" if fam.type == "counter" else fam.name + "_info" if fam.type == "info" else fam.name
        out[name] = fam.type
    return out


def _all_families() -> dict[str, str]:
    """A replica's: every pipeline process's (Metrics) and the supervisor's own (SupervisorMetrics)."""
    return {**_families(Metrics()), **_families(SupervisorMetrics())}


def test_metric_names_follow_prometheus_conventions_and_labels_are_bounded() -> None:
    fams = _all_families()
    assert fams, "no metrics declared"
    for name, kind in fams.items():
        assert name.startswith("capillary_aep_"), name
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        assert not re.search(r"_(milliseconds|ms|kilobytes|kb)(_|$)", name), f"{name}: use base units"
    for metrics in (Metrics(), SupervisorMetrics()):
        for collector in metrics.registry._collector_to_names:
            if hasattr(collector, "_labelnames"):  # ours (the process/platform collectors have none)
                # "pipeline" is added at scrape time by the supervisor (connector.runtime.link), never declared
                assert set(collector._labelnames) <= _BOUNDED_LABELS - {"pipeline"}, collector._name


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(capillary_aep_[a-z0-9_]+)`", doc, re.M))
    assert table == set(_all_families())


def test_the_process_collectors_and_hour_long_latency_buckets_are_exported() -> None:
    from prometheus_client import generate_latest

    m = Metrics()
    text = generate_latest(m.registry).decode()
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert "python_info" in text and "capillary_aep_input_wait_seconds_total" in text
    m.delivery_latency.observe(3 * 3600)  # three hours behind: a backlog, not "over 300 s"
    text = generate_latest(m.registry).decode()
    assert 'capillary_aep_delivery_latency_seconds_bucket{le="14400.0"} 1.0' in text
    assert 'capillary_aep_delivery_latency_seconds_bucket{le="7200.0"} 0.0' in text


def test_forget_partitions_drops_only_the_revoked_series() -> None:
    m = Metrics(CollectorRegistry())
    for p in (0, 1):
        m.consumer_lag.labels("t", str(p)).set(5)
        m.committed_offset.labels("t", str(p)).set(7)
    m.forget_partitions([("t", 0), ("gone", 3)])  # an unknown partition is not an error
    samples = {(s.name, s.labels["partition"]) for fam in m.registry.collect() for s in fam.samples
               if s.name in ("capillary_aep_consumer_lag", "capillary_aep_committed_offset")}
    assert samples == {("capillary_aep_consumer_lag", "1"), ("capillary_aep_committed_offset", "1")}


def test_format_label_comes_from_the_framing_bytes() -> None:
    assert _format_of(b'{"eventName": "x"}') == "json"
    assert _format_of(b"[{}]") == "json"
    assert _format_of(b"\x00\x00\x00\x00\x01rest") == "avro-registry"
    single = SampleEncoder(default_schemas()).encode(_sample_event(), "avro-single")
    assert single[:2] == b"\xc3\x01" and _format_of(single) == "avro-single"


def _sample_event() -> dict:
    from connector.dev.samples import generate_events

    return generate_events(1, seed=3)[0]


def test_event_type_label_is_bounded() -> None:
    assert _event_type_label("commerce.purchases") == "commerce.purchases"
    assert _event_type_label("profile") == "profile"
    assert _event_type_label("loyalty.someNewEventNobodyKnows") == "other"


# -- health server ------------------------------------------------------------------------------------
@pytest.fixture()
def health() -> Iterator[tuple[str, dict[str, bool]]]:
    state = {"partitions_assigned": False, "loop_running": True}
    registry = CollectorRegistry()
    Metrics(registry).up.set(1)
    server = serve_health(f"127.0.0.1:{free_port()}", registry,
                          lambda: {"loop_running": state["loop_running"]}, lambda: dict(state))
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_healthz_and_readyz_answer_json_verdicts(health: tuple[str, dict[str, bool]]) -> None:
    url, state = health
    live, ready = httpx.get(url + "/healthz"), httpx.get(url + "/readyz")
    assert (live.status_code, live.json()) == (200, {"ok": True, "checks": {"loop_running": True}})
    assert ready.status_code == 503
    assert ready.json() == {"ok": False, "checks": {"partitions_assigned": False, "loop_running": True}}
    state["partitions_assigned"] = True
    assert httpx.get(url + "/readyz").status_code == 200
    state["loop_running"] = False
    assert httpx.get(url + "/healthz").status_code == 503
    metrics = httpx.get(url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain") and "capillary_aep_up 1.0" in metrics.text
    assert httpx.get(url + "/nope").status_code == 404


def test_readyz_says_in_words_why_the_process_is_stopping() -> None:
    registry = CollectorRegistry()
    why = {"text": ""}
    server = serve_health(f"127.0.0.1:{free_port()}", registry, lambda: {"loop_running": True},
                          lambda: {"dead_letter_topic_usable": not why["text"]}, detail=lambda: why["text"])
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(url + "/readyz").json() == {"ok": True, "checks": {"dead_letter_topic_usable": True}}
        why["text"] = "dead-letter topic 'dlq' cannot take letters (TOPIC_AUTHORIZATION_FAILED)"
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and ready.json()["detail"] == why["text"]
        assert "detail" not in httpx.get(url + "/healthz").json()  # liveness stays a plain verdict
    finally:
        server.shutdown()
        server.server_close()


# -- logs ---------------------------------------------------------------------------------------------
@pytest.fixture()
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.register_token("")


def _log_lines(fmt: str, emit: object) -> str:
    buf = io.StringIO()
    real, sys.stderr = sys.stderr, buf
    try:
        logs.setup_logging("INFO", fmt)
    finally:
        sys.stderr = real
    emit()  # type: ignore[operator]
    return buf.getvalue()


def test_logs_are_json_off_a_tty_and_secrets_are_masked_everywhere(root_logging: None) -> None:
    secret, token = "s3cr3t-Value-981", "eyJtoken-Abc-777"
    logs.register_secret(secret)
    logs.register_token(token)
    log = logging.getLogger("ops.test")

    def emit() -> None:
        log.info("secret %s in args", secret, extra={"detail": f"token={token}", "n": 3,
                                                      "nested": {"conf": [{"sasl.password": secret}], "n": 1}})
        try:
            raise ValueError(f"boom {secret}")
        except ValueError:
            log.exception("failed with %s", token)

    out = _log_lines("auto", emit)  # a StringIO is not a TTY: JSON
    assert secret not in out and token not in out
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "ops.test" and first["ts"].endswith("Z")
    assert first["msg"] == "secret ********** in args"
    assert first["detail"] == "token=**********" and first["n"] == 3
    assert first["nested"] == {"conf": [{"sasl.password": "**********"}], "n": 1}
    assert second["msg"] == "failed with **********" and "boom **********" in second["exc"]

    text = _log_lines("text", emit)
    assert "boom **********" in text and secret not in text and token not in text
    assert not text.lstrip().startswith("{")


# -- check verdicts -----------------------------------------------------------------------------------
def test_subscription_verdicts() -> None:
    ok = check._subscription([r"^capillary\.events\..*"], ["capillary.events.a", "other"], "capillary.dlq")
    assert ok.status == "pass" and "1 topic(s)" in ok.detail
    assert check._subscription([r"^capillary\..*"], ["capillary.events.a"], "capillary.dlq").status == "fail"
    assert check._subscription(["a", "b"], ["a"], "dlq").detail == "topic(s) not found: b"
    none = check._subscription([r"^x\..*"], ["capillary.events.a"], "dlq")
    assert none.status == "fail" and "matches no topic" in none.detail


class _Admin:
    """What a broker with ACLs answers the check's describe calls: an error, or the operations the
    principal may do (None: a broker that does not say, as tansu)."""

    def __init__(self, topics: dict[str, object], groups: dict[str, object]) -> None:
        self.topics, self.groups = topics, groups

    @staticmethod
    def _future(answer: object, what: object) -> object:
        from concurrent.futures import Future

        from confluent_kafka import KafkaError, KafkaException

        f: Future = Future()
        if isinstance(answer, int):
            f.set_exception(KafkaException(KafkaError(answer)))
        else:
            from types import SimpleNamespace

            from confluent_kafka import ConsumerGroupState
            from confluent_kafka.admin import AclOperation
            ops = None if answer is None else [AclOperation[o] for o in answer]  # type: ignore[attr-defined]
            f.set_result(SimpleNamespace(authorized_operations=ops, state=ConsumerGroupState.EMPTY, members=[],
                                         name=what))
        return f

    def describe_topics(self, collection, **_: object) -> dict:
        return {t: self._future(self.topics[t], t) for t in collection.topic_names}

    def describe_consumer_groups(self, groups: list[str], **_: object) -> dict:
        return {g: self._future(self.groups[g], g) for g in groups}

    def describe_configs(self, resources: list, **_: object) -> dict:
        from confluent_kafka import KafkaError
        return {r: self._future(KafkaError.CLUSTER_AUTHORIZATION_FAILED, r) for r in resources}


def test_check_names_the_missing_acl_and_the_resource() -> None:
    from types import SimpleNamespace

    from confluent_kafka import KafkaError

    denied, unknown = KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART
    sub = [r"^capillary\.events\..*"]
    passing = check.Result("topics", "pass", "matches")
    admin = _Admin({"capillary.events.a": ["DESCRIBE", "READ"], "capillary.events.b": ["DESCRIBE"]}, {})
    r = check._topic_access(admin, passing, sub, ["capillary.events.a", "capillary.events.b"], 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "no READ on topic(s) capillary.events.b:" in r.detail, r.detail
    admin = _Admin({"capillary.events.a": None}, {})  # the broker does not list operations: describe is enough
    assert check._topic_access(admin, passing, sub, ["capillary.events.a"], 1).status == "pass"  # type: ignore[arg-type]
    # A named topic the principal may not describe is missing from the metadata: the describe says why.
    admin = _Admin({"orders": denied}, {})
    r = check._topic_access(admin, check._subscription(["orders"], [], "dlq"), ["orders"], [], 1)  # type: ignore[arg-type]
    assert "not authorized to describe topic(s) orders (TOPIC_AUTHORIZATION_FAILED)" in r.detail, r.detail

    meta = SimpleNamespace(topics={}, brokers={1: None}, controller_id=1)
    settings = SimpleNamespace(kafka=SimpleNamespace(dlq_topic="capillary.dlq"))
    r = check._dlq(_Admin({"capillary.dlq": denied}, {}), meta, settings, 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "WRITE and DESCRIBE on topic capillary.dlq" in r.detail, r.detail
    r = check._dlq(_Admin({"capillary.dlq": unknown}, {}), meta, settings, 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "dead-letter topic capillary.dlq does not exist" in r.detail, r.detail
    meta.topics = {"capillary.dlq": SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=1)})}
    r = check._dlq(_Admin({"capillary.dlq": ["DESCRIBE", "READ"]}, {}), meta, settings, 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "no WRITE on the dead-letter topic" in r.detail, r.detail
    assert check._dlq(_Admin({"capillary.dlq": ["ALL"]}, {}), meta, settings, 1).status == "pass"  # type: ignore[arg-type]

    r = check._group(_Admin({}, {"g": KafkaError.GROUP_AUTHORIZATION_FAILED}), "g", 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "GROUP_AUTHORIZATION_FAILED" in r.detail and "READ on group g" in r.detail
    r = check._group(_Admin({}, {"g": ["DESCRIBE"]}), "g", 1)  # type: ignore[arg-type]
    assert r.status == "fail" and "no READ on the consumer group" in r.detail
    r = check._group(_Admin({}, {"g": ["DESCRIBE", "READ"]}), "g", 1)  # type: ignore[arg-type]
    assert (r.status, r.detail) == ("pass", "g: empty, 0 member(s)")


def test_check_prints_the_budget_and_one_replicas_share() -> None:
    from types import SimpleNamespace

    def settings(msgs: float, profiles: float) -> object:
        return SimpleNamespace(delivery=SimpleNamespace(max_messages_per_s=msgs, max_profile_messages_per_s=profiles))

    assert check._budget(settings(0, 0), 12).status == "skip"  # type: ignore[arg-type]
    r = check._budget(settings(1200, 300), 12)  # type: ignore[arg-type]
    assert r.status == "pass"
    assert "1200 messages/s for the group" in r.detail and "300 profile records/s" in r.detail
    assert "with 1 of 12 100.0/s" in r.detail


@pytest.mark.parametrize(("status", "body", "verdict", "says"), [
    (400, '{"title": "Bad Request", "report": {"message": "at least one message"}}', "pass", "nothing written"),
    (207, '{"responses": []}', "pass", "credentials accepted"),
    (401, "", "fail", "credentials rejected"),
    (403, "", "fail", "credentials rejected"),
    (404, "", "fail", "inlet not found"),
    (400, '{"report": {"message": "inlet [x] not found"}}', "fail", "inlet not found"),
    (503, "busy", "fail", "unexpected HTTP 503"),
])
def test_inlet_probe_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, body: str,
                              verdict: str, says: str) -> None:
    settings = _settings(tmp_path, monkeypatch)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=body)

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        result = check._inlet(settings, client, "tok", ims_failed=False)
    assert (result.status, says in result.detail) == (verdict, True), result.detail
    assert seen[0].content == b'{"messages":[]}' and seen[0].headers["authorization"] == "Bearer tok"


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(connector_toml(bootstrap="127.0.0.1:1", emulator_url="http://127.0.0.1:1", metrics_port=9400))
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", em.DEMO_CLIENT_SECRET)
    return load_settings(cfg)


def test_check_with_an_invalid_config_names_the_key_and_exits_2(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[aep]\ninlet_id = "x"\norg_id = "nope"\n')
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "another-Secret-55")
    result = CliRunner().invoke(main, ["check", "--config", str(cfg)])
    assert result.exit_code == 2
    assert result.output.startswith("✗ config")
    assert "aep.org_id" in result.output and "xdm: Field required" in result.output
    assert "another-Secret-55" not in result.output
    assert "1 of 1 checks failed." in result.output


def test_check_reports_an_environment_value_that_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(connector_toml(bootstrap="127.0.0.1:1", emulator_url="http://127.0.0.1:1", metrics_port=9400))
    monkeypatch.setenv("CAPILLARY_AEP__KAFKA__TOPICS", r'["^a\."]')  # \. is not a JSON escape
    result = CliRunner().invoke(main, ["check", "--config", str(cfg)])
    assert result.exit_code == 2 and result.output.startswith("✗ config")
    assert "CAPILLARY_AEP__KAFKA__TOPICS: expected JSON" in result.output  # the variable, not only its section


def test_every_exit_code_is_documented_in_the_readme() -> None:
    from connector.errors import ExitCode

    text = (ROOT / "README.md").read_text()
    start = text.index("**Exit codes**")
    paragraph = text[start:text.index("\n\n", start)]
    for code in ExitCode:
        if code is not ExitCode.OK:
            assert re.search(rf"(?<![\d.]){int(code)} [a-zA-Z]", paragraph), code


def test_the_runtime_never_imports_the_development_tooling() -> None:
    """connector.dev (demo, samples, producer, emulator) and its dependencies stay out of the
    processes users run: the connector, the ingress, check, transform, dlq replay and provision."""
    import subprocess
    import sys

    code = ("import sys, connector.runtime.app, connector.cli, connector.ingest.app, connector.pipeline.loop, "
            "connector.tools.check, connector.tools.replay, connector.tools.dryrun, connector.provision.plan, "
            "connector.runtime.supervisor, connector.runtime.link\n"
            "print(sorted(m for m in sys.modules if m.startswith('connector.dev') or m.split('.')[0] == 'jsonschema'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_message_counters_keep_their_former_record_names_as_deprecated_aliases() -> None:
    """messages_*_total count XDM messages (~1.5 per record); the records_*_total names they had are
    exposed one more release with the same samples (docs/operations.md#deprecated-metric-names)."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics(CollectorRegistry())
    m.records_delivered.labels("event", "pointsIssued").inc(3)
    m.records_delivered.labels("profile", "customerAdded").inc(2)
    m.records_transformed.labels("event", "pointsIssued").inc(4)
    from prometheus_client import generate_latest

    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    for kind in ("delivered", "transformed"):
        new, old = fams[f"capillary_aep_messages_{kind}"], fams[f"capillary_aep_records_{kind}"]
        samples = sorted((s.labels["kind"], s.labels["event_type"], s.value) for s in new.samples
                         if s.name.endswith("_total"))
        assert samples and samples == sorted((s.labels["kind"], s.labels["event_type"], s.value)
                                             for s in old.samples)
        assert old.type == "counter" and old.documentation.startswith("Deprecated:")
