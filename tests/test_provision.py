"""Day one in AEP: ``xdm export`` produces valid XDM, ``provision`` sets up the (emulated) sandbox
once and only once, and the connector configured from its output delivers to a strict inlet."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_emulator
from harness import assert_exactly_once, expected_ids, new_group, start_connector
from jsonschema import FormatChecker
from jsonschema.validators import Draft7Validator, Draft202012Validator
from support import ManagedProcess, python_module, wait_until
from tls_support import ConnectProxy, make_tls_files, start_https_emulator

from connector.config import ImsConfig
from connector.dev.emulator import config as em
from connector.dev.produce import produce_events
from connector.dev.samples import generate_events, sample_xdm_config
from connector.provision import artifacts as art
from connector.provision import checks
from connector.provision.checks import Mismatch
from connector.provision.export import export
from connector.provision.plan import WARM_UP, Provisioner, Request, as_dict
from connector.provision.platform import Platform, PlatformError
from connector.transform import Transformer, TransformError
from connector.transform.events import SPECS
from connector.transform.tenant import close

ROOT = Path(__file__).resolve().parent.parent
XDM_ROOT = ROOT / "vendor" / "adobe-xdm"
REQUEST = Request("capillary", "CapillaryCustomerId", "CapillaryExternalId", "LoyaltyCardNumber")


def _build_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_xdm_schemas", ROOT / "scripts" / "build_xdm_schemas.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("export")
    export(directory, "capillary", "CapillaryCustomerId", "CapillaryExternalId", "LoyaltyCardNumber")
    return {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}


def test_the_export_is_valid_xdm_referencing_only_existing_field_groups(exported: dict[str, Any]) -> None:
    official = _build_script().Resolver(XDM_ROOT).docs
    titles = {doc["title"] for name, doc in exported.items() if name.startswith("fieldgroup-")}
    for name in ("fieldgroup-event.json", "fieldgroup-profile.json", "schema-event.json", "schema-profile.json"):
        Draft7Validator.check_schema(exported[name])
    for kind in art.KINDS:
        group = exported[f"fieldgroup-{kind}.json"]
        assert group["meta:intendedToExtend"] == [art.COMPOSITIONS[kind][0]]
        assert list(group["definitions"]["capillary"]["properties"]) == ["_capillary"]  # all under the tenant
        refs = [part["$ref"] for part in exported[f"schema-{kind}.json"]["allOf"]]
        standard, tenant_ref = refs[:-1], refs[-1]
        assert all(ref in official for ref in standard), [r for r in standard if r not in official]
        assert tenant_ref == art.placeholder(group["title"]) and group["title"] in titles
    assert {n["code"] for n in exported["namespaces.json"]} == {"CapillaryCustomerId", "CapillaryExternalId",
                                                                "LoyaltyCardNumber"}


def _composed(exported: dict[str, Any], kind: str) -> Any:
    """The exported schema resolved against the official XDM files plus its exported tenant group."""
    build = _build_script()
    resolver = build.Resolver(XDM_ROOT)
    schema: dict[str, Any] = {}
    for ref in [p["$ref"] for p in exported[f"schema-{kind}.json"]["allOf"]][:-1]:
        schema = build.merge(schema, resolver.resolve(resolver.document(ref), ref))
    schema = build.close(schema)
    group = exported[f"fieldgroup-{kind}.json"]
    schema["properties"]["_capillary"] = close(group["definitions"]["capillary"]["properties"]["_capillary"])
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_every_sample_validates_against_the_exported_schemas(exported: dict[str, Any]) -> None:
    validators = {"event": _composed(exported, "event"), "profile": _composed(exported, "profile")}
    transformer = Transformer(sample_xdm_config(), org_id="EXAMPLE0RG@AdobeOrg", source_name="test")
    names: set[str] = set()
    for raw in generate_events(3000, seed=5):
        try:
            messages = transformer.transform(raw)
        except TransformError:
            continue
        for m in messages:
            errors = [e.message for e in validators[m.kind].iter_errors(m.envelope["body"]["xdmEntity"])]
            assert errors == [], (m.event_name, m.kind, errors[:3])
            names.add(m.event_name)
    assert len(names) == 24


def test_an_undeclared_tenant_field_fails_the_exported_schema(exported: dict[str, Any]) -> None:
    validator = _composed(exported, "event")
    entity = {"_id": "a", "timestamp": "2024-01-01T00:00:00Z", "eventType": "x",
              "_capillary": {"capillary": {"eventName": "x", "notDeclared": 1}}}
    assert any("notDeclared" in e.message for e in validator.iter_errors(entity))


# -- provision against the emulator ------------------------------------------------------------------

def _platform(url: str, secret: str = em.DEMO_CLIENT_SECRET) -> Platform:
    return Platform(url, em.DEMO_ORG_ID, "prod", ImsConfig(url=url, client_id=em.DEMO_CLIENT_ID,
                                                            client_secret=secret))


def _provision(url: str, dry_run: bool = False, prefix: str = "Capillary loyalty") -> Any:
    platform = _platform(url)
    try:
        return Provisioner(platform, replace(REQUEST, names=art.Names(prefix)), dry_run=dry_run).run()
    finally:
        platform.close()


def _steps(result: Any) -> list[tuple[str, str]]:
    return [(s.what, s.name) for s in result.steps]


@pytest.mark.parametrize("page_size", ["20", "1"])
def test_provision_creates_everything_once_and_a_second_run_nothing(tmp_path: Path, page_size: str) -> None:
    """With pages of 1 every lookup after the first object pages (Schema Registry, Catalog, Flow
    Service): a client reading only the first page would create everything again (409) on the second run."""
    emulator = start_emulator(tmp_path, "--strict", "--page-size", page_size)
    try:
        planned = _provision(emulator.url, dry_run=True)  # an empty sandbox: every list ends "next": null
        assert {s.action for s in planned.steps} == {"would create", "would update"}
        assert emulator.http.get("/__emulator/platform").json()["creates"] == 0  # a dry run changes nothing

        first = _provision(emulator.url)
        assert _steps(planned) == _steps(first)  # the dry run listed every step
        inventory = emulator.http.get("/__emulator/platform").json()
        assert inventory["creates"] == len(first.created) == 17
        # Both schemas join the union before their datasets are tagged for Profile.
        assert inventory["schemas"] == {"Capillary loyalty events": ["union"], "Capillary loyalty profiles": ["union"]}
        assert len(inventory["flows"]) == 2 and len(inventory["datasets"]) == 2
        assert first.inlet_id and first.inlet_url.endswith(first.inlet_id)
        assert first.notes == [WARM_UP]

        second = _provision(emulator.url)
        assert second.created == [] and {s.action for s in second.steps} == {"exists"}
        assert as_dict(second) == as_dict(first) and second.notes == []
        assert emulator.http.get("/__emulator/platform").json()["creates"] == 17
    finally:
        emulator.proc.stop()


def test_an_empty_list_ending_with_next_null_is_not_an_error(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    try:
        assert emulator.http.get("/data/foundation/schemaregistry/tenant/fieldgroups", headers=_headers(emulator.url)
                                 ).json()["_links"] == {"next": None}
        platform = _platform(emulator.url)
        assert platform.find_field_group("nothing") is None and platform.find_schema("nothing") is None
        assert platform.find_dataset("nothing") is None and platform.find_flow("nothing") is None
        platform.close()
    finally:
        emulator.proc.stop()


def _headers(url: str) -> dict[str, str]:
    token = httpx.post(f"{url}/ims/token/v3", data={"grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
                                                   "client_secret": em.DEMO_CLIENT_SECRET}).json()["access_token"]
    return {"Authorization": f"Bearer {token}", "x-api-key": em.DEMO_CLIENT_ID, "x-gw-ims-org-id": em.DEMO_ORG_ID}


# -- reuse only what matches ---------------------------------------------------------------------------

def _mismatch(url: str, prefix: str, *expected: str) -> None:
    with pytest.raises(Mismatch) as info:
        _provision(url, prefix=prefix)
    text = str(info.value)
    assert all(e in text for e in expected), text
    with pytest.raises(Mismatch):  # a dry run looks and checks too
        _provision(url, dry_run=True, prefix=prefix)


def test_objects_found_by_name_are_reused_only_when_they_match(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    http = httpx.Client(base_url=emulator.url, headers=_headers(emulator.url), timeout=10)
    fs = "/data/foundation/flowservice"
    try:
        # A dataset under provision's name on another schema.
        other = http.post("/data/foundation/schemaregistry/tenant/schemas", json={
            "title": "someone else's", "type": "object", "allOf": [{"$ref": art.EVENT_CLASS}]}).json()["$id"]
        http.post("/data/foundation/catalog/dataSets", json={
            "name": "A events", "schemaRef": {"id": other, "contentType": art.XED_FULL}}).raise_for_status()
        _mismatch(emulator.url, "A", "existing dataset 'A events'", f"schemaRef is '{other}'")

        # An unauthenticated HTTP API connection, and a connection of Adobe's Capillary source.
        http.post(f"{fs}/connections", json=art.connection(art.Names("B"), authenticated=False)).raise_for_status()
        _mismatch(emulator.url, "B", "existing streaming connection 'B streaming'",
                  "authenticationRequired is False, expected True")
        capillary = {**art.connection(art.Names("C")), "connectionSpec": {"id": "6360f136-5980-4111-8bdf-15d29eab3b5a",
                                                                          "version": "1.0"}}
        http.post(f"{fs}/connections", json=capillary).raise_for_status()
        _mismatch(emulator.url, "C", "connection spec is '6360f136-5980-4111-8bdf-15d29eab3b5a'")

        # A disabled dataflow.
        flow_id = _provision(emulator.url, prefix="D").flow_ids["profile"]
        http.post(f"{fs}/flows/{flow_id}/action", params={"op": "disable"}).raise_for_status()
        _mismatch(emulator.url, "D", "existing dataflow 'D profiles dataflow'", "state is 'disabled'")
    finally:
        http.close()
        emulator.proc.stop()


def test_a_dataflow_created_but_not_enabled_is_an_error(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    platform = _platform(emulator.url)
    platform.get_flow = lambda flow_id: {"id": flow_id, "state": "failed"}  # type: ignore[method-assign] # AEP's answer
    try:
        with pytest.raises(Mismatch, match="created, but its state is 'failed', not 'enabled'"):
            Provisioner(platform, REQUEST).run()
    finally:
        platform.close()
        emulator.proc.stop()


def test_what_differs_is_named_for_every_kind_of_object() -> None:
    tags = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
    ds = {"schemaRef": {"id": "s"}, "tags": {"unifiedIdentity": ["enabled:true"]}}
    assert checks.dataset(ds, "s", tags) == ["tag unifiedProfile lacks ['enabled:true']"]
    assert checks.schema({"meta:class": art.PROFILE_CLASS, "allOf": [{"$ref": art.PROFILE_CLASS}]},
                         art.EVENT_CLASS, "g") == [f"class is '{art.PROFILE_CLASS}', expected '{art.EVENT_CLASS}'",
                                                   "does not include the field group g"]
    raw = art.connection()
    raw["auth"]["params"].update(dataType="raw", inletId="i")
    assert checks.connection(raw, True) == ["dataType is 'raw', expected 'xdm'"]
    assert checks.source_connection({**art.source_connection("b"), "state": "enabled"}, "other") == [
        "baseConnectionId is 'b', expected 'other'"]
    assert checks.target_connection(art.target_connection("event", "s", "d"), "s", "d2") == [
        "dataSetId is 'd', expected 'd2'"]
    flow = {**art.flow("event", "s", "t"), "state": "enabled"}
    assert checks.flow(flow, "s", "t") == [] and checks.flow({**flow, "flowSpec": {"id": "x"}}, "s", "t2") == [
        f"flow spec is 'x', expected {art.HTTP_API_FLOW_SPEC}", "targetConnectionIds is ['t'], expected ['t2']"]


def test_the_strict_inlet_rejects_a_field_the_provisioned_schema_lacks(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path, "--strict")
    try:
        ids = as_dict(_provision(emulator.url))
        transformer = Transformer(sample_xdm_config(), org_id=em.DEMO_ORG_ID, source_name="test")
        [envelope, *_] = next(m for m in map(_try(transformer), generate_events(50, seed=2)) if m)
        header = envelope.envelope["header"]
        header.update(datasetId=ids["dataset_ids"]["event"], flowId=ids["flow_ids"]["event"])
        header["schemaRef"] = envelope.envelope["body"]["xdmMeta"]["schemaRef"] = {
            "id": ids["schema_ids"]["event"], "contentType": art.XED_FULL}
        good = envelope.envelope
        bad = json.loads(json.dumps(good))
        bad["body"]["xdmEntity"]["_capillary"]["capillary"]["notInTheSchema"] = "x"
        token = httpx.post(f"{emulator.url}/ims/token/v3", data={
            "grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
            "client_secret": em.DEMO_CLIENT_SECRET, "scope": "openid"}).json()["access_token"]
        r = httpx.post(f"{emulator.url}/collection/batch/{ids['inlet_id']}", json={"messages": [good, bad]},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 207
        good_answer, bad_answer = r.json()["responses"]
        assert "xactionId" in good_answer and "statusCode" not in good_answer
        assert bad_answer["statusCode"] == 400 and "notInTheSchema" in bad_answer["message"]
    finally:
        emulator.proc.stop()


def _try(transformer: Transformer) -> Any:
    def run(raw: dict[str, Any]) -> Any:
        try:
            return transformer.transform(raw)
        except TransformError:
            return None
    return run


def test_the_connector_configured_from_provision_delivers_to_the_strict_inlet(broker, prefix, tmp_path) -> None:
    emulator = start_emulator(tmp_path, "--strict")
    try:
        provisioned = as_dict(_provision(emulator.url))
        # As many events as the independent strict run that found a coalesced record with 24
        # identities: every one of the 24 types, JSON and Avro (both framings).
        events = generate_events(3400, seed=13)
        assert {e["eventName"] for e in events} >= set(SPECS)
        produce_events(broker, events, "mixed", registry_url=emulator.url, topic_prefix=prefix)
        c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                            provisioned=provisioned)
        c.wait_acknowledged(len(events))
        want = expected_ids(events)
        wait_until(lambda: sum(emulator.ids().values()) >= sum(want.values()), 30, what="all messages at the inlet")
        assert c.stop() == 0
        stats = emulator.stats()
        assert stats["messages_rejected"] == 0, stats.get("rejections_by_reason")
        assert stats["profile_records_skipped"] == {}  # Identity Service's guardrails hold after coalescing
        assert c.metric("capillary_aep_records_dead_lettered_total") == 0
        assert_exactly_once(emulator.ids(), events)
        datasets = {m["envelope"]["header"]["datasetId"] for m in emulator.messages()}
        assert datasets == set(provisioned["dataset_ids"].values())
    finally:
        emulator.proc.stop()


def test_provision_cli_writes_the_config_and_fails_clearly(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    try:
        config = tmp_path / "connector.toml"
        config.write_text(f'[aep]\nplatform_url = "{emulator.url}"\norg_id = "{em.DEMO_ORG_ID}"\nsandbox = "prod"\n'
                          'allow_insecure_http = true\n'
                          f'[aep.ims]\nurl = "{emulator.url}"\nclient_id = "{em.DEMO_CLIENT_ID}"\n'
                          '[kafka]\nbootstrap_servers = "127.0.0.1:1"\n')
        out = tmp_path / "aep.toml"
        env = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
        proc = ManagedProcess(python_module("connector", "provision", "--config", str(config), "--write", str(out)),
                              env=env, log_path=tmp_path / "provision.log")
        assert proc.wait(60) == 0, proc.log_text()
        written = tomllib.loads(out.read_text())
        assert written["aep"]["inlet_id"] and written["xdm"]["event"]["flow_id"]
        assert written["aep"]["dcs_url"] == emulator.url

        nowhere = _cli(tmp_path, config, "--write", str(tmp_path / "missing" / "aep.toml"), name="nowhere")
        assert nowhere.wait(60) == 2 and "its directory does not exist" in nowhere.log_text()

        bad = ManagedProcess(python_module("connector", "provision", "--config", str(config)),
                             env={"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": "wrong-secret"},
                             log_path=tmp_path / "provision-bad.log")
        assert bad.wait(60) == 8
        text = bad.log_text()
        assert "IMS" in text and "wrong-secret" not in text and "Traceback" not in text
    finally:
        emulator.proc.stop()


def _cli_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(f'[aep]\nplatform_url = "{url}"\norg_id = "{em.DEMO_ORG_ID}"\nsandbox = "prod"\n'
                      'allow_insecure_http = true\n'
                      f'[aep.ims]\nurl = "{url}"\nclient_id = "{em.DEMO_CLIENT_ID}"\n{extra}'
                      '[kafka]\nbootstrap_servers = "127.0.0.1:1"\n')
    return config


def _cli(tmp_path: Path, config: Path, *args: str, name: str = "provision") -> ManagedProcess:
    env = {"CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
    env.update(dict.fromkeys(("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"), ""))
    return ManagedProcess(python_module("connector", "provision", "--config", str(config), *args), env=env,
                          log_path=tmp_path / f"{name}.log")


def test_a_flow_service_error_report_is_in_the_exit_8_message(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    try:
        detail = "Error from flow provider: the dataset is not enabled for streaming"
        emulator.http.post("/__emulator/platform/faults", json={
            "method": "POST", "path": "/data/foundation/flowservice/flows", "status": 400, "code": 1419,
            "detail": detail}).raise_for_status()
        proc = _cli(tmp_path, _cli_config(tmp_path, emulator.url))
        assert proc.wait(60) == 8
        text = proc.log_text()
        assert "create flows 'Capillary loyalty events dataflow': HTTP 400" in text and detail in text, text
        assert "Traceback" not in text and em.DEMO_CLIENT_SECRET not in text

        again = _cli(tmp_path, _cli_config(tmp_path, emulator.url), name="again")
        assert again.wait(60) == 0, again.log_text()  # the run cut short is finished by the next
    finally:
        emulator.proc.stop()


def test_datasets_are_read_page_by_page_until_an_empty_page(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path, "--page-size", "1")
    try:
        ids = {_provision(emulator.url, prefix=p).dataset_ids["event"] for p in ("P", "Q")}
        platform = _platform(emulator.url)
        listed = dict(platform.datasets())
        platform.close()
        assert len(listed) == 4 and ids <= set(listed)
    finally:
        emulator.proc.stop()


def test_provision_goes_through_the_configured_proxy_and_trusts_the_configured_ca(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    url, proc = start_https_emulator(tmp_path, tls, mtls=True)
    proxy = ConnectProxy()
    try:
        untrusted = _cli(tmp_path, _cli_config(tmp_path, url), "--dry-run", name="untrusted")
        assert untrusted.wait(60) == 8
        assert "ConnectError" in untrusted.log_text() and "Traceback" not in untrusted.log_text()

        http = (f'[aep.http]\nproxy = "{proxy.url}"\nca_file = "{tls.ca}"\nclient_cert = "{tls.client_cert}"\n'
                f'client_key = "{tls.client_key}"\n')
        ok = _cli(tmp_path, _cli_config(tmp_path, url, http), name="through-proxy")
        assert ok.wait(60) == 0, ok.log_text()
        port = url.rsplit(":", 1)[1]
        assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{port}"}  # IMS and Platform calls alike
    finally:
        proxy.close()
        proc.stop()


def test_a_platform_error_names_the_call_and_never_the_secret(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path)
    try:
        platform = _platform(emulator.url, secret="s3cr3t-value")
        with pytest.raises(PlatformError) as info:
            platform.namespaces()
        assert "IMS" in str(info.value) and "s3cr3t-value" not in str(info.value)
        platform.close()
    finally:
        emulator.proc.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
