"""The generated fast path (connector.transform.compiled) against the generic Transformer, its reference.

For every input the fast path's messages are the generic path's, byte for byte once encoded, or it
declined the record and the generic path answered. Inputs: every sample of the 24 types as JSON and
as decoded Avro, the golden inputs, and 100,000+ mutated events from a seeded generator (types,
values and presence changed anywhere), under several configurations. Each side has its own
Transformer, fed the same sequence, so program-cache state is compared too (through the outputs).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.decode.avro_schemas import LocalSchemas
from connector.decode.decoder import Decoder
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events, sample_xdm_config, wrap
from connector.transform import EVENT_NAMES, Transformer, TransformError

NOW_MS = 1_760_000_000_000
ORG = "0A1B2C3D4E5F@AdobeOrg"
GOLDEN = Path(__file__).parent / "golden"

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "sha256, reject future, no stamp": {"identity": {"pii_mode": "sha256", "authenticated_state": "authenticated"},
                                         "future_timestamps": "reject", "profile_timestamp_field": "off"},
    "passthrough, no validation, overrides": {
        "unknown_events": "passthrough", "preflight_validation": False,
        "event_overrides": {"transactionAdded": {"dataset_id": "5f1e0c0ffee0000000000009", "schema_id": "urn:t"}},
        "profile_overrides": {"pointsIssued": {"dataset_id": "5f1e0c0ffee0000000000008", "schema_id": "urn:p"}}},
    "no profile route": {"profile": None},
    # identities of several sources in one namespace: duplicates are possible, read by the general code
    "shared namespaces": {"identity": {"external_id_namespace": "CapillaryCustomerId",
                                       "card_namespace": "CapillaryCustomerId", "phone_namespace": "Email"}},
}


def pair(config: str = "default") -> tuple[Transformer, Transformer]:
    def make(fast: bool) -> Transformer:
        return Transformer(sample_xdm_config(**CONFIGS[config]), org_id=ORG, source_name="diff",
                           now=lambda: NOW_MS / 1000, fast=fast)

    return make(False), make(True)


def outcome(transformer: Transformer, event: Any) -> Any:
    """What a transform gives, comparable: encoded messages and dropped identities, or the error."""
    try:
        messages = transformer.transform(event)
    except TransformError as exc:
        return ("error", exc.reason, exc.detail)
    try:
        encoded = [(m.kind, m.event_name, m.event_type, orjson.dumps(m.envelope)) for m in messages]
    except TypeError as exc:  # not JSON-serialisable (validation off): compared as the type error
        encoded = [("unencodable", str(exc))]
    return ("ok", encoded, list(transformer.dropped_identities))


def diff(generic: Transformer, fast: Transformer, events: list[Any]) -> int:
    """Assert the same outcome for every event, in order; return how many the fast path declined."""
    before = sum(fast.declines.values())
    for i, event in enumerate(events):
        expected = outcome(generic, event)
        got = outcome(fast, event)
        if got != expected:
            raise AssertionError(f"event {i} ({_name(event)}): fast path {got!r}\n  generic {expected!r}\n"
                                 f"  input {event!r}")
    return sum(fast.declines.values()) - before


def _name(event: Any) -> str:
    return str(event.get("eventName"))[:40] if isinstance(event, dict) else type(event).__name__


def samples() -> list[dict[str, Any]]:
    return generate_events(1200, seed=31, now_ms=NOW_MS) + generate_events(
        24 * 40, seed=32, now_ms=NOW_MS, event_names=list(EVENT_NAMES))


def avro(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as the decoder reads them from Avro (absent optional fields as explicit nulls)."""
    schemas = LocalSchemas.load()
    encoder, decoder = SampleEncoder(schemas), Decoder(schemas)
    return [out for e in events for out in decoder.decode(encoder.encode(e, "avro-single"))]


# == samples and golden files ================================================================

@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_sample_json_and_avro_same_bytes_and_none_declined(config: str) -> None:
    events = samples()
    assert {e["eventName"] for e in events} == set(EVENT_NAMES)
    generic, fast = pair(config)
    assert diff(generic, fast, events) == 0
    assert diff(generic, fast, avro(events)) == 0, fast.declines


def test_every_envelope_read_by_the_generic_reader_then_fast() -> None:
    events = [wrap(e, style) for e in samples()[:300] for style in ("wrapped", "wrapped_prefixed", "body", "data")]
    generic, fast = pair()
    assert diff(generic, fast, events) == 0


