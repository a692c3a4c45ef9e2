"""Emulator configuration: inlets (with their datasets), IMS clients and the behaviour flags that
§9 of the AEP streaming spec marks [UNCERTAIN].

Field names are snake_case; config files may also use camelCase aliases (``inletId``,
``authenticationRequired``...), which match the wording of the spec.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

DEMO_INLET_ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
DEMO_ORG_ID = "DEMO0RG0000000000000000@AdobeOrg"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_EVENT_DATASET_ID = "5f0000000000000000000e01"
DEMO_EVENT_SCHEMA_ID = "https://ns.adobe.com/capillary/schemas/capillary-loyalty-events"
DEMO_PROFILE_DATASET_ID = "5f0000000000000000000p01"
DEMO_PROFILE_SCHEMA_ID = "https://ns.adobe.com/capillary/schemas/capillary-loyalty-profiles"
DEMO_EVENT_FLOW_ID = "00000000-0000-4000-8000-00000000e001"
DEMO_PROFILE_FLOW_ID = "00000000-0000-4000-8000-0000000000f1"

# The scope set of an OAuth Server-to-Server credential with the Experience Platform API added.
AEP_SCOPES = ("openid", "session", "AdobeID", "read_organizations", "additional_info.projectedProductContext")

FailureStyle = Literal["docs", "v2024"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class DatasetConfig(_Model):
    schema_id: str = Field(..., min_length=1)  # the schema $id the dataset is bound to
    # "experience_event" datasets get Profile's first-wins `_id` dedup in the records view.
    record_type: Literal["experience_event", "profile"] = "experience_event"
    # JSON Schema (a dict, or a path to a .json file) for async/sync XDM validation; None = off.
    json_schema: dict[str, Any] | str | None = None


class InletConfig(_Model):
    inlet_id: str = Field(..., min_length=1)
    org_id: str = DEMO_ORG_ID
    sandbox: str = "prod"
    authentication_required: bool = True
    data_type: Literal["xdm", "raw"] = "xdm"
    flow_ids: list[str] = Field(default_factory=list)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    batch_failure_style: FailureStyle | None = None  # None: use EmulatorConfig.batch_failure_style

    @model_validator(mode="before")
    @classmethod
    def _dataset_shorthand(cls, data: Any) -> Any:
        # Allow {"datasets": {"<id>": "<schema $id>"}} as shorthand.
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            data = {
                **data,
                "datasets": {k: {"schema_id": v} if isinstance(v, str) else v for k, v in data["datasets"].items()},
            }
        return data


class ImsClientConfig(_Model):
    client_id: str = Field(..., min_length=1)
    # Adobe's console allows two active secrets per credential (rotation); either one works.
    client_secrets: list[str] = Field(..., min_length=1)
    org_id: str = DEMO_ORG_ID
    # Scopes this client may request; None allows any scope.
    scopes: list[str] | None = Field(default_factory=lambda: list(AEP_SCOPES))

    @model_validator(mode="before")
    @classmethod
    def _single_secret(cls, data: Any) -> Any:
        # Accept client_secret="x" as shorthand for client_secrets=["x"].
        if isinstance(data, dict):
            for key in ("client_secret", "clientSecret"):
                if key in data:
                    data = dict(data)
                    secret = data.pop(key)
                    data["client_secrets"] = [secret, *data.get("client_secrets", data.pop("clientSecrets", []))]
        return data


class EmulatorConfig(_Model):
    inlets: list[InletConfig] = Field(default_factory=list)
    ims_clients: list[ImsClientConfig] = Field(default_factory=list)

    # IMS: lifetime of issued tokens (v3 `expires_in` is in seconds; 86399 is what Adobe returns).
    token_ttl_s: float = Field(86399.0, gt=0)

    # [UNCERTAIN] 207 failure entries: "docs" {statusCode, message} or "v2024" {xactionId, status, message}.
    batch_failure_style: FailureStyle = "docs"
    # [UNCERTAIN] present-but-invalid/expired bearer token: 401 (HTTPSRC) or 403 (MULTI). Missing → 401.
    invalid_token_status: Literal[401, 403] = 401
    # [UNCERTAIN] status for an unknown inlet id (undocumented).
    unknown_inlet_status: int = Field(404, ge=400, le=599)
    # [UNCERTAIN] status for an unsupported Content-Type (400 or 415).
    unsupported_media_type_status: Literal[400, 415] = 415
    allow_missing_content_type: bool = False
    # [UNCERTAIN] gzip request bodies are undocumented; accept them (decoded) unless disabled.
    accept_gzip: bool = True
    # [UNCERTAIN] x-sandbox-name: OPENAPI says required, every client omits it.
    require_sandbox_header: bool = False
    # Flow ids are listed per inlet but only checked (header.flowId ∈ flow_ids) when this is on.
    enforce_flow_ids: bool = False
    # Sync validation was VA7-only; False answers syncValidation=true with 501.
    sync_validation_supported: bool = True
    sync_validation_rpm: int = Field(60, ge=1)

    # The tenant namespace (_<tenant_id>) the emulated Schema Registry accepts custom fields under.
    tenant_id: str = Field("capillary", pattern=r"^[A-Za-z0-9_]+$")
    # Reject (400) an inlet message that does not validate against its dataset's schema, as AEP
    # rejects fields the schema lacks; off: only the async validation of accepted messages.
    strict_schemas: bool = False
    # Items per page of the Platform API lists (Schema Registry, Catalog, Flow Service): tests set 1
    # so every lookup pages. Pages are cut before the name/title filter applies.
    platform_page_size: int = Field(20, ge=1, le=100)

    max_body_bytes: int = Field(1_048_576, ge=1)  # "1 MB" request cap → 413
    # Schema Registry endpoints answer 401 unless the request's Authorization header is exactly this
    # ("Basic <base64 user:pass>" or "Bearer <token>"); empty: open, like a local registry.
    registry_authorization: str = ""
    # Count messages with null/empty values in xdmEntity (about a quarter of the per-message cost).
    check_null_or_empty: bool = True
    store_bodies: bool = True  # keep accepted envelopes for /__emulator/messages
    max_stored_messages: int = Field(200_000, ge=0)  # beyond this, bodies are no longer kept
    max_stored_rejections: int = Field(10_000, ge=0)
    node_id: int = Field(1750, ge=0, le=9999)  # the middle part of xactionId/batchId

    def inlet(self, inlet_id: str) -> InletConfig | None:
        for inlet in self.inlets:
            if inlet.inlet_id == inlet_id:
                return inlet
        return None


def demo_config(**overrides: Any) -> EmulatorConfig:
    """One authenticated inlet with the event and profile datasets, and one IMS client.

    ``overrides`` replace top-level fields (``inlets=[...]``, ``token_ttl_s=5`` ...)."""
    base: dict[str, Any] = {
        "inlets": [
            InletConfig(
                inlet_id=DEMO_INLET_ID,
                org_id=DEMO_ORG_ID,
                authentication_required=True,
                flow_ids=[DEMO_EVENT_FLOW_ID, DEMO_PROFILE_FLOW_ID],
                datasets={
                    DEMO_EVENT_DATASET_ID: DatasetConfig(schema_id=DEMO_EVENT_SCHEMA_ID),
                    DEMO_PROFILE_DATASET_ID: DatasetConfig(schema_id=DEMO_PROFILE_SCHEMA_ID, record_type="profile"),
                },
            )
        ],
        "ims_clients": [
            ImsClientConfig(client_id=DEMO_CLIENT_ID, client_secrets=[DEMO_CLIENT_SECRET], org_id=DEMO_ORG_ID)
        ],
    }
    base.update(overrides)
    return EmulatorConfig.model_validate(base)


def load_config(path: str | Path, **overrides: Any) -> EmulatorConfig:
    """Read a JSON or TOML file whose top-level keys override :func:`demo_config` (an empty file is
    the demo). Relative ``json_schema`` paths are resolved against the file's directory."""
    p = Path(path)
    text = p.read_text()
    data: dict[str, Any] = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text or "{}")
    data.update(overrides)
    cfg = demo_config(**data)
    for inlet in cfg.inlets:
        for ds in inlet.datasets.values():
            if isinstance(ds.json_schema, str) and not Path(ds.json_schema).is_absolute():
                ds.json_schema = str(p.parent / ds.json_schema)
    return cfg
