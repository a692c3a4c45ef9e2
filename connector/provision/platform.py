"""A small client for the Experience Platform APIs ``provision`` uses: Identity Service, Schema
Registry, Catalog and Flow Service. Lookups by name/title, creation, and nothing more.

Adobe's ``aepp`` package covers these APIs but pulls in pandas, matplotlib, pygraphviz (a C build)
and psycopg2, and its IMS endpoint is fixed: it can be pointed at neither a slim image nor the
emulator. These few calls on httpx (already a dependency) are easier to keep right.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from connector.auth import TokenProvider
from connector.config import ImsConfig
from connector.errors import AuthFailure, ConnectorError, TransientError

SCHEMA_REGISTRY = "/data/foundation/schemaregistry"
CATALOG = "/data/foundation/catalog"
FLOW_SERVICE = "/data/foundation/flowservice"
IDENTITY = "/data/core/idnamespace"
XED_ID = "application/vnd.adobe.xed-id+json"
XED = "application/vnd.adobe.xed+json"


class PlatformError(ConnectorError):
    """A Platform API call failed; the message names the call and AEP's answer (never a credential)."""

    def __init__(self, what: str, status: int | None, detail: str) -> None:
        self.status = status
        super().__init__(f"{what}: {'HTTP ' + str(status) if status else 'no answer'} {detail}".rstrip())


class Platform:
    def __init__(self, platform_url: str, org_id: str, sandbox: str, ims: ImsConfig,
                 client: httpx.Client | None = None) -> None:
        self._http = client or httpx.Client(timeout=30)
        self._base = platform_url.rstrip("/")
        self._tokens = TokenProvider(ims, self._http)
        self._headers = {"x-api-key": ims.client_id, "x-gw-ims-org-id": org_id, "x-sandbox-name": sandbox}

    def close(self) -> None:
        self._http.close()

    def _call(self, what: str, method: str, path: str, *, body: Any = None, accept: str = "application/json",
              params: dict[str, str] | None = None, content_type: str = "application/json") -> Any:
        try:
            token = self._tokens.token()
        except (AuthFailure, TransientError) as exc:
            raise PlatformError("IMS access token", None, str(exc)) from None
        headers = {**self._headers, "Authorization": f"Bearer {token}", "Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            resp = self._http.request(method, self._base + path, json=body, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise PlatformError(what, None, type(exc).__name__) from None
        if resp.status_code >= 400:
            raise PlatformError(what, resp.status_code, _detail(resp))
        return resp.json() if resp.content else None

    # -- Identity Service ----------------------------------------------------------------------

    def namespaces(self) -> dict[str, dict[str, Any]]:
        """Every namespace the sandbox knows (standard and custom), by code."""
        found = self._call("list identity namespaces", "GET", f"{IDENTITY}/identities")
        return {ns["code"]: ns for ns in found or () if isinstance(ns, dict) and "code" in ns}

    def create_namespace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"create identity namespace {body['code']}", "POST", f"{IDENTITY}/identities", body=body)

    # -- Schema Registry -----------------------------------------------------------------------

    def _find_xdm(self, kind: str, title: str) -> dict[str, Any] | None:
        path: str | None = f"{SCHEMA_REGISTRY}/tenant/{kind}"
        params: dict[str, str] | None = {"property": f"title=={title}"}
        while path:
            page = self._call(f"list {kind}", "GET", path, accept=XED_ID, params=params)
            for item in page.get("results", ()):
                if item.get("title") == title:
                    return item
            path, params = _next_page(page.get("_links", {}).get("next", {}).get("href"), self._base)
        return None

    def find_field_group(self, title: str) -> dict[str, Any] | None:
        return self._find_xdm("fieldgroups", title)

    def create_field_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"create field group {body['title']!r}", "POST", f"{SCHEMA_REGISTRY}/tenant/fieldgroups",
                          body=body, accept=XED)

    def find_schema(self, title: str) -> dict[str, Any] | None:
        return self._find_xdm("schemas", title)

    def get_schema(self, schema_id: str) -> dict[str, Any]:
        return self._call("read schema", "GET", f"{SCHEMA_REGISTRY}/tenant/schemas/{quote(schema_id, safe='')}",
                          accept=f"{XED}; version=1")

    def create_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"create schema {body['title']!r}", "POST", f"{SCHEMA_REGISTRY}/tenant/schemas",
                          body=body, accept=XED)

    def patch_schema(self, schema_id: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("enable schema for Profile", "PATCH",
                          f"{SCHEMA_REGISTRY}/tenant/schemas/{quote(schema_id, safe='')}", body=ops, accept=XED)

    # -- Catalog -------------------------------------------------------------------------------

    def find_dataset(self, name: str) -> tuple[str, dict[str, Any]] | None:
        found = self._call("list datasets", "GET", f"{CATALOG}/dataSets",
                           params={"name": name, "properties": "name,schemaRef,tags"})
        for ds_id, ds in (found or {}).items():
            if isinstance(ds, dict) and ds.get("name") == name:
                return ds_id, ds
        return None

    def create_dataset(self, body: dict[str, Any]) -> str:
        created = self._call(f"create dataset {body['name']!r}", "POST", f"{CATALOG}/dataSets", body=body,
                             params={"requestDataSource": "true"})
        return str(created[0]).rsplit("/", 1)[-1]  # ["@/dataSets/<id>"]

    # -- Flow Service --------------------------------------------------------------------------

    def _find_flow_object(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self._call(f"list {kind}", "GET", f"{FLOW_SERVICE}/{kind}", params={"property": f"name=={name}"})
        for item in (found or {}).get("items", ()):
            if item.get("name") == name:
                return item
        return None

    def _create_flow_object(self, kind: str, body: dict[str, Any]) -> str:
        return str(self._call(f"create {kind} {body['name']!r}", "POST", f"{FLOW_SERVICE}/{kind}", body=body)["id"])

    def find_connection(self, name: str) -> dict[str, Any] | None:
        return self._find_flow_object("connections", name)

    def get_connection(self, connection_id: str) -> dict[str, Any]:
        found = self._call("read connection", "GET", f"{FLOW_SERVICE}/connections/{connection_id}")
        return found["items"][0]

    def create_connection(self, body: dict[str, Any]) -> str:
        return self._create_flow_object("connections", body)

    def find_source_connection(self, name: str) -> dict[str, Any] | None:
        return self._find_flow_object("sourceConnections", name)

    def create_source_connection(self, body: dict[str, Any]) -> str:
        return self._create_flow_object("sourceConnections", body)

    def find_target_connection(self, name: str) -> dict[str, Any] | None:
        return self._find_flow_object("targetConnections", name)

    def create_target_connection(self, body: dict[str, Any]) -> str:
        return self._create_flow_object("targetConnections", body)

    def find_flow(self, name: str) -> dict[str, Any] | None:
        return self._find_flow_object("flows", name)

    def create_flow(self, body: dict[str, Any]) -> str:
        return self._create_flow_object("flows", body)


def _next_page(link: Any, base: str) -> tuple[str | None, None]:
    if not link or not isinstance(link, str):
        return None, None
    return (link[len(base):] if link.startswith(base) else link), None


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        for key in ("title", "message", "detail", "error_description"):
            if isinstance(body.get(key), str):
                extra = body.get("detail") if key == "title" and isinstance(body.get("detail"), str) else ""
                return f"{body[key]} {extra}".strip()[:300]
    return str(body)[:300]
