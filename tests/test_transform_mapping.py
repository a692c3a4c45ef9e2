"""Transformer behaviour: _id, timestamps, identities and PII, routing, profiles, unknown events."""

from __future__ import annotations

import copy
import hashlib
import json
from io import BytesIO
from typing import Any

import orjson
import pytest
from fastavro import schemaless_reader, schemaless_writer

from connector.decode.avro_schemas import LocalSchemas
from connector.dev.samples import generate_events, sample_xdm_config
from connector.transform import REASONS, Transformer, TransformError, XdmMessage
from connector.transform import events as event_specs

NOW = 1_760_000_000.0
NOW_MS = int(NOW * 1000)
ORG = "ORG@AdobeOrg"


def make(**overrides: Any) -> Transformer:
    return Transformer(sample_xdm_config(**overrides), org_id=ORG, source_name="src", now=lambda: NOW)


def event(name: str = "pointsIssued", **data: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventName": name, "eventId": "11111111-2222-4333-8444-555555555555", "orgId": 51186, "refId": "51186_r",
        "createdAt": NOW_MS - 60_000,
        "data": {"customerIdentifiers": {"customerId": 387979652}, "loyaltyProgramId": 2649, "totalPointsIssued": 10},
    }
    base["data"].update(data)
    return base


def entity(message: XdmMessage) -> dict[str, Any]:
    return message.envelope["body"]["xdmEntity"]


def assert_no_empties(value: Any, path: str = "") -> None:
    assert value is not None, path
    if isinstance(value, dict):
        assert value, path
        for key, item in value.items():
            assert isinstance(key, str) and key, path
            assert_no_empties(item, f"{path}/{key}")
    elif isinstance(value, list):
        assert value, path
        for i, item in enumerate(value):
            assert_no_empties(item, f"{path}/{i}")
    elif isinstance(value, str):
        assert value.strip(), path
    elif isinstance(value, float):
        assert value == value and abs(value) != float("inf"), path


# --- envelope and header ------------------------------------------------------------------------


def test_message_envelope_and_header() -> None:
    [ee, profile] = make().transform(event(programCurrentPoints=120))
    assert (ee.kind, ee.event_name, ee.event_type) == ("event", "pointsIssued", "loyalty.pointsIssued")
    assert (profile.kind, profile.event_type) == ("profile", "profile")
    header = ee.envelope["header"]
    assert header["schemaRef"] == {"id": "https://ns.adobe.com/capillary/schemas/capillary-loyalty-events",
                                   "contentType": "application/vnd.adobe.xed-full+json;version=1"}
    assert header["imsOrgId"] == ORG and header["datasetId"] == "5f1e0c0ffee0000000000001"
    assert header["flowId"] and header["source"] == {"name": "src"}
    assert ee.envelope["body"]["xdmMeta"]["schemaRef"] == header["schemaRef"]
    assert profile.envelope["header"]["datasetId"] == "5f1e0c0ffee0000000000002"
    with pytest.raises(AttributeError):
        ee.kind = "profile"  # type: ignore[misc]


def test_flow_id_omitted_when_empty_and_overrides_per_event() -> None:
    override = {"dataset_id": "tier-ds", "schema_id": "https://ns.adobe.com/capillary/schemas/tiers"}
    transformer = make(
        event={"dataset_id": "ev", "schema_id": "https://ns.adobe.com/capillary/schemas/ev"},
        event_overrides={"tierUpgraded": override},
        profile_overrides={"pointsIssued": override},
    )
    [ee, profile] = transformer.transform(event(programCurrentPoints=5))
    assert "flowId" not in ee.envelope["header"] and ee.envelope["header"]["datasetId"] == "ev"
    assert profile.envelope["header"]["datasetId"] == "tier-ds"
    tier = event("tierUpgraded", upgradedTierNumber=2)
    assert transformer.transform(tier)[0].envelope["header"]["datasetId"] == "tier-ds"


def test_no_profile_route_no_profile_messages() -> None:
    transformer = make(profile=None)
    for raw in generate_events(100, seed=3, now_ms=NOW_MS):
        assert [m.kind for m in transformer.transform(raw)] == ["event"]


def test_messages_are_fresh_dicts() -> None:
    transformer = make()
    a, b = transformer.transform(event())[0], transformer.transform(event())[0]
    assert a.envelope == b.envelope and a.envelope is not b.envelope
    assert a.envelope["header"] is not b.envelope["header"]


# --- _id and timestamp ----------------------------------------------------------------------------


def test_id_is_the_event_id_and_profile_id_derives_from_it() -> None:
    [ee, profile] = make().transform(event(programCurrentPoints=1))
    assert entity(ee)["_id"] == "11111111-2222-4333-8444-555555555555"
    assert entity(profile)["_id"] == "11111111-2222-4333-8444-555555555555-profile"


