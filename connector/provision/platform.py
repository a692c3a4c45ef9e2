"""A small client for the Experience Platform APIs ``provision`` uses: Identity Service, Schema
Registry, Catalog and Flow Service. Lookups by name/title (every page of them), reads by id,
creation, and nothing more.

Adobe's ``aepp`` package covers these APIs but pulls in pandas, matplotlib, pygraphviz (a C build)
and psycopg2, and its IMS endpoint is fixed: it can be pointed at neither a slim image nor the
emulator. These few calls on httpx (already a dependency) are easier to keep right.

Every failure is a :class:`PlatformError` naming the call and AEP's answer (Flow Service's
``report`` included); an answer of an unexpected shape is one too, never an AttributeError.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from connector.config import ImsConfig
from connector.delivery.auth import TokenProvider
from connector.delivery.egress import AepHttpConfig, aep_client, describe_http_error
from connector.errors import AuthFailure, ConnectorError, TransientError

SCHEMA_REGISTRY = "/data/foundation/schemaregistry"
CATALOG = "/data/foundation/catalog"
FLOW_SERVICE = "/data/foundation/flowservice"
IDENTITY = "/data/core/idnamespace"
XED_ID = "application/vnd.adobe.xed-id+json"
XED = "application/vnd.adobe.xed+json"
# Catalog: "for service tokens, the maximum limit is 20" (Filter Catalog data using query parameters).
CATALOG_LIMIT = 20
MAX_PAGES = 10_000  # a server whose `next` never ends is an error, not a hang


class PlatformError(ConnectorError):
    """A Platform API call failed; the message names the call and AEP's answer (never a credential)."""

    def __init__(self, what: str, status: int | None, detail: str) -> None:
        self.status = status
        super().__init__(f"{what}: {'HTTP ' + str(status) if status else 'no answer'} {detail}".rstrip())


class UnexpectedAnswer(PlatformError):
    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what, 200, f"unexpected answer: {detail}")


