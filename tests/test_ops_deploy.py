"""The deployment files agree with the code: compose commands parse with the CLI, the compose
connector config matches the emulator, dashboards and rules refer to scraped jobs and documented
alerts. (Syntax is checked by .ci/checks with promtool and docker-compose.)"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import click
import pytest
import yaml
from support import ROOT

from connector.cli import main
from connector.config import load_settings
from connector.dev.emulator import config as em
from connector.dev.emulator.__main__ import parser as emulator_parser

DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alert_rules() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        doc = json.loads(path.read_text())
        exprs += [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    return exprs


def grafana_expand(expr: str) -> str:
    """A dashboard query as Grafana sends it with every variable at "All"."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$(job|instance|topic|ingest_job)\b", ".*", expr)


def rule_exprs() -> list[str]:
    return [r["expr"] for r in _rules()]


def test_compose_uses_the_official_images_and_builds_the_rest_from_the_dockerfile() -> None:
    services = _compose()["services"]
    images = {name: s.get("image", "") for name, s in services.items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["schema-registry"].startswith("confluentinc/cp-schema-registry:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    for name in ("connector", "emulator", "producer", "ingest"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile", name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_every_compose_service_runs_without_privileges_and_ours_on_a_read_only_root() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", ()), name
        assert not svc.get("privileged"), name
        if "build" in svc:  # our image: nothing writes outside /tmp
            assert svc.get("read_only") is True and any(t.startswith("/tmp") for t in svc["tmpfs"]), name
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])  # no remote reload/quit


def _locked(name: str) -> dict[str, str]:
    """``{package: version}`` of a lock file in requirements/ (each pin followed by its hashes)."""
    pins = {}
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            package, _, rest = line.partition("==")
            pins[package.lower()] = rest.split()[0].rstrip(";")
    return pins


def test_the_images_install_only_locked_hashed_dependencies_and_the_default_has_no_emulator() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all(("--require-hashes" in line and "-r requirements/" in line) or "--no-deps" in line
                            for line in installs)
    stages = re.findall(r"^FROM \S+ AS (\S+)", dockerfile, flags=re.M)
    assert stages[-1] == "runtime"  # what `docker build .` gives: no emulator
    assert "build-runtime" in re.search(r"FROM base AS runtime\n(.*)", dockerfile, flags=re.S).group(1)
    runtime, dev = _locked("runtime"), _locked("image-dev")
    assert "jsonschema" not in runtime and "jsonschema" in dev  # the emulator's extra
    assert "aws-msk-iam-sasl-signer-python" in runtime  # the README's MSK IAM example works in the image
    assert _compose()["x-capillary-image"]["build"]["target"] == "dev"  # the stack runs the emulator
    for lock in ("runtime", "image-dev", "dev"):
        text = (ROOT / "requirements" / f"{lock}.txt").read_text()
        pins = [line for line in text.splitlines() if "==" in line and not line.startswith((" ", "#"))]
        assert pins and all(line.rstrip().endswith("\\") for line in pins), f"{lock}: a pin without hashes"


def test_lower_bounds_are_past_the_known_advisories() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("starlette>=0.47.2") for d in deps)
    assert any(d.startswith("h11>=0.16") for d in deps)


def test_compose_connector_scales_and_every_dependency_waits_on_a_condition() -> None:
    services = _compose()["services"]
    connector = services["connector"]
    assert "container_name" not in connector and "ports" not in connector  # --scale would collide
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)
            assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"
    long_running = set(services) - {"producer"}
    assert all("healthcheck" in services[s] for s in long_running)


def test_compose_commands_parse_with_the_cli() -> None:
    services = _compose()["services"]
    for name in ("connector", "producer"):
        args = [str(a).replace("${SAMPLE_EVENTS:-2000}", "2000") for a in services[name]["command"]]
        command = main.commands[args[0]]
        with click.Context(main) as ctx:
            command.make_context(args[0], args[1:], parent=ctx)  # raises on an unknown option
    emulator = services["emulator"]["command"]
    assert emulator[0] == "emulator"
    ns = emulator_parser().parse_args(emulator[1:])
    assert (ns.host, ns.port) == ("0.0.0.0", 8080)
    ingest = services["ingest"]
    assert ingest["command"][0] == "ingest"
    if "ingest" not in main.commands:
        pytest.skip("`capillary-aep ingest` is not in this checkout yet")


