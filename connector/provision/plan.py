"""``capillary-aep provision``: create what the AEP side is missing, in order, never twice.

Each step looks its object up by name/title first and creates it only when absent, so a second run
changes nothing (and a run cut short is finished by the next). An object found by name is reused
only if it is what this step would make (:mod:`connector.provision.checks`); otherwise the run stops
with a :class:`~connector.provision.checks.Mismatch` saying what differs. ``dry_run`` looks up,
checks and reports what would be created without creating anything. The result carries the ids the connector's
configuration needs, rendered as TOML by :func:`config_snippet`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from connector.provision import artifacts as art
from connector.provision import checks
from connector.provision.checks import Mismatch
from connector.provision.platform import Platform

Action = Literal["exists", "created", "would create", "updated", "would update"]
PENDING = "(to be created)"
# aep-streaming-api.md §12 (HTTP API streaming source tutorial): a new dataflow's inlet takes data a
# few minutes after creation; sending at once would only fill the dead-letter topic.
WARM_UP = ("AEP needs a few minutes (about 5) after a dataflow is created before its inlet accepts data: "
           "wait that long before starting the connector.")


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
    notes: list[str] = field(default_factory=list)

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
        if any(s.what == "dataflow" and s.action == "created" for s in self.result.steps):
            self.result.notes.append(WARM_UP)
        return self.result

    def _step(self, what: str, name: str, found: dict[str, Any] | None, found_id: str,
              differences: Callable[[dict[str, Any]], list[str]], create: Callable[[], str]) -> str:
        """Record and do one step: reuse ``found`` if it matches (else :class:`Mismatch`), or ``create``."""
        if found is not None:
            diffs = differences(found)
            if diffs:
                raise Mismatch(what, name, diffs)
            step = Step(what, name, "exists", found_id)
        elif self._dry:
            step = Step(what, name, "would create", PENDING)
        else:
            step = Step(what, name, "created", create())
        self._record(step)
        return step.id

    def _record(self, step: Step) -> None:
        self.result.steps.append(step)
        self._progress(step)

    def _namespaces(self) -> None:
        req = self._req
        known = self._api.namespaces()
        for body in art.namespaces(req.customer_id_namespace, req.external_id_namespace, req.card_namespace):
            code = body["code"]
            existing = known.get(code)
            self._step("identity namespace", code, existing, str((existing or {}).get("id", code)), _same,
                       functools.partial(self._create_namespace, body))

    def _create_namespace(self, body: dict[str, Any]) -> str:
        return str(self._api.create_namespace(body).get("id", body["code"]))

    def _field_group(self, kind: art.Kind) -> str:
        names = self._req.names
        title = names.field_group(kind)
        existing = self._api.find_field_group(title)
        return self._step("field group", title, existing, str((existing or {}).get("$id")), _same,
                          lambda: str(self._api.create_field_group(
                              art.field_group(kind, self._req.tenant_id, names))["$id"]))

    def _schema(self, kind: art.Kind, group_id: str) -> None:
        names = self._req.names
        title = names.schema(kind)
        listed = self._api.find_schema(title)
        existing = self._api.get_schema(str(listed["$id"])) if listed else None  # the list has no allOf
        schema_id = self._step(
            "schema", title, existing, str((listed or {}).get("$id")),
            lambda found: checks.schema(found, art.COMPOSITIONS[kind][0], group_id),
            lambda: str(self._api.create_schema(
                art.schema(kind, group_id if group_id != PENDING else None, names))["$id"]))
        self.result.schema_ids[kind] = schema_id
        self._union(title, schema_id, existing)

    def _union(self, title: str, schema_id: str, existing: dict[str, Any] | None) -> None:
        """Profile reads a schema's records only once it is in the union, and Catalog tags a dataset
        for Profile only on such a schema: both schemas join it before their datasets exist (events
        too, so segments can use loyalty events)."""
        if existing is not None and "union" in _ids(existing.get("meta:immutableTags")):
            step = Step("Profile enablement", title, "exists", schema_id)
        elif self._dry:
            step = Step("Profile enablement", title, "would update", schema_id)
        else:
            self._api.patch_schema(schema_id, art.UNION_PATCH)
            step = Step("Profile enablement", title, "updated", schema_id)
        self._record(step)

    def _dataset(self, kind: art.Kind) -> None:
        name = self._req.names.dataset(kind)
        existing = self._api.find_dataset(name)
        schema_id = self.result.schema_ids[kind]
        body = art.dataset(kind, schema_id, self._req.names)
        self.result.dataset_ids[kind] = self._step(
            "dataset", name, existing[1] if existing else None, existing[0] if existing else "",
            lambda found: checks.dataset(found, schema_id, body["tags"]),
            lambda: self._api.create_dataset(body))

    def _connection(self) -> str:
        names = self._req.names
        listed = self._api.find_connection(names.connection())
        existing = self._api.get_connection(str(listed["id"])) if listed else None  # with its auth params
        base_id = self._step("streaming connection", names.connection(), existing, str((listed or {}).get("id")),
                             lambda found: checks.connection(found, self._req.authenticated),
                             lambda: self._api.create_connection(art.connection(names, self._req.authenticated)))
        if base_id != PENDING:
            params = (existing or self._api.get_connection(base_id)).get("auth", {}).get("params", {})
            self.result.inlet_id = str(params.get("inletId", ""))
            self.result.inlet_url = str(params.get("inletUrl", ""))
        existing = self._api.find_source_connection(names.source_connection())
        return self._step("source connection", names.source_connection(), existing, str((existing or {}).get("id")),
                          lambda found: checks.source_connection(found, base_id),
                          lambda: self._api.create_source_connection(art.source_connection(base_id, names)))

    def _flow(self, kind: art.Kind, source_id: str) -> None:
        names = self._req.names
        schema_id, dataset_id = self.result.schema_ids[kind], self.result.dataset_ids[kind]
        existing = self._api.find_target_connection(names.target_connection(kind))
        target_id = self._step("target connection", names.target_connection(kind), existing,
                               str((existing or {}).get("id")),
                               lambda found: checks.target_connection(found, schema_id, dataset_id),
                               lambda: self._api.create_target_connection(
                                   art.target_connection(kind, schema_id, dataset_id, names)))
        existing = self._api.find_flow(names.flow(kind))
        self.result.flow_ids[kind] = flow_id = self._step(
            "dataflow", names.flow(kind), existing, str((existing or {}).get("id")),
            lambda found: checks.flow(found, source_id, target_id),
            lambda: self._api.create_flow(art.flow(kind, source_id, target_id, names)))
        if existing is None and not self._dry:
            state = self._api.get_flow(flow_id).get("state")
            if state != "enabled":  # created but not running: the connector's data would go nowhere
                raise Mismatch("dataflow", names.flow(kind), [f"created, but its state is {state!r}, not 'enabled'"])


def _same(found: dict[str, Any]) -> list[str]:
    """Namespaces and field groups: the name is the whole identity (schemas check their group)."""
    return []


def _ids(values: Any) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


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
