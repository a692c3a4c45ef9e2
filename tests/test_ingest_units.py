"""The webhook ingress without a broker: settings, authentication, validation at the door."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.config import ConfigError, load_settings
from connector.dev.samples import ENVELOPES, generate_events, wrap
from connector.ingest.auth import Authenticator
from connector.ingest.config import IngestConfig, IngestSettings
from connector.ingest.validate import Door, Rejected
from connector.kafka.topics import topic_for

TOKEN = "tok-0123456789abcdef-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CAPILLARY_AEP__"):
            monkeypatch.delenv(key)


# -- settings ------------------------------------------------------------------------------------

def test_the_env_names_used_by_docker_compose_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPILLARY_AEP__KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("CAPILLARY_AEP__INGEST__LISTEN", "0.0.0.0:8090")
    monkeypatch.setenv("CAPILLARY_AEP__INGEST__AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "belongs-to-the-connector")  # shared env: ignored
    s = load_settings(None, IngestSettings)
    assert s.kafka.bootstrap_servers == "kafka:9092"
    assert s.ingest.host_port == ("0.0.0.0", 8090)
    assert s.ingest.auth_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())
    conf = s.producer_config()
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert conf["message.timeout.ms"] == 10_000 and conf["bootstrap.servers"] == "kafka:9092"


def test_toml_file_secret_files_and_topic_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret-pw-0123456789abcdef-0123456789\n")
    cfg = tmp_path / "ingest.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = "b:1"
extra = {{ "compression.type" = "lz4" }}
[ingest]
auth_mode = "basic"
basic_username = "capillary"
basic_password_file = "{tmp_path / 'pw'}"
topic_prefix = "loyalty."
topics = {{ tierUpgraded = "loyalty.tiers.special" }}
""")
    s = load_settings(cfg, IngestSettings)
    assert s.ingest.basic_password.get_secret_value() == "s3cret-pw-0123456789abcdef-0123456789"
    assert s.producer_config()["compression.type"] == "lz4"
    door = Door(s.ingest, s.max_message_bytes)
    assert door.topic("tierUpgraded") == "loyalty.tiers.special"
    assert door.topic("pointsIssued") == "loyalty.points"
    assert door.topic("somethingNew") == "loyalty.other"
    monkeypatch.setenv("CAPILLARY_AEP__INGEST__AUTH_MODE", "bearer")  # env beats the file
    with pytest.raises(ConfigError, match=r"ingest: auth_token is required .*CAPILLARY_AEP__INGEST__AUTH_TOKEN"):
        load_settings(cfg, IngestSettings)


@pytest.mark.parametrize(("toml", "message"), [
    ('[ingest]\nauth_mode = "header"\nauth_header = "X-Api-Key"', "auth_token is required"),
    ('[ingest]\nauth_mode = "basic"\nbasic_username = "u"', "basic_password is required"),
    ('[ingest]\nauth_mode = "none"\nlisten = "8090"', "ingest.listen: listen must be host:port"),
    ('[ingest]\nauth_mode = "none"\nmax_body_bytes = 2048\nmax_inflight_bytes = 1024', "cannot exceed"),
    ('[ingest]\nauth_mode = "none"\ntopics = { a = "bad topic" }', "not a valid Kafka topic name"),
    ('[ingest]\nauth_mode = "none"\n[kafka]\nextra = { acks = "1" }', "kafka.extra: acks cannot be set"),
    ('[ingest]\nauth_mode = "none"\nauth_token_file = "/nonexistent/x"', "auth_token_file '/nonexistent/x'"),
    ('[ingest]\nauth_mode = "none"\nmax_inflight = 3', "ingest.max_inflight: Extra inputs are not permitted"),
    ('[ingest]\nauth_mode = "none"\nlisten = "0.0.0.0:8090"\nmetrics_listen = "0.0.0.0:8090"',
     "metrics_listen must differ from listen"),
    ('[ingest]\nauth_mode = "none"\nmetrics_listen = "9401"', "ingest.metrics_listen: metrics_listen must be host:port"),
    ('[ingest]\nauth_mode = "none"\ntls_cert_file = "/etc/hostname"', "tls_cert_file and tls_key_file go together"),
    ('[ingest]\nauth_mode = "none"\ntls_cert_file = "/nonexistent/c"\ntls_key_file = "/nonexistent/k"',
     "tls_cert_file/tls_key_file: cannot be read"),
    ('[ingest]\nauth_mode = "none"\ntls_cert_file = "/etc/hostname"\ntls_key_file = "/etc/hostname"',
     "tls_cert_file/tls_key_file: not a usable PEM certificate"),
    ('[ingest]\nauth_mode = "none"\nbody_timeout_s = 0', "ingest.body_timeout_s"),
    ('[ingest]\nauth_token = "0123456789abcdef0123456789abcde"', "ingest: auth_token is 31 characters; at least 32"),
    ('[ingest]\nauth_mode = "header"\nauth_header = "X-Api-Key"\nauth_token = "short"', "auth_token is 5 characters"),
    ('[ingest]\nauth_mode = "basic"\nbasic_username = "u"\nbasic_password = "short"', "basic_password is 5 characters"),
    ('[ingest]\nauth_mode = "none"\nsigning_secret = "short"', "signing_secret is 5 characters"),
])
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(cfg, IngestSettings)


