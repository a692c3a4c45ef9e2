"""deploy/kubernetes agrees with the code: the rendered example overlay's configs load, every secret
is a file from the mounted Secret, the grace period covers the drain bound, readiness cannot stall a
rollout, a CPU per pipeline process, and KEDA scales on the connector's own consumer group and topics
without more members than partitions. (Schemas of built-in
kinds: `kubernetes-validate` in .ci/checks.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT
from tls_support import make_tls_files

from connector.config import DeliveryConfig, Settings, load_settings
from connector.ingest.config import IngestSettings
from connector.kafka.topics import all_topics
from connector.runtime.supervisor import STOP_MARGIN_S

SECRETS_DIR = "/var/run/secrets/capillary/"
# Partitions of each topic as docs/going-live.md creates them: KEDA's maxReplicaCount follows from it.
EXAMPLE_PARTITIONS = 12
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/kubernetes/overlays/example")],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def _files(toml: str) -> list[str]:
    return re.findall(r'^\s*\w*_file\s*=\s*"([^"]+)"', toml, flags=re.M)


def _load(tmp_path: Path, toml: str, cls: type) -> Any:
    """Load a config whose secret and CA files live in the cluster: stand-ins on disk here."""
    tls = make_tls_files(tmp_path / "tls")
    for path in set(_files(toml)) | set(re.findall(r'^ca_file = "([^"]+)"', toml, flags=re.M)):
        stand_in = tmp_path / Path(path).name
        stand_in.write_text(tls.ca.read_text() if path.endswith((".crt", ".pem")) else "stand-in-secret-of-32-characters-or-more")
        toml = toml.replace(path, str(stand_in))
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    return load_settings(cfg, cls)


def test_the_example_configs_load_and_take_every_secret_from_the_mounted_secret(rendered, tmp_path: Path) -> None:
    data = _one(rendered, "ConfigMap", "capillary-aep-config")["data"]
    for name, cls in (("connector.toml", Settings), ("ingest.toml", IngestSettings)):
        toml = data[name]
        assert not re.search(r"(password|secret|token)\s*=", toml), f"{name}: a secret in the ConfigMap"
        secret_files = [p for p in _files(toml) if not p.endswith(".crt")]
        assert secret_files and all(p.startswith(SECRETS_DIR) for p in secret_files), secret_files
        _load(tmp_path / name, toml, cls)
    for deployment in ("capillary-aep-connector", "capillary-aep-ingest"):
        spec = _one(rendered, "Deployment", deployment)["spec"]["template"]["spec"]
        secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
        mounts = {m["mountPath"].rstrip("/") + "/" for c in spec["containers"] for m in c["volumeMounts"]
                  if m["name"] in secret_volumes}
        assert mounts == {SECRETS_DIR}


CONFIG_OF = {"capillary-aep-connector": "connector.toml", "capillary-aep-ingest": "ingest.toml"}


def _secret_files(rendered: list[dict[str, Any]], deployment: str) -> tuple[str, set[str]]:
    """(the Secret a Deployment mounts, the files it mounts of it)."""
    spec = _one(rendered, "Deployment", deployment)["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    (mount,) = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
    secret = volume["secret"]
    assert "items" in secret, f"{deployment} mounts every key of {secret['secretName']}"
    return secret["secretName"], {mount["mountPath"].rstrip("/") + "/" + i["path"] for i in secret["items"]}


def test_each_pod_mounts_only_the_secret_keys_its_configuration_reads(rendered) -> None:
    data = _one(rendered, "ConfigMap", "capillary-aep-config")["data"]
    names = {}
    for deployment, config in CONFIG_OF.items():
        name, mounted = _secret_files(rendered, deployment)
        names[deployment] = name
        read = {p for p in _files(data[config]) if p.startswith(SECRETS_DIR)}
        assert mounted == read, f"{deployment}: mounts {sorted(mounted)}, its config reads {sorted(read)}"
    assert len(set(names.values())) == len(names)  # no Secret shared between the workloads
    _, ingress_files = _secret_files(rendered, "capillary-aep-ingest")
    assert not any(f.endswith(("ims-client-secret", "schema-registry-password")) for f in ingress_files)
    users = {d: tomllib.loads(data[c])["kafka"].get("security", {}).get("sasl", {}).get("username")
             for d, c in CONFIG_OF.items()}
    assert users["capillary-aep-ingest"] != users["capillary-aep-connector"]  # a produce-only identity
    keda = _one(rendered, "TriggerAuthentication", "capillary-aep-kafka")["spec"]["secretTargetRef"]
    assert {ref["name"] for ref in keda}.isdisjoint(names.values())


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_a_network_policy_limits_every_workload(rendered) -> None:
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    for deployment in CONFIG_OF:
        pod = _one(rendered, "Deployment", deployment)["spec"]["template"]
        ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
        (policy,) = [p for p in policies if _selects(p["spec"]["podSelector"], pod["metadata"]["labels"])]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        allowed_in = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert allowed_in == ports  # every port the pod listens on, and only those, from named sources
        assert all(rule.get("from") for rule in policy["spec"]["ingress"])
        egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert 53 in egress and 9092 in egress
        if deployment == "capillary-aep-ingest":
            assert 443 not in egress  # the internet-facing ingress never calls AEP


def test_every_service_monitor_scrapes_the_port_the_config_serves_metrics_on(rendered) -> None:
    data = _one(rendered, "ConfigMap", "capillary-aep-config")["data"]
    listens = {"capillary-aep-connector": tomllib.loads(data["connector.toml"])["metrics"]["listen"],
               "capillary-aep-ingest": tomllib.loads(data["ingest.toml"])["ingest"]["metrics_listen"]}
    for deployment, listen in listens.items():
        monitor = _one(rendered, "ServiceMonitor", deployment)["spec"]
        (service,) = [d for d in rendered if d["kind"] == "Service"
                      and _selects(monitor["selector"], d["metadata"]["labels"])]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == monitor["endpoints"][0]["port"]]
        pod = _one(rendered, "Deployment", deployment)["spec"]["template"]["spec"]
        by_name = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c["ports"]}
        assert by_name[port["targetPort"]] == int(listen.rsplit(":", 1)[1]), (deployment, listen)
        assert not listen.startswith("127."), f"{deployment}: metrics on loopback cannot be scraped"


def test_connector_stop_fits_the_grace_period_and_readiness_does_not_gate_on_partitions(rendered) -> None:
    spec = _one(rendered, "Deployment", "capillary-aep-connector")["spec"]["template"]["spec"]
    # Each pipeline process drains, then closes its consumer (≤ 5 s); the supervisor kills one still
    # there STOP_MARGIN_S later.
    drain_bound = DeliveryConfig().drain_timeout_s + 5 + STOP_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] > drain_bound
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"  # /readyz would stall rollouts
    env = {e["name"]: e for e in container["env"]}
    assert env["CAPILLARY_AEP__KAFKA__GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def _processes(rendered: list[dict[str, Any]]) -> int:
    data = _one(rendered, "ConfigMap", "capillary-aep-config")["data"]
    processes = tomllib.loads(data["connector.toml"])["processing"]["processes"]
    assert isinstance(processes, int), "set processing.processes explicitly beside the CPU request"
    return processes


def test_one_cpu_per_pipeline_process_and_memory_from_the_measured_pss(rendered) -> None:
    spec = _one(rendered, "Deployment", "capillary-aep-connector")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    resources = container["resources"]
    processes = _processes(rendered)
    assert int(resources["requests"]["cpu"]) == processes
    assert int(resources["limits"]["cpu"]) >= processes  # "auto" would give at least as many
    # Measured (docs/benchmarks.md): a 1,000,000-event drain peaked at 250 MB PSS with 2 processes
    # and 173-176 MB with 1 — the supervisor ~36 MB, ~70 MB per process, ~70 MB of buffered records
    # at the default bounds (the replica's, split among its processes).
    measured_mb = 36 + 70 * processes + 70
    request, limit = (int(resources[k]["memory"].removesuffix("Mi")) for k in ("requests", "limits"))
    assert (processes, request, limit) == (2, 320, 512)
    assert measured_mb * 1.3 < request < limit


def test_keda_never_runs_more_consumer_group_members_than_partitions(rendered) -> None:
    scaled = _one(rendered, "ScaledObject", "capillary-aep-connector")["spec"]
    assert scaled["maxReplicaCount"] * _processes(rendered) <= EXAMPLE_PARTITIONS
    assert scaled["maxReplicaCount"] == EXAMPLE_PARTITIONS // _processes(rendered)  # and uses them all


def test_keda_scales_on_the_connectors_group_and_every_default_topic(rendered, tmp_path: Path) -> None:
    data = _one(rendered, "ConfigMap", "capillary-aep-config")["data"]
    kafka = tomllib.loads(data["connector.toml"])["kafka"]
    scaled = _one(rendered, "ScaledObject", "capillary-aep-connector")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "capillary-aep-connector" and scaled["minReplicaCount"] == 0
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {kafka["group_id"]}
    assert {t["metadata"]["bootstrapServers"] for t in triggers} == {kafka["bootstrap_servers"]}
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(all_topics())
    assert {t["metadata"]["offsetResetPolicy"] for t in triggers} == {"earliest"}  # the config's default
    auth = _one(rendered, "TriggerAuthentication", "capillary-aep-kafka")["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} >= {"sasl", "username", "password", "tls"}
    assert {t["authenticationRef"]["name"] for t in triggers} == {"capillary-aep-kafka"}


def test_pdbs_and_service_monitors_select_the_pods(rendered) -> None:
    for name in ("capillary-aep-connector", "capillary-aep-ingest"):
        pod_labels = _one(rendered, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        selector = _one(rendered, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        monitor = _one(rendered, "ServiceMonitor", name)["spec"]
        service = next(d for d in rendered if d["kind"] == "Service"
                       and monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items())
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