class Platform:
    def __init__(self, platform_url: str, org_id: str, sandbox: str, ims: ImsConfig,
                 http: AepHttpConfig | None = None, client: httpx.Client | None = None) -> None:
        # One client for IMS and the Platform APIs, built as the connector builds its own (egress.py).
        self._http = client or aep_client(http or AepHttpConfig(), timeout=30)
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
            raise PlatformError(what, None, describe_http_error(exc)) from None
        if resp.status_code >= 400:
            raise PlatformError(what, resp.status_code, _detail(resp))
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise UnexpectedAnswer(what, f"not JSON ({resp.headers.get('content-type', 'no content type')})") from None

    def _obj(self, what: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        found = self._call(what, method, path, **kw)
        if not isinstance(found, dict):
            raise UnexpectedAnswer(what, f"{type(found).__name__} instead of an object")
        return found

    def _linked_pages(self, what: str, path: str, params: dict[str, str], accept: str) -> Iterator[dict[str, Any]]:
        """Schema Registry and Flow Service lists: follow ``_links.next`` until it is null or absent.

        The next page is asked for with our own path and the link's query (``start``, ``limit``,
        ``continuationToken`` ...) over our parameters: Flow Service's links are relative to the
        service and the Schema Registry's absolute, and neither form is then ours to resolve."""
        seen: set[tuple[tuple[str, str], ...]] = set()
        for _ in range(MAX_PAGES):
            seen.add(tuple(sorted(params.items())))
            page = self._obj(what, "GET", path, params=params, accept=accept)
            yield page
            query = _next_query(page)
            if query is None:
                return
            params = {**params, **query}
            if tuple(sorted(params.items())) in seen:
                raise UnexpectedAnswer(what, "the next-page link leads back to a page already read")
        raise UnexpectedAnswer(what, f"more than {MAX_PAGES} pages")

    # -- Identity Service ----------------------------------------------------------------------

    def namespaces(self) -> dict[str, dict[str, Any]]:
        """Every namespace the sandbox knows (standard and custom), by code (one answer: not paged)."""
        what = "list identity namespaces"
        found = self._call(what, "GET", f"{IDENTITY}/identities")
        if not isinstance(found, list):
            raise UnexpectedAnswer(what, f"{type(found).__name__} instead of a list")
        return {ns["code"]: ns for ns in found if isinstance(ns, dict) and "code" in ns}

    def create_namespace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._obj(f"create identity namespace {body['code']}", "POST", f"{IDENTITY}/identities", body=body)

    # -- Schema Registry -----------------------------------------------------------------------

    def _find_listed(self, what: str, path: str, accept: str, items_key: str, name_key: str, id_key: str,
                     name: str) -> dict[str, Any] | None:
        """The object named ``name`` in a paged list (filtered by the API where it can be), or None.
        Schema Registry and Flow Service page and shape their lists alike, under other keys."""
        for page in self._linked_pages(what, path, {"property": f"{name_key}=={name}"}, accept):
            items = page.get(items_key, [])
            if not isinstance(items, list):
                raise UnexpectedAnswer(what, f"{items_key} is not a list")
            for item in items:
                if isinstance(item, dict) and item.get(name_key) == name:
                    if not isinstance(item.get(id_key), str):
                        raise UnexpectedAnswer(what, f"{name!r} has no {id_key}")
                    return item
        return None

    def _find_xdm(self, kind: str, title: str) -> dict[str, Any] | None:
        return self._find_listed(f"list {kind}", f"{SCHEMA_REGISTRY}/tenant/{kind}", XED_ID, "results", "title", "$id",
                                 title)

    def find_field_group(self, title: str) -> dict[str, Any] | None:
        return self._find_xdm("fieldgroups", title)

    def create_field_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._created_xdm(f"create field group {body['title']!r}", "fieldgroups", body)

    def find_schema(self, title: str) -> dict[str, Any] | None:
        return self._find_xdm("schemas", title)

    def get_schema(self, schema_id: str) -> dict[str, Any]:
        return self._obj("read schema", "GET", f"{SCHEMA_REGISTRY}/tenant/schemas/{quote(schema_id, safe='')}",
                         accept=f"{XED}; version=1")

    def create_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._created_xdm(f"create schema {body['title']!r}", "schemas", body)

    def _created_xdm(self, what: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        created = self._obj(what, "POST", f"{SCHEMA_REGISTRY}/tenant/{kind}", body=body, accept=XED)
        if not isinstance(created.get("$id"), str):
            raise UnexpectedAnswer(what, "no $id")
        return created

    def patch_schema(self, schema_id: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._obj("enable schema for Profile", "PATCH",
                         f"{SCHEMA_REGISTRY}/tenant/schemas/{quote(schema_id, safe='')}", body=ops, accept=XED)

    # -- Catalog -------------------------------------------------------------------------------

    def datasets(self, name: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every dataset (of that name), by id. Catalog pages by ``start`` (an offset) and ``limit``:
        read until a page comes back empty (a page shorter than the limit is not proof of the end:
        the service may cap it lower)."""
        what = "list datasets"
        start, seen = 0, set[str]()
        for _ in range(MAX_PAGES):
            params = {"properties": "name,schemaRef,tags", "limit": str(CATALOG_LIMIT), "start": str(start)}
            found = self._call(what, "GET", f"{CATALOG}/dataSets", params={**params, **({"name": name} if name else {})})
            if found is None or found == {}:
                return
            if not isinstance(found, dict):
                raise UnexpectedAnswer(what, f"{type(found).__name__} instead of an object of datasets")
            if seen.issuperset(found):
                raise UnexpectedAnswer(what, "a page repeated datasets already read")
            for ds_id, ds in found.items():
                if isinstance(ds, dict) and ds_id not in seen:
                    yield ds_id, ds
            seen.update(found)
            start += len(found)
        raise UnexpectedAnswer(what, f"more than {MAX_PAGES} pages")

    def find_dataset(self, name: str) -> tuple[str, dict[str, Any]] | None:
        return next(((i, ds) for i, ds in self.datasets(name) if ds.get("name") == name), None)

    def create_dataset(self, body: dict[str, Any]) -> str:
        what = f"create dataset {body['name']!r}"
        created = self._call(what, "POST", f"{CATALOG}/dataSets", body=body, params={"requestDataSource": "true"})
        if not isinstance(created, list) or not created or not isinstance(created[0], str):
            raise UnexpectedAnswer(what, "not [\"@/dataSets/<id>\"]")
        return created[0].rsplit("/", 1)[-1]

    # -- Flow Service --------------------------------------------------------------------------

    def _find_flow_object(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._find_listed(f"list {kind}", f"{FLOW_SERVICE}/{kind}", "application/json", "items", "name", "id",
                                 name)

    def _get_flow_object(self, kind: str, object_id: str) -> dict[str, Any]:
        what = f"read {kind} {object_id}"
        items = self._obj(what, "GET", f"{FLOW_SERVICE}/{kind}/{quote(object_id, safe='')}").get("items")
        if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
            raise UnexpectedAnswer(what, "not {\"items\": [<one object>]}")
        return items[0]

    def _create_flow_object(self, kind: str, body: dict[str, Any]) -> str:
        what = f"create {kind} {body['name']!r}"
        created = self._obj(what, "POST", f"{FLOW_SERVICE}/{kind}", body=body)
        if not isinstance(created.get("id"), str):
            raise UnexpectedAnswer(what, "no id")
        return str(created["id"])

    def find_connection(self, name: str) -> dict[str, Any] | None:
        return self._find_flow_object("connections", name)

    def get_connection(self, connection_id: str) -> dict[str, Any]:
        return self._get_flow_object("connections", connection_id)

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

    def get_flow(self, flow_id: str) -> dict[str, Any]:
        return self._get_flow_object("flows", flow_id)

    def create_flow(self, body: dict[str, Any]) -> str:
        return self._create_flow_object("flows", body)


def _next_query(page: dict[str, Any]) -> dict[str, str] | None:
    """The query of ``_links.next.href``; None on the last page, where the link is null (Schema
    Registry: ``"next": null``), an empty object, or absent."""
    links = page.get("_links")
    nxt = links.get("next") if isinstance(links, dict) else None
    href = nxt.get("href") if isinstance(nxt, dict) else nxt
    if not href or not isinstance(href, str):
        return None
    return dict(parse_qsl(urlsplit(href).query, keep_blank_values=True))


def _detail(resp: httpx.Response) -> str:
    """AEP's own words: title, detail/message, and Flow Service's ``report`` (its detailed message
    and any other plain-text fields), without repeating a sentence."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    parts: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())

    for key in ("title", "detail", "message", "error_description", "errorMessage"):
        add(body.get(key))
    report = body.get("report")
    if isinstance(report, dict):
        for key, value in report.items():
            if key not in ("request-id", "requestId", "tenantInfo") and isinstance(value, str):
                add(value if key in ("detailed-message", "message") else f"{key}: {value}")
            elif isinstance(value, list):
                for entry in value[:10]:
                    add(entry if isinstance(entry, str) else None)
    if not parts:
        return str(body)[:300]
    return " — ".join(parts)[:1500]
