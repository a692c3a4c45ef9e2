"""Emulated Platform APIs: the subset ``capillary-aep provision`` uses.

Identity Service namespaces, Schema Registry tenant field groups and schemas (with the Profile union
tag), Catalog datasets, and Flow Service connections, source/target connections and dataflows:
create, list (filtered by name/title) and get. What is created stays for the emulator's lifetime;
creating an HTTP API connection opens a new inlet, and each dataflow binds its dataset to that inlet
with a validator composed from the provisioned schema (standard field groups from the compact
schemas, the tenant block from the provisioned field group, closed). With ``strict_schemas`` the
inlet rejects a message that does not validate, as AEP rejects fields the schema lacks.

Rules kept from AEP (simplified): titles and names are unique per kind (409); custom fields must sit
under the tenant namespace ``_<tenant_id>``; a schema may reference only known classes, standard
field groups the emulator can compose and tenant field groups that exist; a dataset enabled for
Profile needs a schema in the union.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft7Validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.dev.emulator.config import DatasetConfig, InletConfig
from connector.provision import artifacts as art
from connector.transform.tenant import close
from connector.transform.validate import standard_schema

if TYPE_CHECKING:
    from connector.dev.emulator.app import Emulator

STANDARD_NAMESPACES = ("ECID", "Email", "Phone", "CRMID", "AAID")
_KNOWN_REFS = {ref for refs in art.COMPOSITIONS.values() for ref in refs}


class ApiError(Exception):
    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail


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

    # -- plumbing --------------------------------------------------------------------------------

    def _guard(self, request: Request) -> None:
        org = request.headers.get("x-gw-ims-org-id")
        if not org or not request.headers.get("x-api-key"):
            raise ApiError(400, "Missing header", "x-api-key and x-gw-ims-org-id are required")
        state = self.em.issuer.check(request.headers.get("authorization"), org)
        if state != "ok":
            raise ApiError(401 if state in ("missing", "invalid", "expired") else 403, "Unauthorized",
                           f"access token {state}")

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self._guard(request)
                raw = await request.body()
                body = orjson.loads(raw) if raw.strip() else None
                return await handler(request, body)
            except ApiError as exc:
                return _json({"title": exc.title, "detail": exc.detail, "status": exc.status}, exc.status)
            except orjson.JSONDecodeError:
                return _json({"title": "Bad Request", "detail": "body is not JSON", "status": 400}, 400)
        return endpoint

    def _tenant(self) -> str:
        return self.em.cfg.tenant_id

    # -- Identity Service ------------------------------------------------------------------------

    async def identities(self, request: Request, body: Any) -> Response:
        if request.method == "GET":
            return _json(list(self.namespaces.values()))
        if not isinstance(body, dict) or not body.get("code") or not body.get("name"):
            raise ApiError(400, "Bad Request", "name and code are required")
        if body["code"] in self.namespaces:
            raise ApiError(409, "Conflict", f"namespace code {body['code']} exists")
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
        wanted = _filter(request.query_params.get("property"), "title")
        results = [{"$id": d["$id"], "meta:altId": d["meta:altId"], "title": d["title"], "version": "1.0"}
                   for d in self.xdm[kind].values() if wanted is None or d["title"] == wanted]
        return _json({"results": results, "_page": {"count": len(results)}, "_links": {}})

    def _create_xdm(self, kind: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("title"):
            raise ApiError(400, "Bad Request", "title is required")
        if any(d["title"] == body["title"] for d in self.xdm[kind].values()):
            raise ApiError(409, "Conflict", f"title {body['title']!r} is already used")
        if kind == "fieldgroups":
            self._check_field_group(body)
        else:
            self._check_schema(body)
        slug = "mixins" if kind == "fieldgroups" else "schemas"
        key = uuid.uuid4().hex
        doc = {**copy.deepcopy(body), "$id": f"https://ns.adobe.com/{self._tenant()}/{slug}/{key}",
               "meta:altId": f"_{self._tenant()}.{slug}.{key}", "version": "1.0"}
        if kind == "schemas":
            doc["meta:class"] = body["allOf"][0]["$ref"]
            doc["meta:immutableTags"] = []
        self.xdm[kind][doc["$id"]] = doc
        self.creates += 1
        return doc

    def _check_field_group(self, body: dict[str, Any]) -> None:
        try:
            Draft7Validator.check_schema(body)
        except SchemaError as exc:
            raise ApiError(400, "Invalid field group", exc.message) from None
        extends = body.get("meta:intendedToExtend")
        if not isinstance(extends, list) or not extends:
            raise ApiError(400, "Invalid field group", "meta:intendedToExtend is required")
        for name, definition in (body.get("definitions") or {}).items():
            for field in (definition.get("properties") or {}):
                if field != f"_{self._tenant()}":
                    raise ApiError(400, "Invalid field group",
                                   f"definitions.{name}: custom field {field!r} is not under _{self._tenant()}")

    def _check_schema(self, body: dict[str, Any]) -> None:
        refs = [part.get("$ref") for part in body.get("allOf") or () if isinstance(part, dict)]
        if not refs or refs[0] not in (art.EVENT_CLASS, art.PROFILE_CLASS):
            raise ApiError(400, "Invalid schema", "allOf must start with the class (ExperienceEvent or Profile)")
        for ref in refs[1:]:
            if ref not in _KNOWN_REFS and ref not in self.xdm["fieldgroups"]:
                raise ApiError(400, "Invalid schema", f"unknown field group {ref}")

    async def schema_item(self, request: Request, body: Any) -> Response:
        schema = self._schema(unquote(request.path_params["schema_id"]))
        if request.method == "PATCH":
            for op in body if isinstance(body, list) else ():
                if op.get("op") == "add" and op.get("path") == "/meta:immutableTags":
                    schema["meta:immutableTags"] = sorted(set(schema["meta:immutableTags"]) | set(op["value"]))
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
            name = request.query_params.get("name")
            return _json({k: v for k, v in self.datasets.items() if name is None or v["name"] == name})
        if not isinstance(body, dict) or not body.get("name"):
            raise ApiError(400, "Bad Request", "name is required")
        if any(d["name"] == body["name"] for d in self.datasets.values()):
            raise ApiError(409, "Conflict", f"dataset name {body['name']!r} is already used")
        schema = self._schema(str((body.get("schemaRef") or {}).get("id")))
        tags = body.get("tags") or {}
        if "enabled:true" in tags.get("unifiedProfile", ()) and schema["meta:class"] == art.PROFILE_CLASS \
                and "union" not in schema["meta:immutableTags"]:
            raise ApiError(400, "Bad Request", "a Profile-enabled dataset needs a schema enabled for Profile")
        ds_id = hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:24]
        self.datasets[ds_id] = copy.deepcopy(body)
        self.creates += 1
        return _json([f"@/dataSets/{ds_id}"], 201)

    # -- Flow Service ----------------------------------------------------------------------------

    async def flow_list(self, request: Request, body: Any) -> Response:
        kind = request.path_params["kind"]
        store = self.flow_objects.get(kind)
        if store is None:
            raise ApiError(404, "Not Found", kind)
        if request.method == "GET":
            wanted = _filter(request.query_params.get("property"), "name")
            return _json({"items": [o for o in store.values() if wanted is None or o["name"] == wanted]})
        if not isinstance(body, dict) or not body.get("name"):
            raise ApiError(400, "Bad Request", "name is required")
        if any(o["name"] == body["name"] for o in store.values()):
            raise ApiError(409, "Conflict", f"{kind} name {body['name']!r} is already used")
        obj = {**copy.deepcopy(body), "id": str(uuid.uuid4())}
        getattr(self, f"_new_{kind}")(request, obj)
        store[obj["id"]] = obj
        self.creates += 1
        return _json({"id": obj["id"], "etag": f'"{uuid.uuid4().hex[:8]}"'}, 201)

    def _new_connections(self, request: Request, obj: dict[str, Any]) -> None:
        params = obj.setdefault("auth", {}).setdefault("params", {})
        if params.get("dataType", "xdm") not in ("xdm", "raw"):
            raise ApiError(400, "Bad Request", "auth.params.dataType must be xdm or raw")
        inlet_id = hashlib.sha256(obj["id"].encode()).hexdigest()
        params.update(inletId=inlet_id, inletUrl=f"{str(request.base_url).rstrip('/')}/collection/{inlet_id}")
        self.em.dcs.add_inlet(InletConfig(
            inlet_id=inlet_id, org_id=request.headers["x-gw-ims-org-id"],
            sandbox=request.headers.get("x-sandbox-name", "prod"),
            authentication_required=bool(params.get("authenticationRequired", True)),
            data_type=params.get("dataType", "xdm")))

    def _new_sourceConnections(self, request: Request, obj: dict[str, Any]) -> None:  # noqa: N802 - API's name
        if obj.get("baseConnectionId") not in self.flow_objects["connections"]:
            raise ApiError(400, "Bad Request", "baseConnectionId is not a connection")

    def _new_targetConnections(self, request: Request, obj: dict[str, Any]) -> None:  # noqa: N802 - named after the API path
        ds_id = (obj.get("params") or {}).get("dataSetId")
        if ds_id not in self.datasets:
            raise ApiError(400, "Bad Request", f"dataset {ds_id} does not exist")
        self._schema(str(((obj.get("data") or {}).get("schema") or {}).get("id")))

    def _new_flows(self, request: Request, obj: dict[str, Any]) -> None:
        sources = [self.flow_objects["sourceConnections"].get(i) for i in obj.get("sourceConnectionIds") or ()]
        targets = [self.flow_objects["targetConnections"].get(i) for i in obj.get("targetConnectionIds") or ()]
        if not sources or not targets or None in sources or None in targets:
            raise ApiError(400, "Bad Request", "sourceConnectionIds and targetConnectionIds must exist")
        for source in sources:
            base = self.flow_objects["connections"][source["baseConnectionId"]]  # type: ignore[index] # checked above: no None among them
            inlet_id = base["auth"]["params"]["inletId"]
            for target in targets:
                schema_id = target["data"]["schema"]["id"]  # type: ignore[index] # checked above: no None among them
                composed, record_type = self.composed(schema_id)
                self.em.dcs.bind_dataset(inlet_id, target["params"]["dataSetId"], obj["id"],  # type: ignore[index] # checked above: no None among them
                                         DatasetConfig(schema_id=schema_id, record_type=record_type,
                                                       json_schema=composed))

    async def connection_item(self, request: Request, body: Any) -> Response:
        obj = self.flow_objects["connections"].get(request.path_params["connection_id"])
        if obj is None:
            raise ApiError(404, "Not Found", "connection")
        return _json({"items": [obj]})

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
            Route(f"{fs}/connections/{{connection_id}}", w(self.connection_item), methods=["GET"]),
            Route(f"{fs}/{{kind}}", w(self.flow_list), methods=["GET", "POST"]),
            Route("/__emulator/platform", lambda request: _json(self.inventory()), methods=["GET"]),
        ]


def _filter(prop: str | None, field: str) -> str | None:
    """``property=title==X`` → X (the only filter form provision uses)."""
    if prop and prop.startswith(f"{field}=="):
        return prop[len(field) + 2:]
    return None
