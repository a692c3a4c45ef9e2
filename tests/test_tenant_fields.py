"""The mapping's tenant fields are declared once, and the declaration is closed: whatever a builder
writes under ``_<tenant>.capillary`` without declaring it fails pre-flight validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from connector.dev.samples import generate_events, sample_xdm_config
from connector.transform import Transformer, TransformError, events, tenant, xdm_rules
from connector.transform.values import num, text

DOCS = Path(__file__).resolve().parent.parent / "docs" / "mapping.md"


def make(**xdm: object) -> Transformer:
    cfg = sample_xdm_config()
    if xdm:
        cfg = cfg.model_copy(update=xdm)
    return Transformer(cfg, org_id="EXAMPLE0RG@AdobeOrg", source_name="test")


@pytest.mark.parametrize("pii_mode", ["plain", "sha256"])
def test_every_sample_of_every_event_type_passes_the_closed_tenant_schema(pii_mode: str) -> None:
    cfg = sample_xdm_config()
    cfg = cfg.model_copy(update={"identity": cfg.identity.model_copy(update={"pii_mode": pii_mode})})
    transformer = Transformer(cfg, org_id="EXAMPLE0RG@AdobeOrg", source_name="test")
    seen: set[str] = set()
    for raw in generate_events(3000, seed=5):
        try:
            messages = transformer.transform(raw)
        except TransformError as exc:
            assert exc.reason != "xdm_invalid", exc  # a tenant field nobody declared
            continue
        seen.add(messages[0].event_name)
    assert seen == set(events.SPECS)


def test_a_field_written_but_not_declared_fails_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = make()
    raw = next(e for e in generate_events(2000, seed=3) if e.get("eventName") == "tierUpgraded"
               and "upgradedTierName" in _tenant_of(declared, e))
    spec = events.SPECS["tierUpgraded"]
    undeclared = dataclasses.replace(spec, computed=tuple(f for f in spec.computed if f[0] != "upgradedTierName"))
    monkeypatch.setitem(events.SPECS, "tierUpgraded", undeclared)
    transformer = make()
    with pytest.raises(TransformError) as info:
        transformer.transform(raw)
    assert info.value.reason == "xdm_invalid"
    assert "upgradedTierName" in str(info.value)


def _tenant_of(transformer: Transformer, raw: dict) -> dict:
    return transformer.transform(raw)[0].envelope["body"]["xdmEntity"]["_capillary"]["capillary"]


def test_passthrough_keeps_unknown_data_as_json_text_inside_the_closed_schema() -> None:
    raw = {"eventName": "badgeEarned", "eventId": "e-1", "createdAt": 1_700_000_000_000,
           "data": {"customerIdentifiers": {"customerId": 7}, "badge": {"id": "B-1", "tags": ["a"]}}}
    [ee] = make(unknown_events="passthrough").transform(raw)
    tenant_block = ee.envelope["body"]["xdmEntity"]["_capillary"]["capillary"]
    assert tenant_block["dataJson"] == '{"badge":{"id":"B-1","tags":["a"]}}'


def test_one_field_declared_with_two_types_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant.event_tenant_schema()  # consistent today
    spec = events.SPECS["cardUpdated"]
    monkeypatch.setitem(events.SPECS, "cardUpdated", dataclasses.replace(spec, computed=(("amount", text),)))
    with pytest.raises(tenant.DeclarationError, match="amount"):
        tenant.event_tenant_schema()


def test_records_declared_in_several_events_merge_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = events.SPECS["cardUpdated"]
    extra = events.record_of((("extraField", num),))
    monkeypatch.setitem(events.SPECS, "cardUpdated", dataclasses.replace(spec, computed=(("series_info", extra),)))
    series = tenant.event_tenant_schema()["properties"]["series_info"]["properties"]
    assert "extraField" in series and "discount_value" in series


def test_an_undeclared_converter_is_an_error() -> None:
    with pytest.raises(tenant.DeclarationError, match="lambda"):
        tenant.field_schema(lambda v: v)


def test_the_docs_table_is_the_declaration() -> None:
    """docs/mapping.md carries the generated table (python -m connector.transform.tenant)."""
    assert tenant.markdown_table() in DOCS.read_text()


# -- XDM's rules for custom fields (connector/transform/xdm_rules.py) -------------------------------

STRING_MAP = {"type": "object", "meta:xdmType": "map", "additionalProperties": {"type": "string"}}


@pytest.mark.parametrize(("field", "complaint"), [
    ({"type": "object", "additionalProperties": {"type": "string"}}, "must be a map"),  # no map marker
    ({**STRING_MAP, "additionalProperties": {"type": "object", "properties": {"a": {"type": "string"}}}},
     "string or integer"),  # a map of objects
    ({**STRING_MAP, "additionalProperties": {"type": "number"}}, "string or integer"),
    ({**STRING_MAP, "additionalProperties": {"type": "array", "items": {"type": "string"}}}, "string or integer"),
    ({**STRING_MAP, "properties": {"a": {"type": "string"}}}, "must not define properties"),
    ({"type": "object"}, "must define properties"),
    ({"type": "array"}, "needs items"),
    ({"type": "map"}, "not an XDM field type"),
])
def test_fields_aep_refuses_are_named_by_path(field: dict, complaint: str) -> None:
    found = xdm_rules.violations({"type": "object", "properties": {"outer": {"type": "object",
                                                                             "properties": {"bad": field}}}})
    assert len(found) == 1 and found[0].startswith("/outer/bad") and complaint in found[0], found


def test_legal_fields_pass() -> None:
    legal = {"type": "object", "properties": {
        "names": STRING_MAP, "counts": {**STRING_MAP, "additionalProperties": {"type": "integer"}},
        "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "when": {"type": "string", "format": "date-time"}, "n": {"type": "number"}}}
    assert xdm_rules.violations(legal) == []


def test_the_generated_tenant_fields_obey_the_rules() -> None:
    for schema in (tenant.event_tenant_schema(), tenant.profile_tenant_schema()):
        assert xdm_rules.violations(schema) == []
    assert tenant.event_tenant_schema()["properties"]["behavioralEventAttributes"] == STRING_MAP
    programs = tenant.profile_tenant_schema()["properties"]["programs"]["properties"]
    assert programs["points"] == STRING_MAP and programs["tierNumber"]["additionalProperties"] == {"type": "integer"}


def test_a_declaration_aep_would_refuse_fails_at_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    # A builder that writes a map of objects: AEP answers 400 to the field group, so deriving it must fail.
    spec = events.SPECS["pointsIssued"]
    shaped = events.record_of((("a", text),))
    map_of_objects = lambda value: value
    monkeypatch.setitem(tenant._SCALARS, map_of_objects,
                        {"type": "object", "additionalProperties": tenant.field_schema(shaped)})
    monkeypatch.setitem(events.SPECS, "pointsIssued",
                        dataclasses.replace(spec, tenant=(*spec.tenant, ("perProgram", map_of_objects))))
    with pytest.raises(tenant.DeclarationError, match="perProgram"):
        tenant.event_tenant_schema()
