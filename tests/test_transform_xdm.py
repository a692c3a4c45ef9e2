"""Every emitted ``xdmEntity`` is valid against the *official* adobe/xdm schemas.

The schemas are read from the vendored subset in ``vendor/adobe-xdm`` and validated with ``jsonschema`` (draft
2020-12): JSON-LD names are translated as AEP's xed-full JSON does (``xdm:foo`` → ``foo``,
``@id`` → ``_id``), ``$ref``/``allOf`` are left to ``jsonschema`` to resolve, and every object that
XDM defines gets ``unevaluatedProperties: false`` (AEP rejects unknown fields) — so this check shares
no code with ``scripts/build_xdm_schemas.py``. The tenant namespace ``_capillary`` is free-form.

The compact run-time schemas (``connector/transform/xdm/*.json``) must agree: valid samples pass
both, broken entities fail both.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

XDM_ROOT = Path(__file__).resolve().parent.parent / "vendor" / "adobe-xdm" / "components"

import jsonschema  # noqa: E402

from connector.dev.samples import generate_events, sample_xdm_config  # noqa: E402
from connector.transform import Transformer  # noqa: E402
from connector.transform.validate import SCHEMA_DIR, XdmValidator  # noqa: E402

EXTENSIBLE_CONTEXT = "https://ns.adobe.com/xdm/common/extensible#/definitions/@context"
TENANT = "_capillary"
NOW_MS = 1_760_000_000_000
COMPOSITION = {
    "event": [
        "https://ns.adobe.com/xdm/context/experienceevent",
        "https://ns.adobe.com/xdm/context/experienceevent-commerce",
        "https://ns.adobe.com/xdm/context/experienceevent-loyalty-details",
    ],
    "profile": [
        "https://ns.adobe.com/xdm/context/profile",
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/mixins/profile/profile-loyalty-details",
        "https://ns.adobe.com/xdm/context/profile-person-details",
        "https://ns.adobe.com/xdm/context/profile-personal-details",
        "https://ns.adobe.com/xdm/common/external-source-system-audit-details",
    ],
}


def _rename(name: str) -> str:
    return "_id" if name == "@id" else name[4:] if name.startswith("xdm:") else name


def _translate(node: Any, defines_value: bool = False) -> Any:
    """JSON-LD schema → xed-full schema; ``defines_value``: node is the whole schema of a value."""
    if isinstance(node, list):
        return [_translate(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("$ref") == EXTENSIBLE_CONTEXT:
        return {}  # JSON-LD prefix rules only
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$schema":
            continue
        if key == "properties":
            out[key] = {_rename(k): _translate(v, True) for k, v in value.items()}
        elif key == "required":
            out[key] = [_rename(r) for r in value]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _translate(value, True)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_translate(v) for v in value if v.get("$ref") != EXTENSIBLE_CONTEXT]
        elif key == "definitions":
            out[key] = {k: _translate(v) for k, v in value.items()}
        else:
            out[key] = value
    objectish = "properties" in node or "$ref" in node or "allOf" in node
    if defines_value and objectish and "additionalProperties" not in node:
        out["unevaluatedProperties"] = False
    return out


def _format_checker() -> Any:
    """Formats AEP enforces, checked independently of connector.transform.validate."""
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", value):
            return False
        datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
        return True

    @checker.checks("date", raises=ValueError)
    def _date(value: object) -> bool:
        if isinstance(value, str):
            datetime.strptime(value, "%Y-%m-%d")
        return True

    @checker.checks("email")
    def _email(value: object) -> bool:
        return not isinstance(value, str) or re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value) is not None

    @checker.checks("uri-reference")
    def _uri_reference(value: object) -> bool:
        return not isinstance(value, str) or (value != "" and not re.search(r"\s", value) and ":" not in value)

    return checker


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = []
    for path in XDM_ROOT.rglob("*.schema.json"):
        doc = json.loads(path.read_text())
        if "$id" in doc:
            resources.append((doc["$id"], Resource.from_contents(_translate(doc), default_specification=DRAFT202012)))
    registry = Registry().with_resources(resources)
    checker = _format_checker()
    validators = {}
    for kind, ids in COMPOSITION.items():
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [{"$ref": i} for i in ids],
            "properties": {TENANT: {"type": "object"}},
            "unevaluatedProperties": False,
        }
        validators[kind] = jsonschema.Draft202012Validator(root, registry=registry, format_checker=checker)
    return validators


@pytest.fixture(scope="module")
def compact() -> XdmValidator:
    return XdmValidator.load("capillary")


@pytest.fixture(scope="module")
def entities() -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, event name, xdmEntity) for every message of 500 samples: all event types, both PII modes."""
    out = []
    for pii_mode, seed in (("plain", 21), ("sha256", 22)):
        cfg = sample_xdm_config(identity={"pii_mode": pii_mode})
        transformer = Transformer(cfg, org_id="X@AdobeOrg", source_name="test", now=lambda: NOW_MS / 1000)
        events = generate_events(150, seed=seed, now_ms=NOW_MS)
        events += generate_events(100, seed=seed, now_ms=NOW_MS, event_names=_rare_events())
        for event in events:
            for message in transformer.transform(event):
                out.append((message.kind, message.event_name, message.envelope["body"]["xdmEntity"]))
    return out


def _rare_events() -> list[str]:
    from connector.dev.samples import MIX

    return [name for name, weight in MIX.items() if weight < 30]


def _errors(validator: Any, entity: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(entity)]