def test_missing_event_id_gives_a_stable_hash() -> None:
    raw = event()
    del raw["eventId"]
    first = entity(make().transform(raw)[0])["_id"]
    assert first == entity(make().transform(copy.deepcopy(raw))[0])["_id"]
    assert len(first) == 32 and int(first, 16) >= 0
    other = copy.deepcopy(raw)
    other["refId"] = "51186_other"
    assert entity(make().transform(other)[0])["_id"] != first


def test_event_id_with_a_colon_is_hashed() -> None:
    raw = event()
    raw["eventId"] = "urn:capillary:42"
    _id = entity(make().transform(raw)[0])["_id"]
    assert ":" not in _id and _id == hashlib.sha256(b"eventId|urn:capillary:42").hexdigest()[:32]


def test_timestamp_format() -> None:
    raw = event()
    raw["createdAt"] = 1724058034369
    assert entity(make().transform(raw)[0])["timestamp"] == "2024-08-19T09:00:34.369Z"


def test_future_timestamps_clamp_or_reject() -> None:
    within_skew = event()
    within_skew["createdAt"] = NOW_MS + 4_000
    assert entity(make().transform(within_skew)[0])["timestamp"] == "2025-10-09T08:53:24.000Z"
    future = event()
    future["createdAt"] = NOW_MS + 3_600_000
    assert entity(make().transform(future)[0])["timestamp"] == "2025-10-09T08:53:20.000Z"
    with pytest.raises(TransformError) as info:
        make(future_timestamps="reject").transform(future)
    assert info.value.reason == "future_timestamp"
    assert entity(make(future_timestamps="reject", future_skew_s=7200).transform(future)[0])["timestamp"]


# --- identities ---------------------------------------------------------------------------------


FULL_IDS = {"customerId": 387979652, "instore": {
    "mobile": "0919300000001", "email": " Asha@Example.COM ", "externalId": "EXT-1", "cardnumber": "C1",
    "cardNumbers": ["C1", "C2"]}}


def test_identity_map_plain() -> None:
    ids = entity(make().transform(event(customerIdentifiers=FULL_IDS))[0])["identityMap"]
    assert ids == {
        "CapillaryCustomerId": [{"id": "387979652", "authenticatedState": "ambiguous", "primary": True}],
        "CapillaryExternalId": [{"id": "EXT-1", "authenticatedState": "ambiguous"}],
        "Email": [{"id": "asha@example.com", "authenticatedState": "ambiguous"}],
        "Phone": [{"id": "919300000001", "authenticatedState": "ambiguous"}],
        "LoyaltyCardNumber": [{"id": "C1", "authenticatedState": "ambiguous"},
                              {"id": "C2", "authenticatedState": "ambiguous"}],
    }


def test_identity_map_sha256_has_no_clear_text_pii() -> None:
    transformer = make(identity={"pii_mode": "sha256", "authenticated_state": "authenticated"})
    raw = event("customerUpdated", customerIdentifiers=FULL_IDS, updatedFields=[
        {"fieldName": "email", "previousValue": "old@example.com", "currentValue": "Asha@Example.COM"}])
    messages = transformer.transform(raw)
    ids = entity(messages[0])["identityMap"]
    assert ids["Email_LC_SHA256"] == [{"id": hashlib.sha256(b"asha@example.com").hexdigest(),
                                       "authenticatedState": "authenticated"}]
    assert ids["Phone_SHA256"] == [{"id": hashlib.sha256(b"919300000001").hexdigest(), "authenticatedState": "authenticated"}]
    assert "Email" not in ids and "Phone" not in ids
    text = orjson.dumps([m.envelope for m in messages]).decode().lower()
    assert "@example.com" not in text and "919300000001" not in text
    assert "personalEmail" not in entity(messages[1]) and "mobilePhone" not in entity(messages[1])


def test_first_available_identifier_is_primary_without_customer_id() -> None:
    ids = entity(make().transform(event(customerIdentifiers={"instore": {"externalId": "EXT-9"}}))[0])["identityMap"]
    assert ids == {"CapillaryExternalId": [{"id": "EXT-9", "authenticatedState": "ambiguous", "primary": True}]}


def test_at_most_twenty_identities() -> None:
    cards = [f"CARD{i}" for i in range(40)]
    ids = entity(make().transform(event(customerIdentifiers={"customerId": 1, "instore": {"cardNumbers": cards}}))[0])
    assert sum(len(v) for v in ids["identityMap"].values()) == 20


def test_invalid_email_and_short_phone_are_dropped() -> None:
    ids = entity(make().transform(event(customerIdentifiers={"customerId": 1, "instore": {"email": "n/a", "mobile": "12"}}))[0])
    assert list(ids["identityMap"]) == ["CapillaryCustomerId"]


