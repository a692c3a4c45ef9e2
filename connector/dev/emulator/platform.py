"""Emulated Platform APIs: the subset ``capillary-aep provision`` uses, held to AEP's documented rules.

Identity Service namespaces, Schema Registry tenant field groups and schemas (with the Profile union
tag), Catalog datasets, and Flow Service connections, source/target connections and dataflows:
create, list (filtered by name/title, paged) and read. What is created stays for the emulator's
lifetime; creating an HTTP API connection opens a new inlet, and each dataflow binds its dataset to
that inlet with a validator composed from the provisioned schema (standard field groups from the
compact schemas, the tenant block from the provisioned field group, closed). With ``strict_schemas``
the inlet rejects a message that does not validate, as AEP rejects fields the schema lacks.

The rules (docs/emulator.md, with the Experience League page of each): XDM's in
:mod:`connector.dev.emulator.platform_rules`; Flow Service's references, specs and states here.
Lists are cut into pages of ``platform_page_size`` *before* the name filter applies, so a page may
hold no match while ``next`` still leads on: a client must follow ``next`` to its end.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.dev.emulator.config import DatasetConfig, InletConfig
from connector.dev.emulator.platform_rules import Refused, check_dataset, check_field_group, check_schema, patched_tags
from connector.provision import artifacts as art
from connector.transform.tenant import close
from connector.transform.validate import standard_schema

if TYPE_CHECKING:
    from connector.dev.emulator.app import Emulator

STANDARD_NAMESPACES = ("ECID", "Email", "Phone", "CRMID", "AAID")
# Sources this emulator knows: the HTTP API (opens an inlet) and Adobe's Capillary Streaming Events
# source (beta; exists so a same-named connection of another source can be told apart).
CAPILLARY_SOURCE_SPEC = "6360f136-5980-4111-8bdf-15d29eab3b5a"
SOURCE_SPECS = (art.HTTP_API_CONNECTION_SPEC, CAPILLARY_SOURCE_SPEC)
FLOW_SPECS = (art.HTTP_API_FLOW_SPEC,)
CATALOG_MAX_LIMIT = 100  # Filter Catalog data: limit 1–100, absent = 20, service tokens get at most 20
CATALOG_SERVICE_LIMIT = 20


class ApiError(Exception):
    """An error answer. Flow Service's carry the details in ``report`` (code: its FLOW-<n>-<status>)."""

    def __init__(self, status: int, title: str, detail: str = "", code: int = 0) -> None:
        super().__init__(title)
        self.status, self.title, self.detail, self.code = status, title, detail, code


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class PlatformApi:
    def __init__(self, em: Emulator) -> None:
        self.em = em
        self.namespaces: dict[str, dict[str, Any]] = {
            code: {"id": i + 1, "code": code, "name": code, "custom": False, "idType": "CROSS_DEVICE"}
            for i, code in enumerate(STANDARD_NAMESPACES)}
        self.xdm: dict[str, dict[str, dict[str, Any]]] = {"fieldgroups": {}, "schemas": {}}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.flow_objects: dict[str, dict[str, dict[str, Any]]] = {
            "connections": {}, "sourceConnections": {}, "targetConnections": {}, "flows": {}}
        self.creates = 0  # every successful create or update, for tests of idempotence
        self._ids = itertools.count(1)
        # Test-only: answers forced on "METHOD path" (an AEP failure provision cannot provoke itself).
        self.faults: dict[str, ApiError] = {}

    @property
    def page_size(self) -> int:
        return self.em.cfg.platform_page_size

    # -- plumbing --------------------------------------------------------------------------------

    def _guard(self, request: Request) -> None:
        org = request.headers.get("x-gw-ims-org-id")
        if not org or not request.headers.get("x-api-key"):
            raise ApiError(400, "Missing header", "x-api-key and x-gw-ims-org-id are required")
        state = self.em.issuer.check(request.headers.get("authorization"), org)
        if state != "ok":
            raise ApiError(401 if state in ("missing", "invalid", "expired") else 403, "Unauthorized",
                           f"access token {state}")

    def _wrap(self, handler: Callable[[Request, Any], Any], flow_service: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self._guard(request)
                forced = self.faults.pop(f"{request.method} {request.url.path}", None)
                if forced is not None:
                    raise forced
                raw = await request.body()
                try:
                    body = orjson.loads(raw) if raw.strip() else None
                except orjson.JSONDecodeError:
                    raise ApiError(400, "Bad Request", "body is not JSON", 1405) from None
                try:
                    return await handler(request, body)  # type: ignore[no-any-return] # handlers answer Responses
                except Refused as exc:
                    raise ApiError(400, exc.title, "; ".join(exc.reasons), 1400) from None
            except ApiError as exc:
                return _json(_flow_error(exc) if flow_service else
                             {"type": f"http://ns.adobe.com/aep/errors/{exc.status}", "title": exc.title,
                              "status": exc.status, "detail": exc.detail}, exc.status)
        return endpoint

    def _tenant(self) -> str:
        return self.em.cfg.tenant_id

    # -- Identity Service ------------------------------------------------------------------------

    async def identities(self, request: Request, body: Any) -> Response:
        if request.method == "GET":
            return _json(list(self.namespaces.values()))
        if not isinstance(body, dict) or not body.get("code") or not body.get("name"):
            raise ApiError(400, "Bad Request", "name and code are required")
        if body["code"] in self.namespaces or any(ns["name"] == body["name"] for ns in self.namespaces.values()):
            raise ApiError(409, "Conflict", f"a namespace with code {body['code']} or name {body['name']} exists")
        ns = {**body, "id": 1000 + next(self._ids), "custom": True}
        self.namespaces[body["code"]] = ns
        self.creates += 1
        return _json(ns, 201)

    # -- Schema Registry -------------------------------------------------------------------------

    async def xdm_list(self, request: Request, body: Any) -> Response:
        kind = request.path_params["kind"]
        if kind not in self.xdm:
            raise ApiError(404, "Not Found", kind)
        if request.method == "POST":
            return _json(self._create_xdm(kind, body), 201)
        query = request.query_params
        wanted = _filter(query.get("property"), "title")
        start = _int(query.get("start", "0"), "start", 0)
        size = min(_int(query.get("limit", str(self.page_size)), "limit", 1), self.page_size)
        docs = list(self.xdm[kind].values())
        page = docs[start:start + size]
        results = [{"$id": d["$id"], "meta:altId": d["meta:altId"], "title": d["title"], "version": d["version"]}
                   for d in page if wanted is None or d["title"] == wanted]
        more = start + size < len(docs)
        nxt = None
        if more:
            params = {k: v for k, v in query.items() if k not in ("start", "limit")}
            params.update(start=str(start + size), limit=str(size))
            nxt = {"href": f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(params)}"}
        # The last page says so with a null, not a missing key (Schema Registry API: list resources).
        return _json({"results": results, "_page": {"count": len(results), "next": str(start + size) if more
                                                    else None}, "_links": {"next": nxt}})

    def _create_xdm(self, kind: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("title"):
            raise ApiError(400, "Bad Request", "title is required")
        if any(d["title"] == body["title"] for d in self.xdm[kind].values()):
            raise ApiError(409, "Conflict", f"title {body['title']!r} is already used")
        cls = None
        if kind == "fieldgroups":
            check_field_group(body, self._tenant())
        else:
            cls = check_schema(body, self.xdm["fieldgroups"])
        slug = "mixins" if kind == "fieldgroups" else "schemas"
        key = uuid.uuid4().hex
        doc = {**copy.deepcopy(body), "$id": f"https://ns.adobe.com/{self._tenant()}/{slug}/{key}",
               "meta:altId": f"_{self._tenant()}.{slug}.{key}", "version": "1.0"}
        if cls is not None:
            doc["meta:class"] = cls
            doc["meta:immutableTags"] = []
        self.xdm[kind][doc["$id"]] = doc
        self.creates += 1
        return doc

    async def schema_item(self, request: Request, body: Any) -> Response:
        schema = self._schema(unquote(request.path_params["schema_id"]))
        if request.method == "PATCH":
            tags = patched_tags(schema, body)
            if tags != schema["meta:immutableTags"]:
                schema["meta:immutableTags"] = tags
                self.creates += 1
        return _json(schema)

    def _schema(self, ref: str) -> dict[str, Any]:
        for doc in self.xdm["schemas"].values():
            if ref in (doc["$id"], doc["meta:altId"]):
                return doc
        raise ApiError(404, "Not Found", f"schema {ref}")

    def composed(self, schema_id: str) -> tuple[dict[str, Any], str]:
        """(JSON Schema, record type) of a provisioned schema: standard parts from the compact
        schemas, the tenant namespace from its tenant field groups, every object closed."""
        schema = self._schema(schema_id)
        kind = "event" if schema["meta:class"] == art.EVENT_CLASS else "profile"
        out = standard_schema(kind)
        key = f"_{self._tenant()}"
        for part in schema["allOf"][1:]:
            group = self.xdm["fieldgroups"].get(part["$ref"])
            if group is not None:
                for definition in group.get("definitions", {}).values():
                    block = definition.get("properties", {}).get(key)
                    if block is not None:
                        out["properties"][key] = close(block)
        return out, "experience_event" if kind == "event" else "profile"

    # -- Catalog ---------------------------------------------------------------------------------

    async def datasets_list(self, request: Request, body: Any) -> Response:
        if request.method == "GET":
            return _json(self._datasets_page(request))
        if not isinstance(body, dict) or not body.get("name"):
            raise ApiError(400, "Bad Request", "name is required")
        if any(d["name"] == body["name"] for d in self.datasets.values()):
            raise ApiError(409, "Conflict", f"dataset name {body['name']!r} is already used")
        schema = self._schema(str((body.get("schemaRef") or {}).get("id")))
        check_dataset(body, schema)
        ds_id = hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:24]
        self.datasets[ds_id] = copy.deepcopy(body)
        self.creates += 1
        return _json([f"@/dataSets/{ds_id}"], 201)

    def _datasets_page(self, request: Request) -> dict[str, Any]:
        """Filter Catalog data: ``name`` filters, ``limit`` (1–100, at most 20 for a service token)
        and ``start`` (an offset) page, ``properties`` keeps only the fields named."""
        query = request.query_params
        limit = _int(query.get("limit", str(CATALOG_SERVICE_LIMIT)), "limit", 1)
        if limit > CATALOG_MAX_LIMIT:
            raise ApiError(400, "Bad Request", f"limit must be between 1 and {CATALOG_MAX_LIMIT}")
        start = _int(query.get("start", "0"), "start", 0)
        name = query.get("name")
        matches = [(k, v) for k, v in self.datasets.items() if name is None or v["name"] == name]
        page = matches[start:start + min(limit, CATALOG_SERVICE_LIMIT, self.page_size)]
        keep = [p for p in query.get("properties", "").split(",") if p]
        return {k: ({p: v[p] for p in keep if p in v} if keep else v) for k, v in page}

    # -- Flow Service ----------------------------------------------------------------------------

    async def flow_list(self, request: Request, body: Any) -> Response:
        kind = request.path_params["kind"]
        store = self.flow_objects.get(kind)
        if store is None:
            raise ApiError(404, "Resource not found", f"{kind} is not a Flow Service resource", 1101)
        if request.method == "GET":
            return _json(self._flow_page(request, kind, store))
        if not isinstance(body, dict) or not body.get("name"):
            raise ApiError(400, "Invalid request", "name is required", 1405)
        if any(o["name"] == body["name"] for o in store.values()):
            raise ApiError(409, "Conflict", f"{kind} name {body['name']!r} is already used")
        obj = {**copy.deepcopy(body), "id": str(uuid.uuid4()), "state": "enabled"}
        getattr(self, f"_new_{kind}")(request, body, obj)
        store[obj["id"]] = obj
        self.creates += 1
        return _json({"id": obj["id"], "etag": f'"{uuid.uuid4().hex[:8]}"'}, 201)

    def _flow_page(self, request: Request, kind: str, store: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """``{"items": [...]}``; a further page is named by ``_links.next.href``, relative to the
        service and carrying a ``continuationToken``; the last page has no ``_links``."""
        query = request.query_params
        wanted = _filter(query.get("property"), "name")
        start = _token_offset(query.get("continuationToken"), kind)
        size = min(_int(query.get("limit", str(self.page_size)), "limit", 1), self.page_size)
        objs = list(store.values())
        out: dict[str, Any] = {"items": [o for o in objs[start:start + size] if wanted is None or o["name"] == wanted]}
        if start + size < len(objs):
            params = {k: v for k, v in query.items() if k != "continuationToken"}
            params["continuationToken"] = _token(start + size, kind)
            out["_links"] = {"next": {"href": f"/{kind}?{urlencode(params)}"}}
        return out

    def _new_connections(self, request: Request, body: dict[str, Any], obj: dict[str, Any]) -> None:
        spec = (body.get("connectionSpec") or {}).get("id")
        if spec not in SOURCE_SPECS:
            raise ApiError(400, "Invalid request", f"The provided spec ID {spec!r} is invalid", 1413)
        if spec != art.HTTP_API_CONNECTION_SPEC:
            return
        params = obj.setdefault("auth", {}).setdefault("params", {})
        if params.get("dataType", "xdm") not in ("xdm", "raw"):
            raise ApiError(400, "Invalid request", "auth.params.dataType must be xdm or raw", 1400)
        inlet_id = hashlib.sha256(obj["id"].encode()).hexdigest()
        params.update(inletId=inlet_id, inletUrl=f"{str(request.base_url).rstrip('/')}/collection/{inlet_id}")
        self.em.dcs.add_inlet(InletConfig(
            inlet_id=inlet_id, org_id=request.headers["x-gw-ims-org-id"],
            sandbox=request.headers.get("x-sandbox-name", "prod"),
            authentication_required=bool(params.get("authenticationRequired", False)),
            data_type=params.get("dataType", "xdm")))

    def _new_sourceConnections(self, request: Request, body: dict[str, Any], obj: dict[str, Any]) -> None:  # noqa: N802 - API's name
        base = self.flow_objects["connections"].get(str(body.get("baseConnectionId")))
        if base is None:
            raise ApiError(400, "Invalid request", f"base connection {body.get('baseConnectionId')!r} does not "
                                                   "exist", 1101)
        if (body.get("connectionSpec") or {}).get("id") != base["connectionSpec"]["id"]:
            raise ApiError(400, "Invalid request", "connectionSpec.id differs from its base connection's", 1413)

    def _new_targetConnections(self, request: Request, body: dict[str, Any], obj: dict[str, Any]) -> None:  # noqa: N802 - API's name
        spec = (body.get("connectionSpec") or {}).get("id")
        if spec != art.DATA_LAKE_CONNECTION_SPEC:
            raise ApiError(400, "Invalid request", f"The provided spec ID {spec!r} is invalid (the data lake "
                                                   f"target is {art.DATA_LAKE_CONNECTION_SPEC})", 1413)
        ds_id = str((body.get("params") or {}).get("dataSetId"))
        dataset = self.datasets.get(ds_id)
        if dataset is None:
            raise ApiError(400, "Invalid request", f"dataset {ds_id} does not exist", 1101)
        schema_id = str(((body.get("data") or {}).get("schema") or {}).get("id"))
        try:
            self._schema(schema_id)
        except ApiError:
            raise ApiError(400, "Invalid request", f"schema {schema_id} does not exist", 1101) from None
        if dataset["schemaRef"]["id"] != schema_id:
            raise ApiError(400, "Invalid request", f"dataset {ds_id} is on schema {dataset['schemaRef']['id']}, "
                                                   f"not {schema_id}", 1400)

    def _new_flows(self, request: Request, body: dict[str, Any], obj: dict[str, Any]) -> None:
        if "state" in body:
            raise ApiError(400, "Invalid request", "State is not allowed in create flow request", 1410)
        spec = (body.get("flowSpec") or {}).get("id")
        if spec not in FLOW_SPECS:
            raise ApiError(400, "Invalid request", f"The provided spec ID {spec!r} is invalid", 1413)
        sources = [self.flow_objects["sourceConnections"].get(i) for i in body.get("sourceConnectionIds") or ()]
        targets = [self.flow_objects["targetConnections"].get(i) for i in body.get("targetConnectionIds") or ()]
        if not sources or not targets or None in sources or None in targets:
            raise ApiError(400, "Invalid request", "sourceConnectionIds and targetConnectionIds must name "
                                                   "existing source and target connections", 1101)
        for source in sources:
            base = self.flow_objects["connections"][source["baseConnectionId"]]  # type: ignore[index] # checked above: no None among them
            inlet_id = base.get("auth", {}).get("params", {}).get("inletId")
            if inlet_id is None:
                raise ApiError(400, "Invalid request", "the source connection's base connection has no inlet", 1400)
            for target in targets:
                schema_id = target["data"]["schema"]["id"]  # type: ignore[index] # checked above: no None among them
                composed, record_type = self.composed(schema_id)
                self.em.dcs.bind_dataset(inlet_id, target["params"]["dataSetId"], obj["id"],  # type: ignore[index] # checked above: no None among them
                                         DatasetConfig(schema_id=schema_id, record_type=record_type,
                                                       json_schema=composed))

    async def flow_item(self, request: Request, body: Any) -> Response:
        kind = request.path_params["kind"]
        obj = self.flow_objects.get(kind, {}).get(request.path_params["object_id"])
        if obj is None:
            raise ApiError(404, "Resource not found", f"The requested {kind} resource "
                                                      f"{request.path_params['object_id']} is not found", 1101)
        return _json({"items": [obj]})

    async def flow_action(self, request: Request, body: Any) -> Response:
        """``POST /flows/{id}/action?op=enable|disable``."""
        flow = self.flow_objects["flows"].get(request.path_params["object_id"])
        if flow is None:
            raise ApiError(404, "Resource not found", "The requested flows resource is not found", 1101)
        op = request.query_params.get("op")
        if op not in ("enable", "disable"):
            raise ApiError(400, "Invalid request", f"op must be enable or disable, not {op!r}", 1400)
        flow["state"] = f"{op}d"
        return _json({"id": flow["id"], "etag": f'"{uuid.uuid4().hex[:8]}"'}, 202)

    async def fault(self, request: Request) -> Response:
        """``POST /__emulator/platform/faults {"method", "path", "status", "title", "detail", "code"}``:
        the next such call fails so (Flow Service paths with a ``report``)."""
        f = orjson.loads(await request.body())
        self.faults[f"{f['method']} {f['path']}"] = ApiError(int(f["status"]), str(f.get("title", "Invalid request")),
                                                             str(f.get("detail", "")), int(f.get("code", 0)))
        return _json({"faults": sorted(self.faults)})

    def inventory(self) -> dict[str, Any]:
        return {"namespaces": sorted(c for c, ns in self.namespaces.items() if ns.get("custom")),
                "fieldgroups": sorted(d["title"] for d in self.xdm["fieldgroups"].values()),
                "schemas": {d["title"]: d["meta:immutableTags"] for d in self.xdm["schemas"].values()},
                "datasets": sorted(d["name"] for d in self.datasets.values()),
                **{kind: sorted(o["name"] for o in objs.values()) for kind, objs in self.flow_objects.items()},
                "creates": self.creates}

    def routes(self) -> list[Route]:
        sr, fs = "/data/foundation/schemaregistry", "/data/foundation/flowservice"
        w = self._wrap
        return [
            Route("/data/core/idnamespace/identities", w(self.identities), methods=["GET", "POST"]),
            Route(f"{sr}/tenant/schemas/{{schema_id:path}}", w(self.schema_item), methods=["GET", "PATCH"]),
            Route(f"{sr}/tenant/{{kind}}", w(self.xdm_list), methods=["GET", "POST"]),
            Route("/data/foundation/catalog/dataSets", w(self.datasets_list), methods=["GET", "POST"]),
            Route(f"{fs}/flows/{{object_id}}/action", w(self.flow_action, True), methods=["POST"]),
            Route(f"{fs}/{{kind}}/{{object_id}}", w(self.flow_item, True), methods=["GET"]),
            Route(f"{fs}/{{kind}}", w(self.flow_list, True), methods=["GET", "POST"]),
            Route("/__emulator/platform", lambda request: _json(self.inventory()), methods=["GET"]),
            Route("/__emulator/platform/faults", self.fault, methods=["POST"]),
        ]


def _flow_error(exc: ApiError) -> dict[str, Any]:
    """Flow Service's error shape: the specifics only in ``report`` (Flow Service error messages)."""
    code = exc.code or 1400
    return {"type": f"https://ns.adobe.com/aep/errors/FLOW-{code}-{exc.status}", "title": exc.title,
            "status": exc.status, "report": {"detailed-message": exc.detail, "request-id": uuid.uuid4().hex}}


def _filter(prop: str | None, field: str) -> str | None:
    """``property=title==X`` → X (the only filter form provision uses)."""
    if prop and prop.startswith(f"{field}=="):
        return prop[len(field) + 2:]
    return None


def _int(value: str, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ApiError(400, "Bad Request", f"{name} must be an integer ≥ {minimum}", 1400)
    return number


def _token(offset: int, kind: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"kind": kind, "offset": offset})).decode()


def _token_offset(token: str | None, kind: str) -> int:
    if token is None:
        return 0
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        if decoded["kind"] == kind and isinstance(decoded["offset"], int):
            return int(decoded["offset"])
    except (ValueError, KeyError, TypeError):
        pass
    raise ApiError(400, "Invalid request", "continuationToken is not valid for this list", 1400)