def test_samples_cover_every_event_type_and_both_kinds(entities: list[tuple[str, str, dict[str, Any]]]) -> None:
    from connector.transform import EVENT_NAMES

    assert {name for _, name, _ in entities} == set(EVENT_NAMES)
    assert {kind for kind, _, _ in entities} == {"event", "profile"}


def test_every_entity_is_valid_against_the_official_schemas(official: dict[str, Any], entities: list) -> None:
    failures = []
    for kind, name, entity in entities:
        errors = _errors(official[kind], entity)
        if errors:
            failures.append((name, kind, errors[:3]))
    assert not failures, failures[:5]


def test_golden_outputs_are_valid_against_the_official_schemas(official: dict[str, Any]) -> None:
    for path in sorted((Path(__file__).parent / "golden").glob("*.expected.json")):
        for message in json.loads(path.read_text()):
            entity = message["envelope"]["body"]["xdmEntity"]
            assert _errors(official[message["kind"]], entity) == [], path.name


def test_compact_schemas_accept_the_same_samples(compact: XdmValidator, entities: list) -> None:
    for kind, name, entity in entities:
        assert compact.errors(kind, entity) == [], (name, kind)


@pytest.mark.parametrize(
    "kind, mutate",
    [
        ("event", lambda e: e.__setitem__("unknownTopLevel", "x")),
        ("event", lambda e: e.setdefault("commerce", {}).setdefault("order", {}).__setitem__("colour", "red")),
        ("event", lambda e: e.setdefault("loyalty", {}).__setitem__("pointsBalance", 5)),
        ("event", lambda e: e.__setitem__("timestamp", "19/08/2024 09:00")),
        ("event", lambda e: e.pop("timestamp")),
        ("event", lambda e: e.pop("_id")),
        ("event", lambda e: e.setdefault("commerce", {}).__setitem__("purchases", {"id": "no value"})),
        ("event", lambda e: e.setdefault("commerce", {}).setdefault("order", {}).__setitem__("currencyCode", "rupiah")),
        ("event", lambda e: e["identityMap"]["CapillaryCustomerId"][0].__setitem__("authenticatedState", "maybe")),
        ("event", lambda e: e["identityMap"]["CapillaryCustomerId"][0].__setitem__("id", 42)),
        ("profile", lambda e: e.setdefault("loyalty", {}).__setitem__("points", "120")),
        ("profile", lambda e: e.setdefault("loyalty", {}).__setitem__("tierExpiryDate", "2025-06-29")),
        ("profile", lambda e: e.__setitem__("personalEmail", {"address": "not-an-email"})),
        ("profile", lambda e: e.__setitem__("person", {"name": {"firstName": "A", "nickname": "B"}})),
        ("profile", lambda e: e.__setitem__("_experience", {"x": 1})),
    ],
)
def test_broken_entities_fail_both_validators(
    official: dict[str, Any], compact: XdmValidator, entities: list, kind: str, mutate: Any
) -> None:
    entity = copy.deepcopy(next(e for k, _, e in entities if k == kind))
    assert _errors(official[kind], entity) == []
    mutate(entity)
    assert _errors(official[kind], entity), "official schema accepted a broken entity"
    assert compact.errors(kind, entity), "compact schema accepted a broken entity"


def test_unknown_key_outside_the_tenant_namespace_is_rejected(official: dict[str, Any], entities: list) -> None:
    entity = copy.deepcopy(next(e for k, _, e in entities if k == "event"))
    entity[TENANT]["capillary"]["anythingGoes"] = {"nested": [1, 2]}  # tenant: free-form
    assert _errors(official["event"], entity) == []
    entity["capillary"] = {"orgId": "1"}  # the same block without the underscore: not XDM
    assert any("capillary" in e for e in _errors(official["event"], entity))


def test_compact_schema_reports_at_most_five_violations(compact: XdmValidator) -> None:
    entity = {f"bad{i}": i for i in range(20)}
    assert len(compact.errors("event", entity)) == 5


def test_compact_schema_rejects_null_and_empty_values(compact: XdmValidator) -> None:
    base = {"_id": "a", "timestamp": "2024-01-01T00:00:00Z"}
    assert compact.errors("event", base) == []
    for broken in (
        {**base, "eventType": None},
        {**base, "eventType": ""},
        {**base, "commerce": {}},
        {**base, "loyalty": {"pointsGained": []}},
        {**base, TENANT: {"capillary": {"x": None}}},
        {**base, TENANT: {"capillary": {"x": ""}}},
    ):
        assert compact.errors("event", broken), broken


def test_compact_schemas_are_in_sync_with_the_build_script(tmp_path: Path) -> None:
    """The committed compact files are what scripts/build_xdm_schemas.py produces today."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "build_xdm_schemas.py"
    spec = importlib.util.spec_from_file_location("build_xdm_schemas", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.build(XDM_ROOT.parent, tmp_path)
    for name in ("experienceevent", "profile"):
        built = json.loads((tmp_path / f"{name}.json").read_text())
        committed = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
        assert built == committed, f"{name}.json is stale: run scripts/build_xdm_schemas.py"


def test_coalesced_profile_updates_are_valid_against_the_official_schema(
        official: dict[str, Any], compact: XdmValidator, entities: list) -> None:
    from connector.delivery.coalesce import merge_entities, primary_identity

    by_customer: dict[Any, list[dict[str, Any]]] = {}
    for kind, _name, entity in entities:
        if kind == "profile":
            by_customer.setdefault(primary_identity(entity), []).append(entity)
    merged_some = 0
    for updates in by_customer.values():
        if len(updates) > 1:
            merged = merge_entities(updates)
            assert _errors(official["profile"], merged) == []
            assert compact.errors("profile", merged) == []
            merged_some += 1
    assert merged_some >= 10
