"""Coalescing a customer's profile updates (connector.delivery.coalesce): the merged record has the effect of
its sources applied in order, identities unioned, nothing null or empty, and it stands for each
source record it merged."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.delivery.coalesce import coalesce, merge_entities, primary_identity
from connector.dev.emulator.profiles import apply

leaf = st.one_of(st.integers(-5, 5), st.text("ab", min_size=1, max_size=2), st.booleans(),
                 st.lists(st.integers(0, 3), min_size=1, max_size=3))
keys = st.sampled_from(["a", "b", "c"])
tree = st.recursive(leaf, lambda inner: st.dictionaries(keys, inner, min_size=1, max_size=3), max_leaves=8)
identity = st.fixed_dictionaries({"id": st.sampled_from(["1", "2", "3"]),
                                  "authenticatedState": st.sampled_from(["ambiguous", "authenticated"])})
identity_map = st.dictionaries(st.sampled_from(["Email", "Phone"]), st.lists(identity, min_size=1, max_size=2),
                               max_size=2)


@st.composite
def update(draw: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"identityMap": {"CapillaryCustomerId": [{"id": "42", "primary": True}],
                                              **draw(identity_map)}}
    record.update(draw(st.dictionaries(st.sampled_from(["loyalty", "person", "_capillary"]), tree, max_size=3)))
    return record


def null_or_empty(value: Any) -> bool:
    if value is None or value == "" or value == [] or value == {}:
        return True
    if isinstance(value, dict):
        return any(null_or_empty(v) for v in value.values())
    if isinstance(value, list):
        return any(null_or_empty(v) for v in value)
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(update(), min_size=1, max_size=6), st.dictionaries(keys, tree, max_size=3))
def test_applying_the_merged_record_equals_applying_each_update_in_order(updates: list[dict], start: dict) -> None:
    one_by_one = copy.deepcopy(start)
    for u in updates:
        apply(one_by_one, u)
    merged_state = copy.deepcopy(start)
    apply(merged_state, merge_entities(updates))
    assert merged_state == one_by_one
    # The sender's way: the updates are its own (freshly parsed) and are moved, not copied.
    assert merge_entities(copy.deepcopy(updates), owned=True) == merge_entities(updates)


@pytest.mark.parametrize("owned", [False, True])
@settings(max_examples=200, deadline=None)
@given(updates=st.lists(update(), min_size=2, max_size=6))
def test_identities_are_unioned_and_nothing_is_null_or_empty(updates: list[dict], owned: bool) -> None:
    merged = merge_entities(copy.deepcopy(updates), owned=owned)
    for u in updates:
        for ns, entries in u["identityMap"].items():
            have = {e["id"] for e in merged["identityMap"][ns]}
            assert {e["id"] for e in entries} <= have
    for entries in merged["identityMap"].values():
        ids = [e["id"] for e in entries]
        assert len(ids) == len(set(ids))  # each identity once
    assert not null_or_empty(merged)
    assert primary_identity(merged) == ("CapillaryCustomerId", "42")


def envelope(entity: dict[str, Any], dataset: str = "p1") -> bytes:
    return orjson.dumps({"header": {"schemaRef": {"id": "s"}, "datasetId": dataset},
                         "body": {"xdmMeta": {"schemaRef": {"id": "s"}}, "xdmEntity": entity}})


def profile(customer: str, _id: str, **fields: Any) -> dict[str, Any]:
    return {"_id": _id, "identityMap": {"CapillaryCustomerId": [{"id": customer, "primary": True}]}, **fields}


def test_one_record_per_customer_and_route_standing_for_its_sources() -> None:
    messages = [
        envelope(profile("a", "1", loyalty={"points": 10, "tier": "Silver"})),
        envelope(profile("b", "2", loyalty={"points": 5})),
        envelope(profile("a", "3", loyalty={"points": 20})),
        envelope(profile("a", "4", loyalty={"points": 30}), dataset="p2"),  # another route: kept apart
        envelope(profile("a", "5", loyalty={"points": 25, "lifetimePoints": 99})),
    ]
    customers = ["a", "b", "a", "a", "a"]
    out = coalesce(messages, customers, max_size=1_000_000)
    assert [members for _, members in out] == [[1], [3], [0, 2, 4]]
    merged = orjson.loads(out[2][0])["body"]["xdmEntity"]
    assert merged["_id"] == "5"  # the last update's id
    assert merged["loyalty"] == {"points": 25, "tier": "Silver", "lifetimePoints": 99}
    assert out[0][0] == messages[1] and out[1][0] == messages[3]  # untouched bytes


def test_a_merge_larger_than_the_limit_is_not_made() -> None:
    messages = [envelope(profile("a", "1", loyalty={"tier": "x" * 500})),
                envelope(profile("a", "2", loyalty={"points": 1}))]
    assert [m for _, m in coalesce(messages, ["a", "a"], max_size=300)] == [[0], [1]]


def test_the_layout_of_a_record_does_not_change_its_merge() -> None:
    """Key order in the envelope, or a key named like the envelope's inside the entity, change nothing."""
    updates = [profile("a", "1", loyalty={"points": 10, "tier": "Silver"}),
               profile("a", "2", loyalty={"points": 20}, _capillary={"capillary": {"xdmEntity": "a key of that name"}})]
    ours = [envelope(u) for u in updates]
    body_first = [orjson.dumps({"body": {"xdmMeta": {"schemaRef": {"id": "s"}}, "xdmEntity": u},
                                "header": {"schemaRef": {"id": "s"}, "datasetId": "p1"}}) for u in updates]
    results = []
    for messages in (ours, body_first):
        out = coalesce(messages, ["a", "a"], max_size=1_000_000)
        assert [members for _, members in out] == [[0, 1]]
        results.append(orjson.loads(out[0][0]))
    assert results[0] == results[1]
    assert results[0]["body"]["xdmEntity"] == merge_entities(copy.deepcopy(updates))
    assert results[0]["header"] == {"schemaRef": {"id": "s"}, "datasetId": "p1"}