def test_golden_inputs() -> None:
    generic, fast = pair()
    inputs = [json.loads(p.read_text()) for p in sorted(GOLDEN.glob("*.input.json"))]
    assert diff(generic, fast, inputs) == 0


def test_the_fast_path_leaves_its_input_as_it_was() -> None:
    events = samples()[:400]
    before = [orjson.dumps(e) for e in events]
    _, fast = pair()
    for e in events:
        fast.transform(e)
    assert [orjson.dumps(e) for e in events] == before


def _identity_variants() -> list[dict[str, Any]]:
    """customerIdentifiers at the guardrails: 19–25 identities, cards alone (the first one primary),
    values too long or blocked in every source, duplicates."""
    cards = [f"C{i:03d}" for i in range(25)]
    long = "9" * 1100
    return [
        {"customerId": 1, "instore": {"cardNumbers": cards[:n]}} for n in (15, 16, 17, 18, 19, 20, 21, 25)
    ] + [
        {"instore": {"cardNumbers": cards[:3]}}, {"instore": {"cardnumber": "C9", "cardNumbers": ["C9", "C8"]}},
        {"card_number": "C7", "instore": {"cardNumbers": [" ", "null", "C7"]}},
        {"customerId": 1, "instore": {"email": "a" * 1100 + "@b.co"}}, {"customerId": 1, "instore": {"mobile": long}},
        {"customerId": 1, "instore": {"externalId": "Anonymous"}}, {"customerId": 1, "instore": {"externalId": long}},
        {"customerId": "null", "instore": {"externalId": "E1"}}, {"customerId": long}, {"instore": {"email": "x@y.co"}},
        {"instore": {"mobile": "+62 812 3456"}}, {"customerId": 1, "instore": {"cardNumbers": ["invalid"]}},
        {"customerId": 1, "instore": {"externalId": "1", "cardNumbers": ["1", "E1"]}},
        {"customerId": 1, "card_number": "1", "instore": {"externalId": "1", "email": "x@y.co", "mobile": "98765"}},
    ]


@pytest.mark.parametrize("config", ["default", "sha256, reject future, no stamp", "shared namespaces"])
def test_identities_at_the_guardrails(config: str) -> None:
    base = {e["eventName"]: e for e in samples()}
    events = []
    for ci in _identity_variants():
        for name in ("transactionAdded", "customerAdded", "pointsIssued", "loyaltyCustomerMerge"):
            event = dict(base[name])
            key = "survivorCustomerIdentifiers" if name == "loyaltyCustomerMerge" else "customerIdentifiers"
            event["data"] = {**event["data"], key: ci}
            events.append(event)
        coupons = dict(base["CouponIssue"])
        coupons["data"] = {**coupons["data"], "coupons": [{**c, "customerIdentifiers": ci}
                                                         for c in coupons["data"]["coupons"]]}
        events.append(coupons)
    generic, fast = pair(config)
    diff(generic, fast, events)


def test_the_store_wherever_the_event_names_it() -> None:
    """enteredBy, addedBy or triggeringActivity.enteredBy, the first that is an object."""
    store = {"till": {"code": "T1"}, "store": {"code": " ", "name": "S", "externalId": "E9"}}
    places: list[dict[str, Any]] = [
        {"enteredBy": store}, {"addedBy": store}, {"enteredBy": "x", "addedBy": store},
        {"triggeringActivity": {"name": "A", "enteredBy": store}},
        {"enteredBy": [], "addedBy": 1, "triggeringActivity": {"enteredBy": store, "identifiers": [{"key": "billId",
                                                                                                   "value": "B1"}]}},
        {"triggeringActivity": {"enteredBy": "x"}}, {"triggeringActivity": "x"},
    ]
    events = []
    for event in samples()[:300]:
        data = {k: v for k, v in event["data"].items() if k not in ("enteredBy", "addedBy", "triggeringActivity")}
        events += [{**event, "data": {**data, **place}} for place in places]
    generic, fast = pair()
    assert diff(generic, fast, events) == 0