def test_secrets_of_32_characters_are_enough_and_a_short_unused_one_does_not_matter() -> None:
    assert IngestConfig(auth_token="x" * 32).auth_token.get_secret_value() == "x" * 32
    assert IngestConfig(auth_mode="basic", basic_username="u", basic_password="p" * 32, auth_token="short")


# -- authentication ------------------------------------------------------------------------------

def expected_key(event: dict[str, Any]) -> bytes:
    data = event["data"]
    ids = data.get("customerIdentifiers") or data.get("survivorCustomerIdentifiers") \
        or data["coupons"][0]["customerIdentifiers"]
    return str(ids["customerId"]).encode()


def _auth(**kw: Any) -> Authenticator:
    return Authenticator(IngestConfig(**kw))


def test_bearer() -> None:
    a = _auth(auth_token=TOKEN)
    assert a.header == b"authorization"
    assert a.check(f"Bearer {TOKEN}".encode()) is None
    assert a.check(f"bearer  {TOKEN} ".encode()) is None
    assert a.check(None) == "missing" and a.check(b"") == "missing"
    assert a.check(b"Bearer wrong") == "invalid"
    assert a.check(f"Bearer {TOKEN}x".encode()) == "invalid"
    assert a.check(f"Basic {TOKEN}".encode()) == "invalid"
    assert a.check(TOKEN.encode()) == "invalid"


def test_static_header() -> None:
    a = _auth(auth_mode="header", auth_header="X-Api-Key", auth_token=TOKEN)
    assert a.header == b"x-api-key" and a.challenge is None
    assert a.check(TOKEN.encode()) is None
    assert a.check(f"Bearer {TOKEN}".encode()) == "invalid"
    assert a.check(None) == "missing"


def test_basic() -> None:
    a = _auth(auth_mode="basic", basic_username="capillary", basic_password="pw:with:colons:0123456789abcdef:0123456789")

    def basic(user: str, pw: str) -> bytes:
        return b"Basic " + base64.b64encode(f"{user}:{pw}".encode())

    assert a.check(basic("capillary", "pw:with:colons:0123456789abcdef:0123456789")) is None
    assert a.check(basic("capillary", "pw")) == "invalid"
    assert a.check(basic("other", "pw:with:colons:0123456789abcdef:0123456789")) == "invalid"
    assert a.check(b"Basic " + base64.b64encode(b"capillary")) == "invalid"  # no colon
    assert a.check(b"Basic not-base64!") == "invalid"
    assert a.check(b"Bearer x") == "invalid"


def test_none_accepts_anything() -> None:
    assert _auth(auth_mode="none").check(None) is None


# -- validation at the door ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return generate_events(300, seed=5)


def _door(**kw: Any) -> Door:
    return Door(IngestConfig(auth_mode="none", **kw), 999_000)


def test_every_envelope_gives_the_same_record(events: list[dict[str, Any]]) -> None:
    door = _door()
    for i, event in enumerate(events):
        style = ENVELOPES[i % len(ENVELOPES)]
        body = orjson.dumps(wrap(event, style))
        (record,) = door.parse(body)
        assert record.value == body  # a single object is produced exactly as received
        assert record.topic == topic_for(event["eventName"])
        assert record.event_id == event["eventId"]
        assert record.key == expected_key(event)
        assert record.label == event["eventName"]


def test_arrays_give_one_record_per_element_in_order(events: list[dict[str, Any]]) -> None:
    batch = [wrap(e, ENVELOPES[i % len(ENVELOPES)]) for i, e in enumerate(events[:50])]
    records = _door().parse(orjson.dumps(batch))
    assert [orjson.loads(r.value) for r in records] == batch
    assert [r.event_id for r in records] == [e["eventId"] for e in events[:50]]
    assert _door().parse(b"[]") == []


