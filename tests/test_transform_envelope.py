"""Tolerant envelope reading (capillary-events.md A.3/A.4) and time values."""

from __future__ import annotations

from typing import Any

import pytest

from connector.transform import TransformError, normalize
from connector.transform.times import to_date, to_iso, to_ms

FLAT: dict[str, Any] = {
    "eventName": "pointsIssued", "eventId": "e-1", "eventLogId": 39125117, "orgId": 51186, "refId": "51186_x",
    "createdAt": 1750224535590, "data": {"customerIdentifiers": {"customerId": 1}},
}


def test_flat() -> None:
    event = normalize(FLAT)
    assert (event.name, event.event_id, event.created_at_ms, event.org_id) == ("pointsIssued", "e-1", 1750224535590, "51186")
    assert event.data["customerIdentifiers"]["customerId"] == 1
    assert event.top["refId"] == "51186_x"


@pytest.mark.parametrize("event_type", ["pointsIssued", "51186_pointsIssued"])
def test_wrapped_bus_envelope(event_type: str) -> None:
    raw = {"eventId": "e-2", "eventType": event_type, "consumerGroupId": None, "actionType": "START",
           "timeStamp": 1750224535600,
           "attributes": {"createdAt": 1750224535590, "orgId": 51186, "refId": "r", "data": {"a": 1}}}
    event = normalize(raw)
    assert (event.name, event.event_id, event.created_at_ms, event.org_id) == ("pointsIssued", "e-2", 1750224535590, "51186")
    assert event.top["refId"] == "r" and event.data == {"a": 1}


def test_wrapped_without_created_at_uses_timestamp() -> None:
    raw = {"eventType": "150698_customerAdded", "timeStamp": 1750224535600, "attributes": {"data": {}}}
    event = normalize(raw)
    assert event.name == "customerAdded" and event.created_at_ms == 1750224535600 and event.event_id is None


@pytest.mark.parametrize("wrapper", [
    lambda e: {"body": e},
    lambda e: {"data": e, "errors": None, "warnings": None},
    lambda e: {"body": {"data": e, "errors": None, "warnings": None}},
])
def test_body_and_data_wrappers(wrapper: Any) -> None:
    assert normalize(wrapper(FLAT)) == normalize(FLAT)


@pytest.mark.parametrize("created", [1750224535590.0, 1.75022453559e12, "1750224535590", 1750224535.59, 1750224535590000])
def test_epoch_forms(created: Any) -> None:
    assert normalize({**FLAT, "createdAt": created}).created_at_ms == 1750224535590


def test_typos_are_repaired() -> None:
    raw = {"eventName": "points Redeemed", "apiRequestId ": "req", "createdAt": 1750224535590, "orgId": 1,
           "data": {"loyaltyProgram Details": {"id": 7}, "totalPoinstDeducted": 3,
                    "customerIdentifiers": {"customerId": 1, "Instore": {"email ": "a@b.co", "mobile": "91"}}}}
    event = normalize(raw)
    assert event.name == "pointsRedeemed"
    assert event.top["apiRequestId"] == "req"
    assert event.data["loyaltyProgramDetails"] == {"id": 7}
    assert event.data["totalPointsDeducted"] == 3
    assert event.data["customerIdentifiers"]["instore"] == {"email": "a@b.co", "mobile": "91"}


def test_clean_input_is_not_copied() -> None:
    assert normalize(FLAT).data is FLAT["data"]


@pytest.mark.parametrize("raw, reason", [
    ([], "invalid_envelope"),
    ("text", "invalid_envelope"),
    ({"createdAt": 1}, "invalid_envelope"),
    ({"eventName": "  ", "createdAt": 1750224535590}, "invalid_envelope"),
    ({"eventName": 5, "createdAt": 1750224535590}, "invalid_envelope"),
    ({"eventName": "x"}, "missing_field"),
    ({"eventName": "x", "createdAt": "yesterday"}, "invalid_value"),
    ({"eventName": "x", "createdAt": -1}, "invalid_value"),
    ({"eventName": "x", "createdAt": True}, "invalid_value"),
    ({"eventName": "x", "createdAt": 1750224535590, "data": [1]}, "invalid_envelope"),
])
def test_unusable_envelopes(raw: Any, reason: str) -> None:
    with pytest.raises(TransformError) as info:
        normalize(raw)
    assert info.value.reason == reason


def test_avro_style_nones_mean_absent() -> None:
    event = normalize({**FLAT, "eventId": None, "orgId": None, "data": None, "refId": None})
    assert event.event_id is None and event.org_id is None and event.data == {}


@pytest.mark.parametrize("value, iso", [
    (1724058034369, "2024-08-19T09:00:34.369Z"),
    (1.657437873e12, "2022-07-10T07:24:33.000Z"),
    (1693333333, "2023-08-29T18:22:13.000Z"),
    ("2124-08-19", "2124-08-19T00:00:00Z"),
    ("2023-05-12 10:11:12", "2023-05-12T10:11:12.000Z"),
    ("2023-05-12T10:11:12+05:30", "2023-05-12T04:41:12.000Z"),
    ("2024-02-30", None),
    ("soon", None),
    (None, None),
    (float("nan"), None),
    (1e20, None),
])
def test_to_iso(value: Any, iso: str | None) -> None:
    assert to_iso(value) == iso


def test_to_date_and_to_ms() -> None:
    assert to_date("2025-06-29") == "2025-06-29"
    assert to_date(1724058034369) == "2024-08-19"
    assert to_date("2025-13-01") is None
    assert to_ms(" ") is None and to_ms([]) is None
