"""What the AEP side needs, as the Platform APIs' request bodies: identity namespaces, the two tenant
field groups, the two schemas, the datasets, the HTTP API streaming connection and its dataflows.

Pure functions of the mapping's declaration (:mod:`connector.transform.tenant`) and a few names;
``capillary-aep xdm export`` writes them as files, ``capillary-aep provision`` sends them. No I/O.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from connector.transform import tenant

Kind = Literal["event", "profile"]
KINDS: tuple[Kind, ...] = ("event", "profile")

EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
# Class, then the standard field groups, of each schema: what the connector writes besides the tenant
# block (scripts/build_xdm_schemas.py builds the pre-flight schemas from the same list).
COMPOSITIONS: dict[Kind, tuple[str, ...]] = {
    "event": (
        EVENT_CLASS,
        "https://ns.adobe.com/xdm/context/experienceevent-commerce",
        "https://ns.adobe.com/xdm/context/experienceevent-loyalty-details",
    ),
    "profile": (
        PROFILE_CLASS,
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/mixins/profile/profile-loyalty-details",
        "https://ns.adobe.com/xdm/context/profile-person-details",
        "https://ns.adobe.com/xdm/context/profile-personal-details",
        "https://ns.adobe.com/xdm/common/external-source-system-audit-details",
    ),
}
XED_FULL = "application/vnd.adobe.xed-full+json;version=1"
# Flow Service ids (aep-streaming-api.md §1).
HTTP_API_CONNECTION_SPEC = "bc7b00d6-623a-4dfc-9fdb-f1240aeadaeb"
DATA_LAKE_CONNECTION_SPEC = "c604ff05-7f1a-43c0-8e18-33bf874cb11c"
HTTP_API_FLOW_SPEC = "d8a6f005-7eaf-4153-983e-e8574508b877"  # XDM payloads, no Data Prep mapping


@dataclass(frozen=True, slots=True)
class Names:
    """The titles everything is created under and found by again (a second run matches them)."""

    prefix: str = "Capillary loyalty"

    def field_group(self, kind: Kind) -> str:
        return f"{self.prefix} {'event' if kind == 'event' else 'profile'} fields"

    def schema(self, kind: Kind) -> str:
        return f"{self.prefix} {'events' if kind == 'event' else 'profiles'}"

    def dataset(self, kind: Kind) -> str:
        return self.schema(kind)

    def connection(self) -> str:
        return f"{self.prefix} streaming"

    def source_connection(self) -> str:
        return f"{self.prefix} streaming source"

    def target_connection(self, kind: Kind) -> str:
        return f"{self.schema(kind)} target"

    def flow(self, kind: Kind) -> str:
        return f"{self.schema(kind)} dataflow"


def placeholder(title: str) -> str:
    """Where an exported schema names a tenant field group whose ``$id`` AEP assigns on creation."""
    return "field-group:" + title.lower().replace(" ", "-")


# -- Identity Service -----------------------------------------------------------------------------

def namespaces(customer_id: str, external_id: str, card: str) -> list[dict[str, Any]]:
    """The custom identity namespaces (Email and Phone are standard: they exist in every sandbox)."""
    described = ((customer_id, "Capillary customer id (customerIdentifiers.customerId)"),
                 (external_id, "Capillary external id (customerIdentifiers.externalId)"),
                 (card, "Loyalty card number (Capillary card enrichment)"))
    return [{"name": code, "code": code, "description": text, "idType": "CROSS_DEVICE"} for code, text in described]


# -- Schema Registry ------------------------------------------------------------------------------

def field_group(kind: Kind, tenant_id: str, names: Names = Names()) -> dict[str, Any]:
    """The tenant field group of one schema: ``_<tenant>.capillary`` as the mapping declares it."""
    capillary = tenant.event_tenant_schema() if kind == "event" else tenant.profile_tenant_schema()
    key, block = tenant.tenant_block(tenant_id, capillary, closed=False)
    return {
        "title": names.field_group(kind),
        "description": "Capillary fields XDM has no place for, written by capillary-aep-connector "
                       "(generated from its mapping: `capillary-aep xdm export`).",
        "type": "object",
        "meta:intendedToExtend": [COMPOSITIONS[kind][0]],
        "definitions": {"capillary": {"properties": {key: _titled(block)}}},
        "allOf": [{"$ref": "#/definitions/capillary"}],
    }


def _titled(schema: dict[str, Any], title: str | None = None) -> dict[str, Any]:
    """A copy with each field titled by its name, as the Schema Registry shows fields."""
    out = copy.deepcopy(schema)
    if title is not None:
        out.setdefault("title", title)
    if "properties" in out:
        out["properties"] = {k: _titled(v, k) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict) and "properties" in out["items"]:
        out["items"] = _titled(out["items"])
    if isinstance(out.get("additionalProperties"), dict) and "properties" in out["additionalProperties"]:
        out["additionalProperties"] = _titled(out["additionalProperties"])
    return out


def schema(kind: Kind, tenant_group_id: str | None = None, names: Names = Names()) -> dict[str, Any]:
    """The schema: class, standard field groups and the tenant group (by ``$id`` once it exists,
    else :func:`placeholder`)."""
    group = tenant_group_id or placeholder(names.field_group(kind))
    refs = [*COMPOSITIONS[kind], group]
    return {
        "type": "object",
        "title": names.schema(kind),
        "description": ("Capillary loyalty events as ExperienceEvents" if kind == "event"
                        else "Capillary loyalty profile updates (XDM Individual Profile)")
                       + ", written by capillary-aep-connector.",
        "allOf": [{"$ref": ref} for ref in refs],
    }


UNION_PATCH: list[dict[str, Any]] = [{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}]


# -- Catalog --------------------------------------------------------------------------------------

def dataset(kind: Kind, schema_id: str, names: Names = Names()) -> dict[str, Any]:
    """A dataset on the schema, enabled for Profile and Identity Service."""
    return {
        "name": names.dataset(kind),
        "description": "Written by capillary-aep-connector through its HTTP API dataflow.",
        "schemaRef": {"id": schema_id, "contentType": XED_FULL},
        "tags": {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]},
    }


# -- Flow Service ---------------------------------------------------------------------------------

def connection(names: Names = Names(), authenticated: bool = True) -> dict[str, Any]:
    """The HTTP API streaming (base) connection: XDM payloads, authenticated by default."""
    return {
        "name": names.connection(),
        "description": "Capillary loyalty events from capillary-aep-connector",
        "connectionSpec": {"id": HTTP_API_CONNECTION_SPEC, "version": "1.0"},
        "auth": {"specName": "Streaming Connection", "params": {
            "sourceId": names.connection(), "dataType": "xdm", "name": names.connection(),
            "authenticationRequired": authenticated}},
    }


def source_connection(base_connection_id: str, names: Names = Names()) -> dict[str, Any]:
    return {"name": names.source_connection(), "baseConnectionId": base_connection_id,
            "connectionSpec": {"id": HTTP_API_CONNECTION_SPEC, "version": "1.0"}}


def target_connection(kind: Kind, schema_id: str, dataset_id: str, names: Names = Names()) -> dict[str, Any]:
    return {"name": names.target_connection(kind),
            "connectionSpec": {"id": DATA_LAKE_CONNECTION_SPEC, "version": "1.0"},
            "data": {"schema": {"id": schema_id, "version": XED_FULL}},
            "params": {"dataSetId": dataset_id}}


def flow(kind: Kind, source_id: str, target_id: str, names: Names = Names()) -> dict[str, Any]:
    return {"name": names.flow(kind), "flowSpec": {"id": HTTP_API_FLOW_SPEC, "version": "1.0"},
            "sourceConnectionIds": [source_id], "targetConnectionIds": [target_id]}