@pytest.mark.parametrize(("body", "reason", "detail"), [
    (b"", "empty_body", "not valid JSON"),
    (b"{not json", "invalid_json", "not valid JSON"),
    (b'"text"', "not_an_object", "JSON object or an array"),
    (b"42", "not_an_object", "JSON object or an array"),
    (b'{"eventId": "e1", "createdAt": 1700000000000}', "invalid_event", "no eventName or eventType"),
    (b'{"eventName": "pointsIssued", "createdAt": 1700000000000}', "invalid_event", "missing_field: eventId"),
    (b'{"eventName": "pointsIssued", "eventId": "  ", "createdAt": 1700000000000}', "invalid_event", "eventId"),
    (b'{"eventName": "pointsIssued", "eventId": "e1"}', "invalid_event", "missing_field: createdAt"),
    (b'{"eventName": "pointsIssued", "eventId": "e1", "createdAt": "soon"}', "invalid_event", "createdAt"),
    (b'{"eventName": "pointsIssued", "eventId": "e1", "createdAt": 1700000000000, "data": [1]}',
     "invalid_event", "data is not an object"),
])
def test_what_can_never_succeed_is_a_400_with_the_reason(body: bytes, reason: str, detail: str) -> None:
    with pytest.raises(Rejected) as exc:
        _door().parse(body)
    assert exc.value.status == 400
    assert exc.value.reason == reason
    assert detail in exc.value.detail


def test_a_mixed_batch_is_rejected_whole_and_lists_every_bad_index(events: list[dict[str, Any]]) -> None:
    batch: list[Any] = [events[0], {"eventName": "pointsIssued"}, events[1], 7, {"body": {"eventId": "x"}}]
    with pytest.raises(Rejected) as exc:
        _door().parse(orjson.dumps(batch))
    body = exc.value.body()
    assert exc.value.status == 400 and body["events"] == 5 and body["invalid"] == 3
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (1, "missing_field"), (3, "invalid_envelope"), (4, "invalid_envelope")]
    assert "3 of 5 events are invalid; nothing was accepted" in body["detail"]


def test_an_event_bigger_than_a_kafka_message_is_413(events: list[dict[str, Any]]) -> None:
    door = Door(IngestConfig(auth_mode="none"), 2_000)
    big = {**events[0], "padding": "x" * 3_000}
    with pytest.raises(Rejected) as exc:
        door.parse(orjson.dumps(big))
    assert exc.value.status == 413 and exc.value.errors[0]["reason"] == "too_large"
    with pytest.raises(Rejected) as exc:  # too large and invalid together: the 400 wins
        door.parse(orjson.dumps([big, {"eventName": "x"}]))
    assert exc.value.status == 400


def test_unknown_event_names_are_accepted_to_the_other_topic(events: list[dict[str, Any]]) -> None:
    (record,) = _door().parse(orjson.dumps({**events[0], "eventName": "brandNewEvent"}))
    assert record.topic == "capillary.events.other" and record.label == "other"


def test_the_fast_path_agrees_with_normalize(events: list[dict[str, Any]]) -> None:
    """The shortcut for clean flat events must never accept what normalize rejects, nor make a
    different record; anything unusual must fall through to normalize."""
    door = _door(topics={"pointsIssued": "points.special"})
    base = events[0]
    ids = base["data"]["customerIdentifiers"]
    variants: list[dict[str, Any]] = [wrap(e, s) for e in events for s in ENVELOPES] + [
        {**base, "eventId": 12345}, {**base, "eventId": 1.5}, {**base, "eventId": " e-1 "}, {**base, "eventId": ""},
        {**base, "eventName": "points Redeemed"}, {**base, "eventName": " pointsIssued"}, {**base, "eventName": ""},
        {**base, "eventName": "pointsIssued"}, {**base, "eventName": "brandNew"},
        {**base, "createdAt": 1.7e12}, {**base, "createdAt": "2024-05-01"}, {**base, "createdAt": -1},
        {**base, "createdAt": True}, {**base, "createdAt": None, "timeStamp": 1700000000000},
        {**base, "createdAt": 1_700_000_000}, {**base, "createdAt": 10**14}, {**base, "createdAt": 10**18},
        {**base, "data": None}, {**base, "data": {"customerIdentifiers ": ids}},
        {**base, "data": {"customerIdentifiers": {**ids, "customerId": "  77 "}}},
        {**base, "data": {"customerIdentifiers": {**ids, "customerId": 9.0}}},
        {**base, "data": {"customerIdentifiers": {**ids, "customerId": True}}},
        {**base, "data": {"customerIdentifiers": {"customerId ": 5}}},
        {**base, "eventId ": "x"}, {**base, "attributes": {"eventName": "other"}},
    ]
    fast_hits = 0
    for raw in variants:
        fast = door._fast(raw, None)
        if fast is None:
            continue
        fast_hits += 1
        assert fast == door._slow(raw, None), raw
    assert fast_hits >= len(events)  # the flat samples do take the shortcut


