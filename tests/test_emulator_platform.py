"""The emulated Platform APIs hold AEP's documented rules (docs/emulator.md names the page of each):
paging with a null ``next`` at the end, XDM's custom-field and map rules, field groups extending
their schema's class, Profile enablement, unique names, Flow Service's shapes, references and
error reports. One emulator (pages of 2) serves the module; each test names its own objects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from conftest import Emulator, start_emulator

from connector.dev.emulator import config as em
from connector.provision import artifacts as art

pytestmark = pytest.mark.integration
SR = "/data/foundation/schemaregistry/tenant"
FS = "/data/foundation/flowservice"
CATALOG = "/data/foundation/catalog/dataSets"


class Api:
    def __init__(self, url: str) -> None:
        token = httpx.post(f"{url}/ims/token/v3", data={
            "grant_type": "client_credentials", "client_id": em.DEMO_CLIENT_ID,
            "client_secret": em.DEMO_CLIENT_SECRET}).json()["access_token"]
        self.http = httpx.Client(base_url=url, timeout=10, headers={
            "Authorization": f"Bearer {token}", "x-api-key": em.DEMO_CLIENT_ID, "x-gw-ims-org-id": em.DEMO_ORG_ID,
            "x-sandbox-name": "prod"})

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def post(self, path: str, body: Any, **params: str) -> httpx.Response:
        return self.http.post(path, json=body, params=params)

    def created(self, path: str, body: Any) -> dict[str, Any]:
        r = self.post(path, body)
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    e = start_emulator(tmp_path_factory.mktemp("platform"), "--page-size", "2")
    yield e
    e.proc.stop()


@pytest.fixture(scope="module")
def api(emulator: Emulator) -> Api:
    return Api(emulator.url)


def _name(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:8]}"


def _group(title: str, fields: dict[str, Any], extends: str = art.EVENT_CLASS, key: str = "_capillary",
           **extra: Any) -> dict[str, Any]:
    return {"title": title, "type": "object", "meta:intendedToExtend": [extends],
            "definitions": {"f": {"properties": {key: {"type": "object", "properties": fields}}}},
            "allOf": [{"$ref": "#/definitions/f"}], **extra}


STRING = {"type": "string"}


def _schema(api: Api, cls: str = art.EVENT_CLASS, *refs: str) -> dict[str, Any]:
    return api.created(f"{SR}/schemas", {"title": _name("schema"), "type": "object",
                                         "allOf": [{"$ref": r} for r in (cls, *refs)]})


def _dataset(api: Api, schema_id: str, tags: dict[str, list[str]] | None = None) -> str:
    body = {"name": _name("dataset"), "schemaRef": {"id": schema_id, "contentType": art.XED_FULL},
            "tags": tags or {}}
    return api.created(CATALOG, body)[0].rsplit("/", 1)[-1]


def _report(r: httpx.Response) -> str:
    body = r.json()
    assert body["type"].startswith("https://ns.adobe.com/aep/errors/FLOW-") and body["status"] == r.status_code
    return body["report"]["detailed-message"]


# -- lists and paging ------------------------------------------------------------------------------

def test_the_last_page_says_next_null_and_every_page_links_the_next(api: Api) -> None:
    titles = [_name("paged") for _ in range(3)]
    for title in titles:
        api.created(f"{SR}/fieldgroups", _group(title, {"a": STRING}))
    pages = _walk(api, {})
    assert all(len(p["results"]) <= 2 for p in pages) and len(pages) >= 2
    assert set(titles) <= {r["title"] for p in pages for r in p["results"]}
    # Pages are cut before the filter: pages without a match still lead on to the one that has it.
    filtered = _walk(api, {"property": f"title=={titles[2]}"})
    assert [r["title"] for p in filtered for r in p["results"]] == [titles[2]]
    assert any(p["results"] == [] and p["_links"]["next"] for p in filtered)


def _walk(api: Api, params: dict[str, str]) -> list[dict[str, Any]]:
    pages, path = [], f"{SR}/fieldgroups"
    for _ in range(1000):
        page = api.http.get(path, params=params, headers={"Accept": "application/vnd.adobe.xed-id+json"}).json()
        pages.append(page)
        if page["_links"]["next"] is None:  # the last page: a null, not a missing key
            return pages
        href = urlsplit(page["_links"]["next"]["href"])
        path, params = href.path, dict(parse_qsl(href.query))
    raise AssertionError("next never became null")


def test_flow_service_lists_are_items_paged_by_continuation_token(api: Api) -> None:
    spec = {"id": art.HTTP_API_CONNECTION_SPEC, "version": "1.0"}
    names = [_name("conn") for _ in range(3)]
    for name in names:
        api.created(f"{FS}/connections", {"name": name, "connectionSpec": spec,
                                          "auth": {"params": {"dataType": "xdm", "authenticationRequired": True}}})
    found, params = [], {}
    for _ in range(100):
        page = api.http.get(f"{FS}/connections", params=params).json()
        assert set(page) <= {"items", "_links"} and len(page["items"]) <= 2
        found += [i["name"] for i in page["items"]]
        if "_links" not in page:
            break
        href = page["_links"]["next"]["href"]
        assert href.startswith("/connections?")  # relative to the service
        params = dict(parse_qsl(urlsplit(href).query))
    assert set(names) <= set(found)
    one = api.created(f"{FS}/connections", {"name": _name("conn"), "connectionSpec": spec,
                                            "auth": {"params": {"dataType": "xdm"}}})
    item = api.get(f"{FS}/connections/{one['id']}").json()
    assert list(item) == ["items"] and item["items"][0]["id"] == one["id"]
    bad = api.get(f"{FS}/connections", continuationToken="not-a-token")
    assert bad.status_code == 400 and "continuationToken" in _report(bad)


def test_catalog_pages_by_start_and_limit_within_its_bounds(api: Api) -> None:
    schema = _schema(api)
    ids = {_dataset(api, schema["$id"]) for _ in range(3)}
    pages = [api.get(CATALOG, limit="20", start=str(s), properties="name").json() for s in range(0, 40, 2)]
    assert all(len(p) <= 2 for p in pages) and ids <= {k for p in pages for k in p}
    assert all(set(v) == {"name"} for p in pages for v in p.values())  # only the properties asked for
    assert api.get(CATALOG, limit="0").status_code == 400 and api.get(CATALOG, limit="101").status_code == 400


# -- Schema Registry: custom fields and maps -------------------------------------------------------

@pytest.mark.parametrize(("field", "reason"), [
    ({"type": "object", "meta:xdmType": "map", "additionalProperties": {"type": "object", "properties": {
        "points": {"type": "number"}}}}, "/_capillary/programs: a map's values must be of type string or integer"),
    ({"type": "object", "meta:xdmType": "map", "additionalProperties": {"type": "number"}},
     "not 'number'"),
    ({"type": "object", "meta:xdmType": "map", "properties": {"a": STRING}, "additionalProperties": STRING},
     "a map must not define properties"),
    ({"type": "object", "additionalProperties": STRING}, "must be a map"),
])
def test_a_field_group_breaking_the_map_rules_is_refused_with_its_violations(api: Api, field: Any,
                                                                               reason: str) -> None:
    r = api.post(f"{SR}/fieldgroups", _group(_name("maps"), {"programs": field}))
    assert r.status_code == 400 and reason in r.json()["detail"], r.text


def test_legal_maps_of_strings_and_integers_are_accepted(api: Api) -> None:
    api.created(f"{SR}/fieldgroups", _group(_name("maps"), {
        "names": {"type": "object", "meta:xdmType": "map", "additionalProperties": STRING},
        "counts": {"type": "object", "meta:xdmType": "map", "additionalProperties": {"type": "integer"}}}))


def test_custom_fields_only_under_the_tenant_and_intended_to_extend_required(api: Api) -> None:
    outside = api.post(f"{SR}/fieldgroups", _group(_name("fg"), {"a": STRING}, key="loyalty"))
    assert outside.status_code == 400 and "'loyalty' is not under _capillary" in outside.json()["detail"]
    group = _group(_name("fg"), {"a": STRING})
    del group["meta:intendedToExtend"]
    missing = api.post(f"{SR}/fieldgroups", group)
    assert missing.status_code == 400 and "meta:intendedToExtend is required" in missing.json()["detail"]


def test_a_schema_uses_only_existing_field_groups_that_extend_its_class(api: Api) -> None:
    event_group = api.created(f"{SR}/fieldgroups", _group(_name("fg"), {"a": STRING}))["$id"]
    assert _schema(api, art.EVENT_CLASS, event_group)["meta:class"] == art.EVENT_CLASS
    wrong = api.post(f"{SR}/schemas", {"title": _name("schema"), "type": "object", "allOf": [
        {"$ref": art.PROFILE_CLASS}, {"$ref": event_group}]})
    assert wrong.status_code == 400 and "not the schema's class" in wrong.json()["detail"]
    standard = api.post(f"{SR}/schemas", {"title": _name("schema"), "type": "object", "allOf": [
        {"$ref": art.PROFILE_CLASS}, {"$ref": "https://ns.adobe.com/xdm/context/experienceevent-commerce"}]})
    assert standard.status_code == 400 and "not the schema's class" in standard.json()["detail"]
    unknown = api.post(f"{SR}/schemas", {"title": _name("schema"), "type": "object", "allOf": [
        {"$ref": art.EVENT_CLASS}, {"$ref": "https://ns.adobe.com/capillary/mixins/nope"}]})
    assert unknown.status_code == 400 and "does not exist" in unknown.json()["detail"]


def test_titles_and_names_are_unique(api: Api) -> None:
    group = _group(_name("fg"), {"a": STRING})
    api.created(f"{SR}/fieldgroups", group)
    assert api.post(f"{SR}/fieldgroups", group).status_code == 409
    schema = _schema(api)
    name = _name("dataset")
    body = {"name": name, "schemaRef": {"id": schema["$id"], "contentType": art.XED_FULL}}
    api.created(CATALOG, body)
    assert api.post(CATALOG, body).status_code == 409
    conn = {"name": _name("conn"), "connectionSpec": {"id": art.HTTP_API_CONNECTION_SPEC, "version": "1.0"}}
    api.created(f"{FS}/connections", conn)
    assert api.post(f"{FS}/connections", conn).status_code == 409


# -- Profile enablement ------------------------------------------------------------------------------

def test_a_profile_enabled_dataset_needs_a_schema_in_the_union_and_the_union_keeps_it(api: Api) -> None:
    schema = _schema(api)  # an ExperienceEvent schema: the rule holds for every class
    tags = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
    refused = api.post(CATALOG, {"name": _name("dataset"), "schemaRef": {"id": schema["$id"],
                                                                         "contentType": art.XED_FULL}, "tags": tags})
    assert refused.status_code == 400 and "not enabled for Profile" in refused.json()["detail"]
    item = f"{SR}/schemas/{schema['meta:altId']}"
    assert api.http.patch(item, json=art.UNION_PATCH).json()["meta:immutableTags"] == ["union"]
    _dataset(api, schema["$id"], tags)
    for ops in ([{"op": "remove", "path": "/meta:immutableTags"}],
                [{"op": "add", "path": "/meta:immutableTags", "value": []}]):
        r = api.http.patch(item, json=ops)
        assert r.status_code == 400 and "cannot be disabled" in r.json()["detail"]
    assert api.get(item).json()["meta:immutableTags"] == ["union"]


# -- Flow Service: references, specs, states and error reports -----------------------------------------

def _connection(api: Api, spec: str = art.HTTP_API_CONNECTION_SPEC) -> str:
    return api.created(f"{FS}/connections", {"name": _name("conn"), "connectionSpec": {"id": spec, "version": "1.0"},
                                             "auth": {"params": {"dataType": "xdm",
                                                                 "authenticationRequired": True}}})["id"]


def test_flow_service_checks_specs_and_references_and_reports_why(api: Api) -> None:
    unknown_spec = api.post(f"{FS}/connections", {"name": _name("conn"), "connectionSpec": {"id": "nope"}})
    assert unknown_spec.status_code == 400 and "spec ID 'nope' is invalid" in _report(unknown_spec)
    no_base = api.post(f"{FS}/sourceConnections", {"name": _name("src"), "baseConnectionId": "missing",
                                                   "connectionSpec": {"id": art.HTTP_API_CONNECTION_SPEC}})
    assert no_base.status_code == 400 and "base connection 'missing' does not exist" in _report(no_base)

    schema = _schema(api)
    other = _schema(api)
    dataset = _dataset(api, schema["$id"])
    target = {"name": _name("tgt"), "connectionSpec": {"id": art.DATA_LAKE_CONNECTION_SPEC},
              "data": {"schema": {"id": schema["$id"]}}, "params": {"dataSetId": "nope"}}
    assert "dataset nope does not exist" in _report(api.post(f"{FS}/targetConnections", target))
    target["params"] = {"dataSetId": dataset}
    target["data"] = {"schema": {"id": other["$id"]}}
    assert f"is on schema {schema['$id']}" in _report(api.post(f"{FS}/targetConnections", target))
    target["data"] = {"schema": {"id": schema["$id"]}}
    target_id = api.created(f"{FS}/targetConnections", target)["id"]
    source_id = api.created(f"{FS}/sourceConnections", art.source_connection(_connection(api),
                                                                             art.Names(_name("p"))))["id"]

    flow = {"name": _name("flow"), "flowSpec": {"id": art.HTTP_API_FLOW_SPEC},
            "sourceConnectionIds": ["missing"], "targetConnectionIds": [target_id]}
    assert "must name existing source and target connections" in _report(api.post(f"{FS}/flows", flow))
    flow["sourceConnectionIds"] = [source_id]
    assert "spec ID 'x' is invalid" in _report(api.post(f"{FS}/flows", {**flow, "flowSpec": {"id": "x"}}))
    assert "State is not allowed" in _report(api.post(f"{FS}/flows", {**flow, "state": "enabled"}))
    flow_id = api.created(f"{FS}/flows", flow)["id"]
    assert api.get(f"{FS}/flows/{flow_id}").json()["items"][0]["state"] == "enabled"
    assert api.post(f"{FS}/flows/{flow_id}/action", None, op="disable").status_code == 202
    assert api.get(f"{FS}/flows/{flow_id}").json()["items"][0]["state"] == "disabled"
    assert "is not found" in _report(api.get(f"{FS}/flows/nope"))
