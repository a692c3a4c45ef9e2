"""AEP's identity guardrails in pre-flight: nothing Identity Service would silently skip is sent
(identity over 1,024 characters, the values "null"/"anonymous"/"invalid"/blank, more than 20)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from harness import transformer

from connector.dev.samples import generate_events
from connector.transform import TransformError
from connector.transform.identity import MAX_IDENTITIES


def customer_event() -> dict[str, Any]:
    ev = next(e for e in generate_events(50, seed=42) if e["eventName"] == "customerAdded")
    return copy.deepcopy(ev)


def with_cards(cards: list[str]) -> dict[str, Any]:
    ev = customer_event()
    ev["data"]["customerIdentifiers"]["instore"] = {"cardNumbers": cards}
    return ev


def cards_sent(ev: dict[str, Any]) -> tuple[list[str], list[str]]:
    t = transformer()
    msgs = t.transform(ev)
    ids = msgs[0].envelope["body"]["xdmEntity"]["identityMap"]
    return [i["id"] for i in ids.get("LoyaltyCardNumber", [])], list(t.dropped_identities)


def test_an_identity_longer_than_1024_characters_is_left_out_and_reported() -> None:
    mangled = "4" * 100_000
    sent, dropped = cards_sent(with_cards(["CARD-1", mangled, "CARD-2"]))
    assert sent == ["CARD-1", "CARD-2"] and dropped == ["too_long"]
    sent, dropped = cards_sent(with_cards(["C" * 1024]))  # exactly the limit is fine
    assert sent == ["C" * 1024] and dropped == []


@pytest.mark.parametrize("value", ["null", "NULL", "anonymous", "Invalid", " invalid "])
def test_blocked_identity_values_are_left_out(value: str) -> None:
    sent, dropped = cards_sent(with_cards(["CARD-1", value]))
    assert sent == ["CARD-1"] and dropped == ["blocked_value"]


def test_at_most_20_identities_and_the_rest_reported() -> None:
    t = transformer()
    ev = with_cards([f"CARD-{i}" for i in range(30)])
    entity = t.transform(ev)[0].envelope["body"]["xdmEntity"]
    assert sum(len(v) for v in entity["identityMap"].values()) == MAX_IDENTITIES
    assert t.dropped_identities.count("too_many") == 30 + 1 - MAX_IDENTITIES  # the customer id is one of them


@pytest.mark.parametrize("customer_id", ["9" * 2000, "null", "anonymous"])
def test_a_record_whose_primary_identity_aep_would_skip_is_a_dead_letter(customer_id: str) -> None:
    ev = customer_event()
    ev["data"]["customerIdentifiers"]["customerId"] = customer_id
    with pytest.raises(TransformError) as err:
        transformer().transform(ev)
    assert err.value.reason == "identity_rejected" and customer_id not in str(err.value)


def test_the_worker_outcome_carries_the_reasons_to_the_pipeline() -> None:
    import orjson

    from connector.config import DecodeConfig, XdmConfig
    from connector.processing.record import Encoded, ProcessorSpec, RecordProcessor

    xdm = XdmConfig.model_validate({"event": {"dataset_id": "e", "schema_id": "https://ns.adobe.com/capillary/schemas/e"},
                                    "profile": {"dataset_id": "p", "schema_id": "https://ns.adobe.com/capillary/schemas/p"}})
    spec = ProcessorSpec(DecodeConfig(), xdm, "O@AdobeOrg", "src", 900_000, "INFO", "text")
    out = RecordProcessor(spec, None).run([orjson.dumps(with_cards(["CARD-1", "x" * 5000])),
                                           orjson.dumps(with_cards(["CARD-1"]))])
    assert type(out[0]) is Encoded and out[0].dropped == ("too_long",)
    assert type(out[1]) is Encoded and out[1].dropped == ()  # nothing dropped
    # An identity AEP would drop is one of the cases the fast path hands to the generic path: the
    # outcome says so, for capillary_aep_transform_fast_declined_total in the pipeline's process.
    assert out[0].declined == ("customerAdded",) and out[1].declined == ()


# -- the emulator holds records to the same guardrails (as Identity Service does after the inlet's 200) --

def _record(customer: str, cards: int, **extra: Any) -> dict[str, Any]:
    ids = {"CapillaryCustomerId": [{"id": customer, "primary": True}],
           "LoyaltyCardNumber": [{"id": f"c{n}"} for n in range(cards)]}
    return {"_id": customer, "identityMap": ids, "loyalty": {"points": 1}, **extra}


def test_the_emulated_profile_store_skips_records_identity_service_would_skip() -> None:
    from connector.dev.emulator.profiles import Profiles

    store = Profiles()
    store.accept_request([_record("a", MAX_IDENTITIES - 1),  # 20 identities: taken
                          _record("b", MAX_IDENTITIES),  # 21: skipped whole
                          _record("null", 0)])  # a blocked primary value: skipped whole
    assert set(store.state) == {"CapillaryCustomerId:a"}
    assert store.skipped == {"too_many_identities": 1, "primary_identity_skipped": 1}
    blocked = _record("d", 1)
    blocked["identityMap"]["Email"] = [{"id": "anonymous"}]
    store.accept_request([blocked])
    assert store.state["CapillaryCustomerId:d"]["identityMap"] == {
        "CapillaryCustomerId": [{"id": "d", "primary": True}], "LoyaltyCardNumber": [{"id": "c0"}]}


@pytest.mark.integration
def test_a_customers_coalesced_updates_stay_within_20_identities_at_the_inlet(broker, emulator, prefix,
                                                                              tmp_path) -> None:
    """Six updates of one customer, each within the guardrail, together over it: the connector sends
    them as one merged record (a backlog of one partition), which must still be one Identity Service
    takes — the emulator skips a record over 20 identities, as Identity Service does after the 200."""
    from harness import assert_committed_to_end, new_group, start_connector

    from connector.dev.produce import produce_events

    events = []
    for n in range(6):
        ev = with_cards([f"CARD-{n}-{c}" for c in range(4)])
        ev["eventId"] = f"guardrail-{n}"
        events.append(ev)
    customer = str(events[0]["data"]["customerIdentifiers"]["customerId"])
    per_record = len(transformer().transform(events[0])[0].envelope["body"]["xdmEntity"]["identityMap"]
                     .get("LoyaltyCardNumber", []))
    assert per_record == 4  # each record alone is within the guardrail
    produce_events(broker, events, "json", topic_prefix=prefix, partitions=1)
    group = new_group()
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=group)
    c.wait_acknowledged(len(events))
    dropped = c.metric("capillary_aep_identities_dropped_total")
    assert c.stop() == 0
    stats = emulator.stats()
    assert stats["max_profile_records_per_identity_in_request"] == 1  # merged, not sent one by one
    assert stats["profile_records_skipped"] == {}
    profile = next(p for k, p in emulator.http.get("/__emulator/profiles").json()["profiles"].items()
                   if k.endswith(f":{customer}"))
    identities = [e["id"] for entries in profile["identityMap"].values() for e in entries]
    assert len(identities) == MAX_IDENTITIES and customer in identities
    assert {f"CARD-5-{c}" for c in range(4)} <= set(identities)  # the most recent kept
    assert dropped == len({*identities, *(f"CARD-{n}-{c}" for n in range(6) for c in range(4))}) - MAX_IDENTITIES
    assert_committed_to_end(broker, group, prefix)