# -- admission -----------------------------------------------------------------------------------

def test_gate_caps_each_address_and_credential_before_the_global_caps() -> None:
    from connector.ingest.app import Gate

    gate = Gate(max_requests=4, max_bytes=10_000, per_address=2, per_credential=3)
    assert gate.admit(10, "a", "tok") is None and gate.admit(10, "a", "tok") is None
    assert gate.admit(10, "a", "tok") == "address"  # a's share is taken; others still get in
    assert gate.admit(10, "b", "tok") is None
    assert gate.admit(10, "c", "tok") == "credential"
    assert gate.admit(10, "c", "other") is None
    assert gate.admit(10, "d", "third") == "requests"  # 4 in flight: the global cap
    gate.release(10, "a", "tok")
    assert gate.admit(20_000, "a", "tok") == "bytes"
    for addr, cred in (("a", "tok"), ("b", "tok"), ("c", "other")):
        gate.release(10, addr, cred)
    assert (gate.requests, gate.bytes, gate.by_address, gate.by_credential) == (0, 0, {}, {})  # nothing leaks


def test_a_charge_grows_by_steps_with_the_body_and_never_past_its_ceiling() -> None:
    from connector.ingest.app import CHARGE_STEP, Charge, Gate

    gate = Gate(max_requests=4, max_bytes=4 * CHARGE_STEP)
    small = Charge(gate, 100)  # a declared length within one step is charged exactly
    assert small.amount == 100 and small.cover(100) and not small.cover(101)
    chunked = Charge(gate, 3 * CHARGE_STEP)  # max_body_bytes for a body of unknown length
    assert chunked.amount == CHARGE_STEP and gate.admit(chunked.amount) is None
    assert chunked.cover(CHARGE_STEP) and gate.bytes == CHARGE_STEP  # within the charge: nothing to do
    assert chunked.cover(CHARGE_STEP + 1) and chunked.amount == 2 * CHARGE_STEP == gate.bytes
    assert chunked.cover(3 * CHARGE_STEP) and gate.bytes == 3 * CHARGE_STEP
    assert not chunked.cover(3 * CHARGE_STEP + 1)  # the ceiling (_read_body answers 413 first)
    other = Charge(gate, 3 * CHARGE_STEP)
    assert gate.admit(other.amount) is None and gate.bytes == 4 * CHARGE_STEP
    assert not other.cover(CHARGE_STEP + 1) and other.amount == CHARGE_STEP  # no room: refused, unchanged
    gate.release(chunked.amount)
    gate.release(other.amount)
    assert gate.bytes == 0


def test_gate_without_per_client_caps_keeps_no_tables() -> None:
    from connector.ingest.app import Gate

    gate = Gate(max_requests=2, max_bytes=100)
    assert gate.admit(10, "a", "tok") is None and gate.admit(10, "a", "tok") is None
    assert gate.admit(10, "a", "tok") == "requests"
    assert gate.by_address == {} and gate.by_credential == {}


def test_tls_reloader_keeps_the_old_pair_when_the_new_files_do_not_load(tmp_path: Path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    from connector.ingest.edge import TlsReloader

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    cfg = IngestConfig(auth_mode="none", tls_cert_file=str(cert), tls_key_file=str(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    reloader = TlsReloader(cfg, lambda: ctx)
    assert reloader.check() is False  # nothing changed
    other = trustme.CA().issue_cert("127.0.0.1")
    other.cert_chain_pems[0].write_to_path(str(cert))  # the key not yet: a mismatched pair
    assert reloader.check() is False and reloader.reloads == 0
    other.private_key_pem.write_to_path(str(key))
    assert reloader.check() is True and reloader.reloads == 1
