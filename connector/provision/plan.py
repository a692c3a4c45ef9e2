"""``capillary-aep provision``: create what the AEP side is missing, in order, never twice.

Each step looks its object up by name/title first and creates it only when absent, so a second run
changes nothing (and a run cut short is finished by the next). ``dry_run`` looks up and reports
what would be created without creating anything. The result carries the ids the connector's
configuration needs, rendered as TOML by :func:`config_snippet`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from connector.provision import artifacts as art
from connector.provision.platform import Platform

Action = Literal["exists", "created", "would create", "updated", "would update"]
PENDING = "(to be created)"


@dataclass(slots=True)
class Step:
    what: str  # "identity namespace", "field group", ...
    name: str
    action: Action
    id: str = ""


@dataclass(slots=True)
class Result:
    steps: list[Step] = field(default_factory=list)
    schema_ids: dict[str, str] = field(default_factory=dict)
    dataset_ids: dict[str, str] = field(default_factory=dict)
    flow_ids: dict[str, str] = field(default_factory=dict)
    inlet_id: str = ""
    inlet_url: str = ""

    @property
    def created(self) -> list[Step]:
        return [s for s in self.steps if s.action in ("created", "updated")]

    @property
    def dcs_url(self) -> str:
        marker = "/collection/"
        return self.inlet_url.split(marker, 1)[0] if marker in self.inlet_url else ""


@dataclass(frozen=True, slots=True)
class Request:
    tenant_id: str
    customer_id_namespace: str
    external_id_namespace: str
    card_namespace: str
    names: art.Names = art.Names()
    authenticated: bool = True


class Provisioner:
    def __init__(self, platform: Platform, request: Request, *, dry_run: bool = False,
                 progress: Callable[[Step], None] = lambda step: None) -> None:
        self._api = platform
        self._req = request
        self._dry = dry_run
        self._progress = progress
        self.result = Result()

    def run(self) -> Result:
        self._namespaces()
        for kind in art.KINDS:
            self._schema(kind, self._field_group(kind))
            self._dataset(kind)
        source = self._connection()
        for kind in art.KINDS:
            self._flow(kind, source)
        return self.result

    def _step(self, what: str, name: str, found: str | None, create: Callable[[], str]) -> str:
        """Record and do one step: ``found`` is the existing object's id, else ``create`` makes it."""
        if found is not None:
            step = Step(what, name, "exists", found)
        elif self._dry:
            step = Step(what, name, "would create", PENDING)
        else:
            step = Step(what, name, "created", create())
        self.result.steps.append(step)
        self._progress(step)
        return step.id

    def _namespaces(self) -> None:
        req = self._req
        known = self._api.namespaces()
        for body in art.namespaces(req.customer_id_namespace, req.external_id_namespace, req.card_namespace):
            code = body["code"]
            existing = known.get(code)
            self._step("identity namespace", code, str(existing.get("id", code)) if existing else None,
                       lambda body=body: str(self._api.create_namespace(body).get("id", body["code"])))

    def _field_group(self, kind: art.Kind) -> str:
        names = self._req.names
        title = names.field_group(kind)
        existing = self._api.find_field_group(title)
        return self._step("field group", title, existing["$id"] if existing else None,
                          lambda: str(self._api.create_field_group(
                              art.field_group(kind, self._req.tenant_id, names))["$id"]))

    def _schema(self, kind: art.Kind, group_id: str) -> None:
        names = self._req.names
        title = names.schema(kind)
        existing = self._api.find_schema(title)
        schema_id = self._step("schema", title, existing["$id"] if existing else None,
                               lambda: str(self._api.create_schema(
                                   art.schema(kind, group_id if group_id != PENDING else None, names))["$id"]))
        self.result.schema_ids[kind] = schema_id
        if kind == "profile":
            self._union(title, schema_id)

    def _union(self, title: str, schema_id: str) -> None:
        """Profile reads a record schema only once it is in the union."""
        if schema_id != PENDING and "union" in self._api.get_schema(schema_id).get("meta:immutableTags", ()):
            step = Step("Profile enablement", title, "exists", schema_id)
        elif self._dry:
            step = Step("Profile enablement", title, "would update", schema_id)
        else:
            self._api.patch_schema(schema_id, art.UNION_PATCH)
            step = Step("Profile enablement", title, "updated", schema_id)
        self.result.steps.append(step)
        self._progress(step)

    def _dataset(self, kind: art.Kind) -> None:
        name = self._req.names.dataset(kind)
        existing = self._api.find_dataset(name)
        schema_id = self.result.schema_ids[kind]
        self.result.dataset_ids[kind] = self._step(
            "dataset", name, existing[0] if existing else None,
            lambda: self._api.create_dataset(art.dataset(kind, schema_id, self._req.names)))

    def _connection(self) -> str:
        names = self._req.names
        existing = self._api.find_connection(names.connection())
        base_id = self._step("streaming connection", names.connection(), existing["id"] if existing else None,
                             lambda: self._api.create_connection(art.connection(names, self._req.authenticated)))
        if base_id != PENDING:
            params = self._api.get_connection(base_id).get("auth", {}).get("params", {})
            self.result.inlet_id = str(params.get("inletId", ""))
            self.result.inlet_url = str(params.get("inletUrl", ""))
        existing = self._api.find_source_connection(names.source_connection())
        return self._step("source connection", names.source_connection(), existing["id"] if existing else None,
                          lambda: self._api.create_source_connection(art.source_connection(base_id, names)))

    def _flow(self, kind: art.Kind, source_id: str) -> None:
        names = self._req.names
        schema_id, dataset_id = self.result.schema_ids[kind], self.result.dataset_ids[kind]
        existing = self._api.find_target_connection(names.target_connection(kind))
        target_id = self._step("target connection", names.target_connection(kind),
                               existing["id"] if existing else None,
                               lambda: self._api.create_target_connection(
                                   art.target_connection(kind, schema_id, dataset_id, names)))
        existing = self._api.find_flow(names.flow(kind))
        self.result.flow_ids[kind] = self._step(
            "dataflow", names.flow(kind), existing["id"] if existing else None,
            lambda: self._api.create_flow(art.flow(kind, source_id, target_id, names)))


def config_snippet(result: Result, tenant_id: str) -> str:
    """The connector configuration's AEP ids, as TOML to paste or include."""
    lines = ["# Written by `capillary-aep provision`: the AEP side the connector sends to.", "[aep]"]
    if result.dcs_url:
        lines.append(f'dcs_url = "{result.dcs_url}"')
    lines += [f'inlet_id = "{result.inlet_id or PENDING}"', "", "[xdm]", f'tenant_id = "{tenant_id}"']
    for kind in art.KINDS:
        lines += ["", f"[xdm.{kind}]", f'dataset_id = "{result.dataset_ids.get(kind, PENDING)}"',
                  f'schema_id = "{result.schema_ids.get(kind, PENDING)}"',
                  f'flow_id = "{result.flow_ids.get(kind, PENDING)}"']
    return "\n".join(lines) + "\n"


def render_steps(steps: list[Step]) -> str:
    width = max((len(s.what) for s in steps), default=0)
    return "\n".join(f"  {s.action:<13} {s.what:<{width}}  {s.name}"
                     + (f"  [{s.id}]" if s.id and s.id != PENDING else "") for s in steps)


def as_dict(result: Result) -> dict[str, Any]:
    return {"inlet_id": result.inlet_id, "inlet_url": result.inlet_url, "schema_ids": result.schema_ids,
            "dataset_ids": result.dataset_ids, "flow_ids": result.flow_ids}