def test_compose_connector_config_targets_the_emulator_and_exposes_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()["services"]["connector"]
    mount = next(v for v in compose["volumes"] if v.startswith("./deploy/connector.compose.toml:"))
    target = mount.split(":")[1]
    assert target in compose["command"]
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "x")
    s = load_settings(DEPLOY / "connector.compose.toml")
    assert (s.aep.inlet_id, s.aep.org_id, s.aep.ims.client_id) == (em.DEMO_INLET_ID, em.DEMO_ORG_ID,
                                                                   em.DEMO_CLIENT_ID)
    assert (s.xdm.event.dataset_id, s.xdm.event.schema_id) == (em.DEMO_EVENT_DATASET_ID, em.DEMO_EVENT_SCHEMA_ID)
    assert s.xdm.profile is not None
    assert (s.xdm.profile.dataset_id, s.xdm.profile.schema_id) == (em.DEMO_PROFILE_DATASET_ID,
                                                                   em.DEMO_PROFILE_SCHEMA_ID)
    assert s.aep.dcs_url == s.aep.ims.url == "http://emulator:8080"
    assert s.kafka.bootstrap_servers == "kafka:9092"
    assert s.metrics.listen == "0.0.0.0:9400"
    assert not re.match(s.kafka.topics[0], s.kafka.dlq_topic)  # never consume the dead letters back
    assert compose["environment"]["CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET"].startswith("${")  # from the env