# == mutated events ==========================================================================
# Values that sit on the converters' edges: blanks, padding, other types, non-finite and huge numbers,
# AEP's blocked identity values, dates that do not exist, epochs in every unit, times in the future
# (within and beyond the allowed skew).
ODD: list[Any] = [
    None, "", " ", "  x ", "null", "Anonymous", 0, -1, 1, 1.5, 2.0, -0.0, float("nan"), float("inf"), 2**64, 2**70,
    True, False, [], {}, [{}], [None], {"key": " ", "value": "v"}, [{"key": "k", "value": 1}], "2024-02-30",
    "2025-06-29", "2025-06-29 10:11:12", "1720440349027", 1720440349, 1720440349.027, 1.657437873e12,
    1720440349027000, NOW_MS + 5_000, NOW_MS + 5_001, NOW_MS + 60_000, str(NOW_MS + 86_400_000),
    "RETURN", "return", "a@b.co", " A@B.CO ", "+62 812-3456-7890", "0000", "idr", "USD",
    "x" * 1100, "3122204.0", 3122204.0, "-1", {"code": " ", "externalId": "E1"}, ["1", " ", 2],
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)  # type: ignore[assignment]
    else:
        return out
    for key, item in items:
        out.append((*prefix, key))
        out.extend(_paths(item, (*prefix, key)))
    return out


def _mutate(event: dict[str, Any], paths: list[tuple[Any, ...]], rng: random.Random) -> dict[str, Any]:
    """A copy of ``event`` with 1–3 changes; containers are copied along each changed path only."""
    root = dict(event)
    for _ in range(rng.choice((1, 1, 2, 3))):
        path = rng.choice(paths)
        node: Any = root
        for key in path[:-1]:
            child = node[key] if _has(node, key) else None
            if not isinstance(child, (dict, list)):
                break
            node[key] = child = dict(child) if isinstance(child, dict) else list(child)
            node = child
        else:
            last = path[-1]
            if not _has(node, last):
                continue
            op = rng.random()
            if op < 0.1:  # an object another event type carries, perhaps with a stray space in its keys
                donor = rng.choice(GRAFTS)
                root["data"] = data = dict(root["data"]) if isinstance(root.get("data"), dict) else {}
                data[donor[0]] = _spaced(donor[1], rng) if rng.random() < 0.5 else donor[1]
            elif op < 0.2 and isinstance(node, dict):
                del node[last]
            elif op < 0.3:
                node[last] = _retype(node[last])
            elif op < 0.35 and isinstance(node, dict):
                node[f"{last} "] = node.pop(last)  # a stray space in a key
            else:
                node[last] = rng.choice(ODD)
    return root


def _spaced(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        return {(f"{k} " if k == key else k): (_spaced(v, rng) if rng.random() < 0.5 else v) for k, v in value.items()}
    return value


# Objects the envelope reader repairs or the mapping reads across event types: each may be grafted
# into any event's data.
GRAFT_KEYS = ("customerIdentifiers", "survivorCustomerIdentifiers", "victimCustomerIdentifiers",
              "loyaltyProgramDetails", "enteredBy", "addedBy", "triggeringActivity", "coupons")


def _grafts() -> list[tuple[str, Any]]:
    out = []
    for event in generate_events(24 * 10, seed=33, now_ms=NOW_MS, event_names=list(EVENT_NAMES)):
        out += [(key, value) for key, value in event["data"].items() if key in GRAFT_KEYS]
    return out


GRAFTS = _grafts()


def _has(node: Any, key: Any) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and key < len(node)


def _retype(value: Any) -> Any:
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value)
    if type(value) is str:
        try:
            return int(value)
        except ValueError:
            return f" {value} "
    return value


def mutated(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = samples()[1000:]  # mostly the uniform mix: rare types as often as the common ones
    base = base + avro(base[::5])
    paths = [_paths(e) for e in base]
    return [_mutate(base[i], paths[i], rng) for i in (rng.randrange(len(base)) for _ in range(n))]


@pytest.mark.parametrize(("config", "n", "seed"), [
    ("default", 70_000, 1), ("sha256, reject future, no stamp", 20_000, 2),
    ("passthrough, no validation, overrides", 15_000, 3), ("no profile route", 5_000, 4),
    ("shared namespaces", 8_000, 5),
])
def test_mutated_events_same_bytes_or_declined(config: str, n: int, seed: int) -> None:
    events = mutated(n, seed)
    generic, fast = pair(config)
    declined = diff(generic, fast, events)
    assert declined < 0.5 * n, fast.declines  # the fast path did take most of them


def test_a_mutation_that_changes_output_is_seen() -> None:
    """The comparison can fail: a fast path writing one wrong field is caught by the diff."""
    generic, fast = pair()
    name = "transactionAdded"
    original: Callable[[dict[str, Any]], Any] = fast._fast[name]

    def wrong(raw: dict[str, Any]) -> Any:
        messages = original(raw)
        if messages:
            messages[0].envelope["body"]["xdmEntity"]["producedBy"] = "self"
        return messages

    fast._fast[name] = wrong
    with pytest.raises(AssertionError, match="fast path"):
        diff(generic, fast, [e for e in samples() if e["eventName"] == name][:5])
