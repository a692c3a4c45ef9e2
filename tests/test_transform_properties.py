"""Property-based: whatever Capillary sends, the transform emits valid XDM or a bounded TransformError.

Events start from realistic samples and are then damaged: fields dropped or nulled, leaves replaced
by arbitrary JSON values, keys given stray spaces, other envelopes, float/second/string epochs.
Pre-flight validation is off, so the mappings themselves must never produce invalid XDM (the
validator would otherwise hide a mapping bug behind ``xdm_invalid``).
"""

from __future__ import annotations

import copy
from datetime import UTC
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.dev.samples import ENVELOPES, generate_events, sample_xdm_config, wrap
from connector.transform import EVENT_NAMES, REASONS, Transformer, TransformError
from connector.transform.validate import XdmValidator

NOW_MS = 1_760_000_000_000
POOL = generate_events(150, seed=31, now_ms=NOW_MS) + generate_events(
    144, seed=32, now_ms=NOW_MS, event_names=list(EVENT_NAMES))
VALIDATOR = XdmValidator.load("capillary")
TRANSFORMERS = {
    (mode, unknown): Transformer(
        sample_xdm_config(preflight_validation=False, identity={"pii_mode": mode}, unknown_events=unknown),
        org_id="X@AdobeOrg", source_name="prop", now=lambda: NOW_MS / 1000,
    )
    for mode in ("plain", "sha256")
    for unknown in ("dlq", "passthrough")
}
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", " ", "2024-02-30", "2025-06-29", "1720440349027", "a@b", "RETURN", "-1"]),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(prefix + (key,))
            out.extend(_paths(item, prefix + (key,)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.append(prefix + (i,))
            out.extend(_paths(item, prefix + (i,)))
    return out


def _parent(root: Any, path: tuple) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


@st.composite
def damaged_events(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from(POOL)))
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(event)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(event, path), path[-1]
        action = draw(st.sampled_from(["drop", "null", "replace", "space"]))
        if action == "drop":
            parent.pop(key) if isinstance(parent, dict) else parent.pop(key)
        elif action == "null":
            parent[key] = None
        elif action == "replace":
            parent[key] = draw(json_values)
        elif isinstance(parent, dict):
            parent[f"{key} "] = parent.pop(key)
    created = event.get("createdAt")
    if isinstance(created, int) and not isinstance(created, bool):
        event["createdAt"] = draw(st.sampled_from([created, float(created), created / 1000, str(created),
                                                    f"{created / 1e12}E12"]))
    return wrap(event, draw(st.sampled_from(ENVELOPES))) if "eventName" in event and "createdAt" in event else event


def _check(raw: Any, transformer: Transformer) -> None:
    try:
        messages = transformer.transform(raw)
    except TransformError as exc:
        assert exc.reason in REASONS
        assert exc.reason != "xdm_invalid"
        assert "unexpected payload shape" not in exc.detail, exc.__cause__  # a mapping crashed: a bug
        return
    assert messages and messages[0].kind == "event"
    for message in messages:
        entity = message.envelope["body"]["xdmEntity"]
        assert VALIDATOR.errors(message.kind, entity) == [], (message.event_name, VALIDATOR.errors(message.kind, entity))


@SETTINGS
@given(damaged_events(), st.sampled_from(sorted(TRANSFORMERS)))
def test_damaged_events_give_valid_xdm_or_a_bounded_error(raw: dict[str, Any], key: tuple[str, str]) -> None:
    _check(raw, TRANSFORMERS[key])


@SETTINGS
@given(json_values, st.sampled_from(sorted(TRANSFORMERS)))
def test_arbitrary_json_never_raises_anything_else(raw: Any, key: tuple[str, str]) -> None:
    _check(raw, TRANSFORMERS[key])


@SETTINGS
@given(st.sampled_from(sorted(EVENT_NAMES)), st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       st.sampled_from(sorted(TRANSFORMERS)))
def test_known_events_with_arbitrary_data(name: str, data: dict[str, Any], key: tuple[str, str]) -> None:
    data.setdefault("customerIdentifiers", {"customerId": 1})
    _check({"eventName": name, "createdAt": NOW_MS - 1000, "data": data}, TRANSFORMERS[key])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(POOL), st.sampled_from(ENVELOPES))
def test_envelope_does_not_change_the_output(raw: dict[str, Any], style: str) -> None:
    transformer = TRANSFORMERS[("plain", "dlq")]
    flat = [m.envelope for m in transformer.transform(raw)]
    assert [m.envelope for m in transformer.transform(wrap(raw, style))] == flat


@given(st.integers(0, 253_402_300_799_999), st.integers(0, 999))
def test_iso_ms_matches_the_calendar_also_from_its_cache(ms: int, other_ms: int) -> None:
    from datetime import datetime

    from connector.transform.times import iso_ms

    for value in (ms, ms - ms % 1000 + other_ms):  # the second call hits the per-second cache
        want = datetime.fromtimestamp(value // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_ms(value) == f"{want}.{value % 1000:03d}Z"