def test_no_identifier_at_all_is_missing_field() -> None:
    for customer in ({}, {"customerId": None}, None):
        with pytest.raises(TransformError) as info:
            make().transform(event(customerIdentifiers=customer))
        assert info.value.reason == "missing_field"


def test_merge_links_the_victim_identity() -> None:
    raw = generate_events(1, seed=1, now_ms=NOW_MS, event_names=["loyaltyCustomerMerge"])[0]
    ids = entity(make().transform(raw)[0])["identityMap"]["CapillaryCustomerId"]
    assert [i["id"] for i in ids] == [str(raw["data"]["survivorCustomerIdentifiers"]["customerId"]),
                                      str(raw["data"]["victimCustomerIdentifiers"]["customerId"])]
    assert ids[0]["primary"] is True and "primary" not in ids[1]


# --- event mappings -------------------------------------------------------------------------------


def _transaction(bill_type: str, currency: str = "IDR") -> dict[str, Any]:
    raw = event("transactionAdded")
    raw["data"] = {"customerIdentifiers": {"customerId": 5}, "transactionId": 9, "billNumber": "B-9", "amount": 90.0,
                   "discount": 10.0, "billType": bill_type, "currencyCode": currency}
    return raw


def test_purchase_return_and_mixed_transactions() -> None:
    regular = entity(make().transform(_transaction("REGULAR"))[0])
    assert regular["eventType"] == "commerce.purchases"
    assert regular["commerce"] == {"purchases": {"value": 1}, "order": {
        "purchaseID": "B-9", "priceTotal": 90.0, "discountAmount": 10.0, "currencyCode": "IDR"}}
    assert entity(make().transform(_transaction("MIXED"))[0])["eventType"] == "commerce.purchases"
    returned = entity(make().transform(_transaction("RETURN", currency=" "))[0])
    assert returned["eventType"] == "commerce.returns"
    assert returned["commerce"]["order"] == {"returns": {"returnID": "B-9"},
                                             "refunds": [{"refundAmount": 90.0, "refundReason": "return"}],
                                             "refundTotal": 90.0}


def test_points_issued_gains_and_balances() -> None:
    raw = event(regularPointsIssued=100, totalPointsIssued=125, programCurrentPoints=220, programLifetimePoints=900,
                promotionalPointsIssued=[{"promotionIdentifier": "P1", "promotionPoints": 25}],
                triggeringActivity={"name": "NewBill", "identifiers": [{"key": "billNumber", "value": "B1"},
                                                                       {"key": "BillId", "value": "77"}]})
    [ee, profile] = make().transform(raw)
    assert entity(ee)["loyalty"] == {"pointsGained": [
        {"value": 100, "loyaltyProgramId": "2649", "transactionId": "77"},
        {"value": 25, "promotionId": "P1", "loyaltyProgramId": "2649", "transactionId": "77"}]}
    assert entity(profile)["loyalty"] == {"points": 220, "lifetimePoints": 900}


def test_tier_names_are_cached_per_program() -> None:
    transformer = make()
    tiers = {"id": 978, "name": "Main", "isDefault": True,
             "tiers": [{"tierNumber": 1, "tierName": "silver"}, {"tierNumber": 2, "tierName": "GOLD"}]}
    first = transformer.transform(event("tierUpgraded", loyaltyProgramId=978, loyaltyProgramDetails=tiers,
                                        previousTierNumber=1, upgradedTierNumber=2))
    assert entity(first[1])["loyalty"]["tier"] == "GOLD"
    later = transformer.transform(event("tierDowngraded", loyaltyProgramId=978,
                                        loyaltyProgramDetails={**tiers, "tiers": None},
                                        previousTierNumber=2, downgradedTierNumber=1, tierExpiryDate="2026-01-31"))
    assert entity(later[1])["loyalty"] == {"tier": "silver", "tierExpiryDate": "2026-01-31T00:00:00Z", "program": "Main"}
    assert entity(later[0])["_capillary"]["capillary"]["downgradedTierName"] == "silver"
    unknown = make().transform(event("tierRenewed", loyaltyProgramId=978, currentTierNumber=2))
    assert entity(unknown[1])["_capillary"]["capillary"] == {"tierNumber": 2}


def test_non_default_program_state_goes_to_the_tenant_block() -> None:
    details = {"id": 2650, "name": "Partner", "isDefault": False}
    [_, profile] = make().transform(event(loyaltyProgramId=2650, loyaltyProgramDetails=details,
                                          programCurrentPoints=50, programLifetimePoints=70))
    body = entity(profile)
    assert "loyalty" not in body
    assert body["_capillary"]["capillary"]["programs"] == {
        "points": {"2650": "50"}, "lifetimePoints": {"2650": "70"}, "program": {"2650": "Partner"}}
    fractional = make().transform(event(loyaltyProgramId=2650, loyaltyProgramDetails=details,
                                        programCurrentPoints=12.5, programLifetimePoints=70.0))
    assert entity(fractional[1])["_capillary"]["capillary"]["programs"]["points"] == {"2650": "12.5"}
    assert entity(fractional[1])["_capillary"]["capillary"]["programs"]["lifetimePoints"] == {"2650": "70"}