def test_real_profile_updates_merge_as_a_whole_parse_would() -> None:
    """Profile records as the transform writes them, merged by the sender, equal the last record's
    envelope around the merge of every entity, applied in order."""
    from connector.dev.emulator import config as em
    from connector.dev.samples import generate_events, sample_xdm_config
    from connector.transform import Transformer

    transformer = Transformer(sample_xdm_config(), org_id=em.DEMO_ORG_ID, source_name="capillary-aep-connector")
    by_customer: dict[str, list[bytes]] = {}
    for event in generate_events(400, seed=9):
        for m in transformer.transform(event):
            if m.kind == "profile":
                key = primary_identity(m.envelope["body"]["xdmEntity"])[1]  # type: ignore[index]
                by_customer.setdefault(key, []).append(orjson.dumps(m.envelope))
    groups = [msgs for msgs in by_customer.values() if len(msgs) >= 3][:20]
    assert len(groups) >= 5  # the test means nothing without customers with several updates
    for msgs in groups:
        out = coalesce(msgs, ["c"] * len(msgs), max_size=10_000_000)
        assert [members for _, members in out] == [list(range(len(msgs)))]
        want = orjson.loads(msgs[-1])
        want["body"]["xdmEntity"] = merge_entities([orjson.loads(m)["body"]["xdmEntity"] for m in msgs])
        assert orjson.loads(out[0][0]) == want


def _identities(entity: dict[str, Any]) -> set[tuple[str, str]]:
    return {(ns, e["id"]) for ns, entries in entity["identityMap"].items() for e in entries}


def test_a_merged_record_keeps_identity_service_guardrails() -> None:
    """Six updates of one customer, four cards each: 25 identities in the union, more than the 20
    Identity Service takes from one record. The merge keeps the primary, then the most recent."""
    updates = []
    for n in range(6):
        record = profile("a", str(n), loyalty={"points": n})
        record["identityMap"]["LoyaltyCardNumber"] = [{"id": f"card-{n}-{c}"} for c in range(4)]
        updates.append(record)
    updates[-1]["identityMap"]["Email"] = [{"id": "null"}]  # a value Identity Service blocks
    dropped: list[str] = []
    out = coalesce([envelope(u) for u in updates], ["a"] * 6, max_size=1_000_000, dropped=dropped)
    assert [members for _, members in out] == [list(range(6))]  # still one record for all six
    merged = orjson.loads(out[0][0])["body"]["xdmEntity"]
    kept = _identities(merged)
    assert len(kept) == 20 and ("CapillaryCustomerId", "a") in kept
    assert primary_identity(merged) == ("CapillaryCustomerId", "a")
    newest = {("LoyaltyCardNumber", f"card-{n}-{c}") for n in range(2, 6) for c in range(4)}
    assert newest <= kept and not any(i[1].startswith("card-0-") for i in kept)
    assert ("Email", "null") not in kept and "Email" not in merged["identityMap"]
    assert sorted(dropped) == ["blocked_value"] + ["too_many"] * 5
    assert merged["loyalty"] == {"points": 5}


def test_records_within_the_guardrails_merge_untouched() -> None:
    updates = [profile("a", "1"), profile("a", "2")]
    updates[0]["identityMap"]["Email"] = [{"id": "x@example.com"}]
    dropped: list[str] = []
    out = coalesce([envelope(u) for u in updates], ["a", "a"], max_size=1_000_000, dropped=dropped)
    assert dropped == [] and orjson.loads(out[0][0])["body"]["xdmEntity"] == merge_entities(updates)