def test_compose_connector_runs_a_set_number_of_pipeline_processes_within_its_grace_period() -> None:
    """The containers have no CPU limit, so "auto" would count the host: the file sets a number, and
    the stack's topics have enough partitions for them."""
    from connector.config import DeliveryConfig
    from connector.runtime.supervisor import STOP_MARGIN_S

    processing = tomllib.loads((DEPLOY / "connector.compose.toml").read_text())["processing"]
    assert isinstance(processing["processes"], int) and "workers" not in processing
    partitions = int(_compose()["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"])
    assert processing["processes"] <= partitions
    grace = _compose()["services"]["connector"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > DeliveryConfig().drain_timeout_s + 5 + STOP_MARGIN_S


def test_scrape_jobs_cover_every_job_the_rules_and_dashboard_name() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    named = set(re.findall(r'job=~?"([^"$]+)"', "\n".join(rule_exprs() + dashboard_exprs())))  # $job: a variable
    for value in named:
        assert any(re.fullmatch(value, job) for job in jobs), value
    services = _compose()["services"]
    listen = tomllib.loads((DEPLOY / "connector.compose.toml").read_text())["metrics"]["listen"]
    port = int(listen.rpartition(":")[2])
    assert jobs["capillary-aep"]["dns_sd_configs"][0] == {"names": ["connector"], "type": "A", "port": port,
                                                          "refresh_interval": "15s"}
    assert jobs["capillary-aep-ingest"]["dns_sd_configs"][0]["port"] == 9401  # its metrics listener
    assert services["ingest"]["environment"]["CAPILLARY_AEP__INGEST__LISTEN"].endswith(":8090")
    assert services["ingest"]["environment"]["CAPILLARY_AEP__INGEST__METRICS_LISTEN"].endswith(":9401")
    assert not any("9401" in str(p) for p in services["ingest"].get("ports", []))  # never published
    assert "alerts.yml" in prom["rule_files"]


def test_grafana_provisioning_matches_the_dashboard_datasource() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    doc = json.loads((DEPLOY / "grafana" / "dashboards" / "capillary-aep.json").read_text())
    assert ds["datasources"][0]["isDefault"] is True  # the dashboard's datasource variable starts on it
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in (uid, "${datasource}"), panel["title"]
    grafana = _compose()["services"]["grafana"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "capillary-aep.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana["volumes"]


def test_dashboard_shows_what_operators_ask_for() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (kind, event_type) (rate(capillary_aep_messages_delivered_total",  # throughput by event type
        "histogram_quantile(0.5, sum by (le) (rate(capillary_aep_delivery_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(capillary_aep_delivery_latency_seconds_bucket",
        "capillary_aep_consumer_lag",
        "sum by (stage, reason) (rate(capillary_aep_records_dead_lettered_total",  # DLQ by reason
        "sum by (endpoint, status) (rate(capillary_aep_http_requests_total",  # status mix
        "sum by (reason) (rate(capillary_aep_retries_total",
        "capillary_aep_inflight_batches",
    ):
        assert needle in exprs, needle


def test_no_rule_or_dashboard_query_uses_a_metric_of_the_former_transform_workers() -> None:
    """They went with the worker pool (one process per pipeline): docs/operations.md#deprecated-metric-names."""
    removed = ("capillary_aep_transform_workers", "capillary_aep_worker_restarts_total",
               "capillary_aep_worker_busy_seconds_total", "capillary_aep_partition_moves_total",
               "capillary_aep_worker_resident_memory_bytes")
    exprs = "\n".join(rule_exprs() + dashboard_exprs())
    assert [name for name in removed if name in exprs] == []
    assert "process_resident_memory_bytes{pipeline!=\"supervisor\"}" in next(
        r["annotations"]["description"] for r in _alert_rules() if r["alert"] == "CapillaryAepPipelineRestarts")


def test_every_alert_has_a_runbook_section_and_a_severity() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", doc, re.M))
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["alert"] in headings, rule["alert"]
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"


def test_every_alert_has_a_description_with_a_first_action() -> None:
    for rule in _alert_rules():
        description = rule["annotations"].get("description", "")
        assert len(description) > 40 and "{{" not in description, rule["alert"]  # constant: promtool tests pin it


def test_the_consumer_group_is_named_once_in_a_recording_rule() -> None:
    """Users set the group (kafka.group_id) in one place: the recording rule every broker-lag rule
    and the dashboard read."""
    naming = [r for r in _rules() if "consumergroup=" in r["expr"]]
    assert [r.get("record") for r in naming] == ["capillary_aep:kafka_consumergroup_lag:sum_by_topic"]
    assert 'consumergroup="capillary-aep-connector"' in naming[0]["expr"]
    readers = [r["alert"] for r in _alert_rules() if "capillary_aep:kafka_consumergroup_lag:sum_by_topic" in r["expr"]]
    assert set(readers) == {"CapillaryAepConnectorAbsent", "CapillaryAepBrokerLagGrowing"}
    rules = [r.get("record") or r.get("alert") for r in _rules()]
    assert rules[0] == naming[0]["record"]  # evaluated before the alerts of its group that read it


def test_runbook_base_is_documented_where_it_is_set() -> None:
    prom = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "runbook_base" in prom  # an example beside external_labels
    assert "`runbook_base`" in (ROOT / "docs" / "operations.md").read_text()


def test_every_alert_has_a_runbook_url_and_a_promtool_case_that_fires() -> None:
    base = '{{ or $externalLabels.runbook_base "docs" }}'
    fired: set[str] = set()
    for path in sorted((DEPLOY / "prometheus" / "tests").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        assert "../alerts.yml" in doc["rule_files"], path
        for case in doc["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    for rule in _alert_rules():
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"{base}/operations.md#{anchor}", rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} has no promtool test in which it fires"


def test_alertmanager_routes_every_severity_of_the_rules_and_compose_wires_it() -> None:
    am = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in am["receivers"]}
    routed = {}
    for route in am["route"]["routes"]:
        (matcher,) = route["matchers"]
        name, _, value = matcher.partition("=")
        assert name == "severity", matcher
        routed[value.strip('"')] = route["receiver"]
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in routed, rule["alert"]
    assert am["route"]["receiver"] in receivers and set(routed.values()) <= set(receivers)
    for receiver in receivers.values():  # the example receivers are webhooks to the stack's logger
        assert all(w["url"].startswith("http://alert-receiver:9099/") for w in receiver["webhook_configs"])
    services = _compose()["services"]
    assert "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in \
        services["alertmanager"]["volumes"]
    assert any("webhook_receiver.py" in v for v in services["alert-receiver"]["volumes"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["kafka-exporter"]["static_configs"][0]["targets"] == ["kafka-exporter:9308"]


def test_compose_publishes_on_loopback_and_has_no_default_secrets() -> None:
    services = _compose()["services"]
    published = [(name, str(p)) for name, s in services.items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert port.startswith("${CAPILLARY_AEP_BIND:-127.0.0.1}:"), (name, port)  # loopback unless told
    ingest_token = services["ingest"]["environment"]["CAPILLARY_AEP__INGEST__AUTH_TOKEN"]
    grafana_password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    for value in (ingest_token, grafana_password):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), value  # required: compose refuses without it
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and "PASSWORD:-" not in text and "TOKEN:-" not in text


def test_compose_gives_the_ingress_more_grace_than_its_shutdown_bound() -> None:
    from connector.ingest.config import IngestConfig

    cfg = IngestConfig(auth_mode="none")
    bound_s = (int(cfg.produce_timeout_s) + 2) + cfg.produce_timeout_s  # answers in flight, then the flush
    grace = _compose()["services"]["ingest"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > bound_s, (grace, bound_s)


@pytest.mark.integration
def test_example_webhook_receiver_logs_each_alert_with_its_runbook(tmp_path: Any) -> None:
    import httpx
    from support import ManagedProcess, free_port, port_open, wait_until

    port = free_port()
    proc = ManagedProcess(["python3", str(DEPLOY / "alertmanager" / "webhook_receiver.py"), str(port)],
                          log_path=tmp_path / "receiver.log")
    try:
        wait_until(lambda: port_open(port), 10, what="the receiver")
        note = {"version": "4", "status": "firing", "receiver": "critical", "alerts": [
            {"status": "firing", "labels": {"alertname": "CapillaryAepIngestBrokerDown", "severity": "critical"},
             "annotations": {"summary": "Webhook ingress i1 cannot deliver to Kafka",
                             "runbook_url": "docs/operations.md#capillaryaepingestbrokerdown"}}]}
        assert httpx.post(f"http://127.0.0.1:{port}/critical", json=note, timeout=5).status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/warning", content=b"not json", timeout=5).status_code == 200
        wait_until(lambda: "not an Alertmanager notification" in proc.log_text(), 10, what="both logged")
        assert ("[critical] firing critical CapillaryAepIngestBrokerDown: Webhook ingress i1 cannot deliver to "
                "Kafka (docs/operations.md#capillaryaepingestbrokerdown)") in proc.log_text()
    finally:
        proc.stop()
