"""Signed webhooks: HMAC over "<timestamp>.<body>", a replay window, a bounded replay memory.

Unit tests drive :class:`Signatures` with a fake clock; the integration test posts to a real
ingress process and reads Kafka back: only the accepted request's event is there.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import read_topic
from test_ingest import Ingress, event_id_of, start_ingress

from connector.ingest.config import IngestConfig
from connector.ingest.signature import ReplayMemory, Signatures, sign

SECRET = "signing-secret-0123456789abcdef-0123456789"
NOW = 1_750_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def _signatures(clock: Clock, **kw: Any) -> Signatures:
    return Signatures(IngestConfig(auth_mode="none", signing_secret=SECRET, **kw), clock)


def _check(s: Signatures, body: bytes, ts: int, signature: str | None = None) -> object:
    """What the ingress decides for one request: a failure label, "full", or the remembered key."""
    header = signature if signature is not None else sign(SECRET.encode(), ts, body)
    checked = s.check_headers(header.encode(), str(ts).encode())
    if not isinstance(checked, int):
        return checked
    return s.verify(header.encode(), checked, body)


def test_a_valid_signature_is_accepted_once() -> None:
    clock = Clock()
    s = _signatures(clock)
    body = b'{"eventId":"a"}'
    assert isinstance(_check(s, body, NOW), bytes)
    assert _check(s, body, NOW) == "replayed"
    assert isinstance(_check(s, body, NOW - 1), bytes)  # another timestamp is another signed request
    assert isinstance(_check(s, body + b" ", NOW), bytes)  # and so is another body


def test_wrong_signatures_are_bad() -> None:
    s = _signatures(Clock())
    body = b'{"eventId":"a"}'
    good = sign(SECRET.encode(), NOW, body)
    other = sign(b"another-secret-of-enough-length-000000", NOW, body)
    assert _check(s, body, NOW, other) == "bad"
    assert _check(s, body, NOW, good.replace("sha256=", "sha512=")) == "bad"  # the algorithm is part of it
    assert _check(s, body, NOW, good.removeprefix("sha256=")) == "bad"
    assert _check(s, body, NOW, good[:-2]) == "bad"
    assert _check(s, b'{"eventId":"b"}', NOW, good) == "bad"  # the body is covered
    assert _check(s, body, NOW + 1, good) == "bad"  # so is the timestamp
    assert _check(s, body, NOW, good.upper().replace("SHA256=", "sha256=")) != "bad"  # hex in either case
    rotated = _signatures(Clock())  # a sender mid-rotation signs with both secrets
    assert isinstance(_check(rotated, body, NOW, f"{other}, {good}"), bytes)


def test_missing_malformed_and_stale_headers_are_refused_before_the_body() -> None:
    clock = Clock()
    s = _signatures(clock, signature_window_s=300)
    assert s.check_headers(None, b"1") == "missing"
    assert s.check_headers(b"sha256=00", None) == "missing"
    assert s.check_headers(b"sha256=00", b"") == "missing"
    for ts in (b"-1", b"1.5", b"soon", b"1" * 13):
        assert s.check_headers(b"sha256=00", ts) == "bad", ts
    assert s.check_headers(b"sha256=00", str(NOW - 300).encode()) == NOW - 300  # the window's edges are in it
    assert s.check_headers(b"sha256=00", str(NOW + 300).encode()) == NOW + 300
    assert s.check_headers(b"sha256=00", str(NOW - 301).encode()) == "stale"
    assert s.check_headers(b"sha256=00", str(NOW + 301).encode()) == "stale"  # from the future too


def test_a_replay_is_refused_until_its_timestamp_leaves_the_window_then_it_is_stale() -> None:
    clock = Clock()
    s = _signatures(clock, signature_window_s=60)
    body = b"{}"
    assert isinstance(_check(s, body, NOW), bytes)
    for step in (1, 30, 60):
        clock.now = NOW + step
        assert _check(s, body, NOW) == "replayed", step
    clock.now = NOW + 61
    assert _check(s, body, NOW) == "stale"
    clock.now = NOW + 62
    _check(s, body, NOW + 62)
    assert len(s.memory) == 1  # the first one has expired from memory


def test_a_request_not_answered_200_is_forgotten_so_it_can_be_retried() -> None:
    s = _signatures(Clock())
    key = _check(s, b"{}", NOW)
    assert isinstance(key, bytes)
    s.forget(key)
    assert isinstance(_check(s, b"{}", NOW), bytes)
    assert _check(s, b"{}", NOW) == "replayed"


def test_a_full_replay_memory_refuses_rather_than_forgets() -> None:
    clock = Clock()
    s = _signatures(clock, signature_max_remembered=3, signature_window_s=10)
    for i in range(3):
        assert isinstance(_check(s, b"%d" % i, NOW), bytes)
    assert _check(s, b"new", NOW) == "full"  # refused (429, retried later) ...
    assert _check(s, b"0", NOW) == "full"  # ... and the old entries still hold: no replay gets through
    clock.now = NOW + 11  # they expire with the window: room again
    assert isinstance(_check(s, b"new", NOW + 11), bytes)


def test_the_bound_holds_for_requests_checked_together() -> None:
    """Two requests pass the header check while one slot is left: the second verified is refused."""
    s = _signatures(Clock(), signature_max_remembered=1)
    pending = [(body, sign(SECRET.encode(), NOW, body).encode()) for body in (b"a", b"b")]
    assert [s.check_headers(sig, str(NOW).encode()) for _, sig in pending] == [NOW, NOW]
    assert isinstance(s.verify(pending[0][1], NOW, pending[0][0]), bytes)
    assert s.verify(pending[1][1], NOW, pending[1][0]) == "full"
    assert len(s.memory) == 1


def test_replay_memory_expires_by_timestamp_not_by_arrival() -> None:
    m = ReplayMemory(limit=10)
    assert m.add(b"late", expires=NOW + 100, now=NOW) is None
    assert m.add(b"early", expires=NOW + 5, now=NOW) is None
    assert m.add(b"early", expires=NOW + 5, now=NOW + 5) == "replayed"
    m.full(NOW + 6)
    assert len(m) == 1 and m.add(b"late", NOW + 100, NOW + 6) == "replayed"


def test_secret_and_header_settings_are_checked(tmp_path: Path) -> None:
    from connector.config import ConfigError, load_settings
    from connector.ingest.config import IngestSettings

    (tmp_path / "secret").write_text(SECRET + "\n")
    cfg = IngestConfig(auth_mode="none", signing_secret_file=str(tmp_path / "secret"), signature_algorithm="sha512")
    assert cfg.signing_secret.get_secret_value() == SECRET and SECRET not in repr(cfg)
    assert _check(Signatures(cfg, Clock()), b"x", NOW, sign(SECRET.encode(), NOW, b"x", "sha512")) != "bad"
    for toml, message in (
        (f'signing_secret = "{SECRET}"\nsignature_header = "X-Capillary-Timestamp"', "must differ"),
        (f'signing_secret = "{SECRET}"\nsignature_header = "Authorization"', "must differ"),
        ('signature_algorithm = "md5"', "ingest.signature_algorithm"),
        ('signature_window_s = 0', "ingest.signature_window_s"),
        ('signing_secret_file = "/nonexistent/s"', "signing_secret_file '/nonexistent/s'"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(f'[ingest]\nauth_mode = "none"\n{toml}\n')
        with pytest.raises(ConfigError, match=message):
            load_settings(path, IngestSettings)


# -- a real ingress process -----------------------------------------------------------------------

def _signed(ingress: Ingress, body: bytes, ts: int | None = None, secret: str = SECRET,
            signature: str | None = None) -> tuple[int, dict[str, Any]]:
    ts = int(time.time()) if ts is None else ts
    headers = {"X-Capillary-Timestamp": str(ts),
               "X-Capillary-Signature": signature or sign(secret.encode(), ts, body)}
    r = ingress.post(body, headers=headers)
    return r.status_code, r.json()


@pytest.mark.integration
def test_signed_webhooks_end_to_end(broker: str, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}.capillary.events."
    ingress = start_ingress(tmp_path, broker, prefix, extra="signature_window_s = 120",
                            env={"CAPILLARY_AEP__INGEST__SIGNING_SECRET": SECRET})
    try:
        def event(tag: str) -> bytes:
            return orjson.dumps({"eventName": "pointsIssued", "eventId": f"{tag}-{uuid.uuid4()}",
                                 "createdAt": 1_750_000_000_000, "data": {"customerIdentifiers": {"customerId": 3}}})

        accepted, replayed, bad, stale, missing = (event(t) for t in ("ok", "replay", "bad", "stale", "missing"))
        now = int(time.time())
        assert _signed(ingress, accepted, now) == (200, {"accepted": 1})
        status, answer = _signed(ingress, accepted, now)  # the same signed request again
        assert status == 401 and "already received" in answer["detail"], answer
        assert _signed(ingress, replayed, now)[0] == 200
        assert _signed(ingress, replayed, now)[0] == 401
        assert _signed(ingress, bad, secret="not-the-secret-but-long-enough-000000")[0] == 401
        assert _signed(ingress, stale, now - 121)[0] == 401
        assert ingress.post(missing).status_code == 401  # the bearer token alone is not enough
        invalid = b'{"eventName": "pointsIssued"}'  # not stored (400): the sender may retry it as it was
        assert _signed(ingress, invalid, now)[0] == 400
        assert _signed(ingress, invalid, now)[0] == 400

        m = ingress.metrics()
        assert {r: m[f"capillary_ingest_signature_failures_total{{reason={r}}}"]
                for r in ("missing", "bad", "stale", "replayed")} == {"missing": 1, "bad": 1, "stale": 1,
                                                                      "replayed": 2}
        assert m.get("capillary_ingest_auth_failures_total{reason=invalid}", 0) == 0  # the bearer check passed
        ids = [event_id_of(orjson.loads(r.value())) for r in read_topic(broker, ingress.topic("pointsIssued"))]
        assert sorted(ids) == sorted(orjson.loads(b)["eventId"] for b in (accepted, replayed))  # once each
        assert SECRET not in ingress.proc.log_text()
    finally:
        assert ingress.stop() == 0


@pytest.mark.integration
def test_a_full_replay_memory_answers_429_to_be_retried(broker: str, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}.capillary.events."
    ingress = start_ingress(tmp_path, broker, prefix, extra="signature_max_remembered = 1",
                            env={"CAPILLARY_AEP__INGEST__SIGNING_SECRET": SECRET})
    try:
        first, second = (orjson.dumps({"eventName": "pointsIssued", "eventId": f"full-{uuid.uuid4()}",
                                       "createdAt": 1_750_000_000_000,
                                       "data": {"customerIdentifiers": {"customerId": 4}}}) for _ in range(2))
        now = int(time.time())
        assert _signed(ingress, first, now)[0] == 200
        ts = str(now)
        r = ingress.post(second, headers={"X-Capillary-Timestamp": ts,
                                          "X-Capillary-Signature": sign(SECRET.encode(), now, second)})
        assert r.status_code == 429 and r.headers["retry-after"] == "5", r.text  # not a 401: retried later
        assert _signed(ingress, first, now)[0] == 429  # nor is the remembered one forgotten to make room
        m = ingress.metrics()
        assert m["capillary_ingest_throttled_total{cap=signatures}"] == 2
        assert m["capillary_ingest_signature_failures_total{reason=replayed}"] == 0
    finally:
        assert ingress.stop() == 0
