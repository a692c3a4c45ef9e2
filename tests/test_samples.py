"""The sample-event generator: deterministic, realistic, valid for the Avro schemas, every envelope."""

from __future__ import annotations

from collections import Counter

import pytest
from fastavro.validation import validate

from connector.decode.avro_schemas import LocalSchemas
from connector.dev.samples import CUSTOMER_POOL, ENVELOPES, MIX, generate_events, wrap
from connector.transform import EVENT_NAMES, normalize

NOW_MS = 1_760_000_000_000


def test_same_seed_same_events_other_seed_other_events() -> None:
    assert generate_events(50, seed=3, now_ms=NOW_MS) == generate_events(50, seed=3, now_ms=NOW_MS)
    assert generate_events(50, seed=3, now_ms=NOW_MS) != generate_events(50, seed=4, now_ms=NOW_MS)


def test_realistic_mix_unique_ids_recent_times_repeating_customers() -> None:
    events = generate_events(3000, seed=1, now_ms=NOW_MS)
    counts = Counter(e["eventName"] for e in events)
    top_two = {name for name, _ in counts.most_common(2)}
    assert top_two == {"transactionAdded", "pointsIssued"}
    assert set(counts) == set(MIX) == set(EVENT_NAMES)
    assert len({e["eventId"] for e in events}) == len(events)
    assert all(NOW_MS - 3_600_000 <= e["createdAt"] < NOW_MS for e in events)
    customers = Counter(
        (e["data"].get("customerIdentifiers") or e["data"].get("survivorCustomerIdentifiers")
         or e["data"]["coupons"][0]["customerIdentifiers"])["customerId"]
        for e in events
    )
    assert len(customers) <= CUSTOMER_POOL
    assert customers.most_common(1)[0][1] > 10  # frequent shoppers: profiles repeat


def test_now_defaults_to_the_clock() -> None:
    import time

    event = generate_events(1, seed=0)[0]
    assert 0 < time.time() * 1000 - event["createdAt"] <= 3_600_000 + 5_000


def test_every_event_is_valid_for_its_avro_schema() -> None:
    schemas = LocalSchemas.load()
    for event in generate_events(600, seed=2, now_ms=NOW_MS, event_names=list(EVENT_NAMES)):
        assert validate(event, schemas.parsed(event["eventName"]), raise_errors=True)


def test_optional_fields_are_sometimes_absent() -> None:
    events = generate_events(400, seed=8, now_ms=NOW_MS, event_names=["transactionAdded", "pointsIssued"])
    for key in ("grossAmount", "enteredBy", "currencyCode"):
        present = [key in e["data"] for e in events if e["eventName"] == "transactionAdded"]
        assert any(present) and not all(present), key
    instore = [e["data"]["customerIdentifiers"].get("instore") for e in events]
    assert None in instore and any(i and "email" in i for i in instore)


def test_event_names_filter() -> None:
    events = generate_events(20, seed=1, now_ms=NOW_MS, event_names=["tierUpgraded"])
    assert {e["eventName"] for e in events} == {"tierUpgraded"}
    with pytest.raises(ValueError, match="noSuchEvent"):
        generate_events(1, event_names=["noSuchEvent"])


@pytest.mark.parametrize("style", ENVELOPES)
def test_every_envelope_normalizes_to_the_same_event(style: str) -> None:
    for flat in generate_events(30, seed=4, now_ms=NOW_MS):
        wrapped = wrap(flat, style)
        a, b = normalize(flat), normalize(wrapped)
        assert (a.name, a.event_id, a.created_at_ms, a.org_id, a.data) == (b.name, b.event_id, b.created_at_ms, b.org_id, b.data)


def test_wrapped_envelope_shape() -> None:
    flat = generate_events(1, seed=4, now_ms=NOW_MS)[0]
    bus = wrap(flat, "wrapped_prefixed")
    assert bus["eventType"] == f"{flat['orgId']}_{flat['eventName']}"
    assert bus["actionType"] == "START" and bus["timeStamp"] >= flat["createdAt"]
    assert bus["attributes"]["data"] is flat["data"]
    assert generate_events(1, seed=4, now_ms=NOW_MS, envelope="body")[0] == {"body": flat}
    with pytest.raises(ValueError, match="unknown envelope"):
        wrap(flat, "xml")