def test_customer_added_profile() -> None:
    raw = event("customerAdded", customerIdentifiers=FULL_IDS, firstName="Asha", lastName="Sharma",
                loyaltyType="LOYALTY", enteredAt=NOW_MS - 120_000)
    [ee, profile] = make().transform(raw)
    body = entity(profile)
    assert body["person"] == {"name": {"firstName": "Asha", "lastName": "Sharma"}}
    assert body["personalEmail"] == {"address": "asha@example.com"}
    assert body["mobilePhone"] == {"number": "919300000001"}
    assert body["loyalty"]["status"] == "active" and body["loyalty"]["loyaltyID"] == ["387979652"]
    assert body["loyalty"]["cardsDetails"] == [{"number": "C1"}, {"number": "C2"}]
    assert body["loyalty"]["joinDate"] == "2025-10-09T08:51:20.000Z"


def test_events_without_profile_state_give_no_profile() -> None:
    assert len(make().transform(event())) == 1  # pointsIssued without balances
    assert len(make().transform(event("pointsExpired", pointsExpired=5))) == 1


def test_unknown_event_dlq_or_passthrough() -> None:
    raw = event("badgeEarned", badgeId="B-1", earnedOn=NOW_MS, earnConstraints=[], note=None, **{"odd-key": " x "})
    with pytest.raises(TransformError) as info:
        make().transform(raw)
    assert info.value.reason == "unknown_event"
    [ee] = make(unknown_events="passthrough").transform(raw)
    body = entity(ee)
    assert ee.event_type == body["eventType"] == "loyalty.badgeEarned"
    assert json.loads(body["_capillary"]["capillary"]["dataJson"]) == {
        "loyaltyProgramId": 2649, "totalPointsIssued": 10, "badgeId": "B-1", "earnedOn": NOW_MS, "odd_key": "x"}
    assert body["identityMap"]["CapillaryCustomerId"][0]["id"] == "387979652"
    assert_no_empties(body)


def test_event_names_are_matched_case_insensitively() -> None:
    [ee, *_] = make().transform(event("POINTSISSUED"))
    assert ee.event_name == "pointsIssued"


def test_input_is_not_modified() -> None:
    transformer = make()
    for raw in generate_events(200, seed=12, now_ms=NOW_MS):
        before = copy.deepcopy(raw)
        transformer.transform(raw)
        assert raw == before


def test_avro_decoded_records_give_the_same_output() -> None:
    """Avro fills absent optionals with None; the transform must treat them as absent."""
    schemas = LocalSchemas.load()
    transformer = make()
    for raw in generate_events(300, seed=13, now_ms=NOW_MS):
        buf = BytesIO()
        schemaless_writer(buf, schemas.parsed(raw["eventName"]), raw)
        buf.seek(0)
        decoded = schemaless_reader(buf, schemas.parsed(raw["eventName"]))
        expected = [m.envelope for m in transformer.transform(raw)]
        assert [m.envelope for m in transformer.transform(decoded)] == expected


def test_outputs_never_contain_null_or_empty_values() -> None:
    transformer = make()
    for raw in generate_events(1000, seed=14, now_ms=NOW_MS):
        for message in transformer.transform(raw):
            assert_no_empties(message.envelope)
            json.dumps(message.envelope, allow_nan=False)


def test_preflight_validation_turns_bad_xdm_into_xdm_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(draft: Any, data: Any) -> None:
        draft.commerce()["order"] = {"currencyCode": "rupiah", "colour": "red"}

    spec = event_specs.SPECS["pointsIssued"]
    monkeypatch.setitem(event_specs.SPECS, "pointsIssued", event_specs.EventSpec(spec.name, spec.event_type, broken))
    with pytest.raises(TransformError) as info:
        make().transform(event())
    assert info.value.reason == "xdm_invalid"
    assert "/commerce/order/colour: unknown field" in info.value.detail
    assert len(make(preflight_validation=False).transform(event())) == 1


def test_unexpected_payload_shapes_are_transform_errors() -> None:
    for data in ({"promotionalPointsIssued": "x"}, {"loyaltyProgramDetails": []}, {"triggeringActivity": 5},
                 {"regularPointsBreakup": [None, 1, {"points": "many"}]}, {"programCurrentPoints": {"a": 1}}):
        try:
            messages = make().transform(event(**data))
        except TransformError as exc:
            assert exc.reason in REASONS
        else:
            for message in messages:
                assert_no_empties(message.envelope)
