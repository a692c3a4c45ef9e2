"""The fast XDM validity check (jsonschema-rs, compiled from the compact schemas) gives the same
verdicts as the Python checks that specify the rules and write the messages.

``XdmValidator.errors`` trusts a "valid" from the fast path and asks the Python checks about
everything else, so the one thing that must never happen is fast-valid / Python-invalid: that
record would skip a rule. The other direction would only cost time; both are held to zero here,
on every sample entity and on thousands of seeded mutations of them (nulls, empties, wrong types,
broken formats, odd whitespace, unknown and missing fields, non-finite and oversized numbers).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from connector.dev.samples import generate_events, sample_xdm_config
from connector.transform import Transformer
from connector.transform.validate import _SPACES, XdmValidator, _fast_check, load_schema

NOW_MS = 1_760_000_000_000
KINDS = ("event", "profile")

REPLACEMENTS: list[Any] = [
    None, "", {}, [], 0, -3, 1.5, float("nan"), float("inf"), True, False, 2**70, "x", "x y", "a\x1cb",
    "\u00a0", " lead", "2024-13-01", "2024-02-30", "2024-01-01", "2024-01-01T00:00:00Z",
    "2024-01-01T00:00:00.123+05:30", "2024-01-01T24:00:00Z", "2024-01-01 00:00:00Z", "a@b.c", "a@b",
    "a b@c.d", "a\x1c@b.c", "USD", "usd", "USD\n", "US", "IN-KA", "IN-", "http://x.y/z", "1a:b", "a/b:c",
    "urn:x y", "٣٣٣", "12-31", "123", "1234", ["x"], [None], [{}], {"k": "v"}, {"k": None}, {"id": "v"},
]


@pytest.fixture(scope="module")
def entities() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for pii_mode, seed in (("plain", 31), ("sha256", 32)):
        transformer = Transformer(sample_xdm_config(identity={"pii_mode": pii_mode}), org_id="X@AdobeOrg",
                                  source_name="test", now=lambda: NOW_MS / 1000)
        for event in generate_events(300, seed=seed, now_ms=NOW_MS):
            for message in transformer.transform(event):
                out.append((message.kind, message.envelope["body"]["xdmEntity"]))
    return out


@pytest.fixture(scope="module")
def reference() -> XdmValidator:
    return XdmValidator.load("capillary", fast=False)


@pytest.fixture(scope="module")
def fast() -> dict[str, Any]:
    return {kind: _fast_check(load_schema(kind, "capillary")) for kind in KINDS}  # type: ignore[arg-type]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


def _mutations(entity: dict[str, Any], rng: random.Random, n: int) -> list[dict[str, Any]]:
    paths = _paths(entity)
    out = []
    for _ in range(n):
        mutated = copy.deepcopy(entity)
        path = rng.choice(paths)
        parent: Any = mutated
        for step in path[:-1]:
            parent = parent[step]
        target = parent[path[-1]] if path else mutated
        action = rng.random()
        if action < 0.15 and isinstance(target, dict):
            target[rng.choice(["unknownField", "id", "name", "code", "_id"])] = rng.choice(REPLACEMENTS)
        elif action < 0.25 and path and isinstance(parent, dict):
            del parent[path[-1]]
        elif path:
            parent[path[-1]] = copy.deepcopy(rng.choice(REPLACEMENTS))
        out.append(mutated)
    return out


def _fast_verdict(check: Any, entity: Any) -> bool | None:
    try:
        return bool(check(entity))
    except Exception:  # noqa: BLE001 - "cannot tell": the Python checks decide (see XdmValidator.errors)
        return None


def test_python_whitespace_is_spelled_out_exactly() -> None:
    decoded = _SPACES.encode().decode("unicode_escape")
    assert decoded == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


def test_every_sample_entity_is_valid_on_both_paths(entities: list, reference: XdmValidator, fast: dict) -> None:
    assert {kind for kind, _ in entities} == set(KINDS)
    for kind, entity in entities:
        assert reference.errors(kind, entity) == []
        assert fast[kind](entity) is True


def test_mutated_entities_get_the_same_verdict_on_both_paths(entities: list, reference: XdmValidator,
                                                              fast: dict) -> None:
    rng = random.Random(20261123)
    checked = invalid = unreadable = 0
    disagreements = []
    for kind, entity in rng.sample(entities, 120):
        for mutated in _mutations(entity, rng, 40):
            python_valid = reference.errors(kind, mutated) == []
            verdict = _fast_verdict(fast[kind], mutated)
            checked += 1
            invalid += not python_valid
            unreadable += verdict is None
            if verdict is not None and verdict != python_valid:
                disagreements.append((kind, python_valid, reference.errors(kind, mutated)))
    assert not disagreements, sorted({str(d) for d in disagreements})[:8]
    assert checked == 4800 and invalid > 2000  # the corpus does exercise the rules
    assert unreadable == 0  # every value here is JSON: the fast path must answer, not step aside


def test_errors_explains_what_the_fast_path_rejects(reference: XdmValidator) -> None:
    validator = XdmValidator.load("capillary")
    base = {"_id": "a", "timestamp": "2024-01-01T00:00:00Z"}
    assert validator.errors("event", base) == []
    broken = {**base, "eventType": "", "commerce": {"order": {"priceTotal": "12"}}}
    assert validator.errors("event", broken) == reference.errors("event", broken) != []


def test_a_value_the_fast_path_cannot_read_goes_to_the_python_checks() -> None:
    validator = XdmValidator.load("capillary")
    entity = {"_id": "a", "timestamp": "2024-01-01T00:00:00Z", "_capillary": {"capillary": {1: "int key"}}}
    # Not JSON (an int key): the Python checks answer, with a message (the tenant block is closed).
    assert validator.errors("event", entity) == ["/_capillary/capillary/1: unknown field"]
