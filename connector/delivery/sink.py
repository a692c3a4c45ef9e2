"""Sink stage: deliver one batch to the AEP streaming inlet (``/collection/batch/{inletId}``).

``Sink.deliver`` runs on a sender thread and returns only when every message of the batch is
resolved — accepted by AEP, or failed permanently (per-message 4xx, a single record over the size
limit, a single record rejected by a whole-request 400) — or when the batch is cancelled. What
happens on each answer (the failure matrix, also in docs/delivery.md):

====================  =========================================================================
answer                action
====================  =========================================================================
207/200               per message: accepted → delivered; 4xx → permanent failure (dead letter);
                      5xx/429 → re-send it; a profile update with every later update of the
                      same customer (Kafka key) in the request, so a customer's last write
                      is always the newest (ExperienceEvents need no order). The re-send follows
                      at once (short jitter) if the round accepted anything,
                      else after the growing backoff. A message failing in more than
                      ``delivery.max_message_retries`` rounds that accepted others → dead letter
413                   split the request in halves; a single message → permanent failure
400 (whole request)   bisect to isolate the bad messages; deliver the rest
401/403               refresh the token and retry once; then ``auth_failed``: keep retrying
                      slowly, never dead-letter, never acknowledge
404, other 4xx        configuration problem (unknown inlet…): like auth, retry slowly
408/429/5xx, timeout,
connection error      retry with exponential backoff and full jitter, honouring Retry-After;
                      a 429 also lowers the requests allowed in flight (``AdaptiveLimit``)
====================  =========================================================================

Nothing here drops a message: a transient failure is retried until it succeeds or the batch is
cancelled (revoke or shutdown deadline), and a cancelled batch is never acknowledged.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, assert_never

import httpx
import orjson

from connector.config import AepConfig, DeliveryConfig
from connector.delivery.auth import TokenProvider
from connector.delivery.batch import WRAPPER_BYTES, PendingRecord, encode_body
from connector.delivery.coalesce import coalesce, identity_hint
from connector.delivery.concurrency import AdaptiveLimit
from connector.delivery.egress import OneShotBody, describe_http_error
from connector.delivery.governor import Governor
from connector.errors import AuthFailure, TransientError
from connector.telemetry.logs import RateLimitedLog
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

_RETRY_AFTER_CAP_S = 300.0
_RETRY_LOG_INTERVAL_S = 10.0  # retry log lines: at most one per reason per interval, with counts
_STALLED_BACKOFF_S = 30.0  # retry pace while credentials or the inlet configuration are rejected


@dataclass(slots=True)
class MessageFailure:
    status: int
    message: str
    xaction_id: str | None = None


@dataclass(slots=True)
class BatchResult:
    records: list[PendingRecord]
    # record index → first permanent failure of one of its messages
    failures: dict[int, MessageFailure] = field(default_factory=dict)
    abandoned: bool = False
    requests: int = 0
    # record index → rounds in which one of its messages failed while others were accepted
    message_retries: dict[int, int] = field(default_factory=dict)


# (record index in the batch, encoded message, ordering key — None for an ExperienceEvent, the
# profile's identity for a profile update — and the other records it stands for: a coalesced
# profile update stands for every update it merged)
_Item = tuple[int, bytes, Any, tuple[int, ...]]


# -- what one request to the inlet comes to: drawn once, dispatched on by type in Sink.deliver ----
@dataclass(frozen=True, slots=True)
class Accepted:
    """200/207 with a readable body: ``entries`` says per message what the inlet did with it."""

    entries: list[Any]


@dataclass(frozen=True, slots=True)
class TooLarge:
    """413: the request is larger than the inlet accepts; its halves may pass."""

    message: str
    status: ClassVar[int] = 413


@dataclass(frozen=True, slots=True)
class BadRequest:
    """400 for the whole request: some message in it is malformed; bisecting isolates it."""

    message: str
    status: ClassVar[int] = 400


@dataclass(frozen=True, slots=True)
class Retry:
    """408/429/5xx, an unreadable 207 body, a timeout or connection error, or IMS out of reach:
    the same request may pass later (``status`` 0 when no HTTP answer came)."""

    message: str = ""
    status: int = 0
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Stalled:
    """401/403 with a fresh token, credentials IMS rejects, 404 and other 4xx: the inlet rejects us
    for reasons a retry of the same data cannot fix by itself — retry slowly, never dead-letter."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """No answer: the batch was cancelled while the request waited for the send budget or a slot."""


Answer = Accepted | TooLarge | BadRequest | Retry | Stalled | Cancelled


class CredentialHealth:
    """Whether IMS or the inlet rejects our credentials: written by the sender threads and the auth
    probe, read by the loop (pause, hold new requests) and ``/readyz``; keeps the gauge beside it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def rejected(self) -> None:
        with self._lock:
            self._failed = True
            METRICS.auth_failed.set(1)

    def accepted(self) -> bool:
        """The credentials work (again); True if they had been rejected until now."""
        with self._lock:
            if not self._failed:
                return False
            self._failed = False
            METRICS.auth_failed.set(0)
            return True


class Sink:
    def __init__(
        self,
        aep: AepConfig,
        delivery: DeliveryConfig,
        client: httpx.Client,
        tokens: TokenProvider | None,
        lanes: int = 1,
        *,
        coalesce_profiles: bool = True,
        max_bytes: int = 950_000,
        governor: Governor | None = None,
        credentials: CredentialHealth | None = None,
    ) -> None:
        self._url = aep.batch_url
        self._delivery = delivery
        self._client = client
        self._tokens = tokens
        self._base_headers = {
            "Content-Type": "application/json",
            "x-sandbox-name": aep.sandbox,
            "x-gw-ims-org-id": aep.org_id,
        }
        if delivery.gzip:
            self._base_headers["Content-Encoding"] = "gzip"
        self.credentials = credentials if credentials is not None else CredentialHealth()
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self.limit = AdaptiveLimit(max(1, lanes))
        self.governor = governor if governor is not None else Governor(0.0, 0.0)
        self._coalesce = coalesce_profiles
        self._max_message_bytes = max_bytes - WRAPPER_BYTES
        self._retry_log = RateLimitedLog(log, _RETRY_LOG_INTERVAL_S)

    # -- public ------------------------------------------------------------------------------
    def deliver(self, records: list[PendingRecord], cancel: threading.Event) -> BatchResult:
        result = BatchResult(records)
        items = self._items(records)
        work: list[list[_Item]] = [items]  # a stack of chunks; head is work[-1]
        attempt = 0  # rounds in a row that made no progress: what the backoff grows with
        while work:
            if cancel.is_set():
                result.abandoned = True
                return result
            chunk = work.pop()
            match self._post(chunk, result, cancel):
                case Cancelled():
                    result.abandoned = True
                    return result
                case Accepted(entries):
                    retry, progressed = self._apply_entries(chunk, entries, result)
                    self._note_success()
                    if not retry:
                        attempt = 0
                        continue
                    work.append(retry)
                    METRICS.retries.labels("message_5xx").inc()
                    METRICS.message_retries.inc(len(retry))
                    if progressed:
                        # Most of the request went through: the inlet works, these messages were unlucky.
                        attempt = 0
                        pause = random.uniform(0, self._delivery.backoff_initial_s)
                    else:
                        attempt += 1
                        pause = self._backoff(attempt, None)
                    self._retry_log.note(
                        "message_5xx", "re-sending %d of %d messages after per-message failures (%s); next in %.2fs",
                        len(retry), len(chunk), "progress" if progressed else f"no progress, round {attempt}", pause)
                case TooLarge() | BadRequest() as answer:
                    attempt = 0
                    if len(chunk) == 1:
                        _fail(result, chunk[0], MessageFailure(answer.status, answer.message))
                    else:
                        METRICS.retries.labels("split_413" if isinstance(answer, TooLarge) else "bisect_400").inc()
                        mid = len(chunk) // 2
                        work.append(chunk[mid:])
                        work.append(chunk[:mid])
                    continue
                case Retry(message, status, retry_after):  # the whole request failed
                    self._note_failure()
                    reason = f"http_{status}" if status else "network"
                    METRICS.retries.labels(reason).inc()
                    METRICS.message_retries.inc(len(chunk))
                    work.append(chunk)
                    attempt += 1
                    pause = self._backoff(attempt, retry_after)
                    self._retry_log.note(reason, "request of %d messages failed (%s %s); retry %d in %.2fs",
                                         len(chunk), reason, message, attempt, pause)
                case Stalled(reason, message):
                    self._note_failure()
                    METRICS.retries.labels(reason).inc()
                    log.error("inlet rejects requests (%s): %s; retrying in %ss, nothing is acknowledged meanwhile",
                              reason, message, _STALLED_BACKOFF_S)
                    work.append(chunk)
                    pause = _STALLED_BACKOFF_S
                case unknown:
                    assert_never(unknown)
            if cancel.wait(pause):
                result.abandoned = True
                return result
        return result

    def _items(self, records: list[PendingRecord]) -> list[_Item]:
        """The batch's messages in offset order, each with its ordering key and the records it
        stands for; a customer's profile updates coalesced into one (``connector.delivery.coalesce``)."""
        # Order matters only between profile updates of one profile (primary identity; its
        # record's partition and key when it cannot be read): ExperienceEvents are immutable,
        # time-stamped facts.
        items: list[_Item] = []
        profiles: list[int] = []
        for ri, rec in enumerate(records):
            for msg, label in zip(rec.messages, rec.labels):
                if label[0] == "profile":
                    profiles.append(len(items))
                    items.append((ri, msg, identity_hint(msg) or (rec.tp, rec.key), ()))
                else:
                    items.append((ri, msg, None, ()))
        if not profiles:
            return items
        if self._coalesce and len(profiles) > 1:
            left_out: list[str] = []
            merged = coalesce([items[k][1] for k in profiles], [items[k][2] for k in profiles],
                              self._max_message_bytes, left_out)
            for reason in left_out:
                METRICS.identities_dropped.labels(reason).inc()
            if len(merged) < len(profiles):
                keep: dict[int, _Item] = {}
                for message, members in merged:
                    last = profiles[members[-1]]
                    others = tuple(items[profiles[m]][0] for m in members[:-1])
                    keep[last] = (items[last][0], message, items[last][2], others)
                is_profile = set(profiles)
                items = [keep.get(k, item) for k, item in enumerate(items) if k not in is_profile or k in keep]
                METRICS.profile_records_sent.inc(len(keep))
                METRICS.profile_updates_merged.inc(len(profiles) - len(keep))
                return items
        METRICS.profile_records_sent.inc(len(profiles))
        return items

    @property
    def auth_failed(self) -> bool:
        return self.credentials.failed

    @property
    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    # -- one request ---------------------------------------------------------------------------
    def _post(self, chunk: list[_Item], result: BatchResult,
              cancel: threading.Event) -> Answer:
        body = encode_body(item[1] for item in chunk)
        METRICS.batch_records.observe(len(chunk))
        METRICS.batch_bytes.observe(len(body))
        if self._delivery.gzip:
            body = gzip.compress(body, compresslevel=1)  # zlib releases the GIL: cheap on sender threads
        if self.governor.enabled and not self.governor.wait_for(
                len(chunk), sum(1 for item in chunk if item[2] is not None), cancel):
            return Cancelled()
        refreshed = False
        while True:
            headers = dict(self._base_headers)
            token = None
            if self._tokens is not None:
                try:
                    token = self._tokens.token()
                except TransientError as exc:
                    return Retry(str(exc), retry_after=exc.retry_after)
                except AuthFailure as exc:
                    self.credentials.rejected()
                    return Stalled("auth", str(exc))
                headers["Authorization"] = f"Bearer {token}"
            if not self.limit.acquire(cancel):
                return Cancelled()
            start = time.perf_counter()
            result.requests += 1
            headers["Content-Length"] = str(len(body))
            content = OneShotBody(body)
            try:
                # Streamed: the answer is read into ``answer`` rather than cached on the response,
                # which httpx keeps in reference cycles (see OneShotBody) until the cyclic GC comes by.
                with self._client.stream("POST", self._url, content=content, headers=headers) as resp:
                    answer = b"".join(resp.iter_bytes())
            except httpx.HTTPError as exc:
                METRICS.http_requests.labels("dcs", "error").inc()
                return Retry(describe_http_error(exc))
            finally:
                content.release()
                self.limit.release()
                METRICS.http_request_seconds.labels("dcs").observe(time.perf_counter() - start)
            status = resp.status_code
            if status == 429:
                self.limit.throttled()
            elif status < 300:
                self.limit.accepted()
            METRICS.http_requests.labels("dcs", f"{status // 100}xx").inc()
            if status in (200, 207):
                try:
                    doc = orjson.loads(answer)
                    entries = doc["responses"]
                    if not isinstance(entries, list):
                        raise TypeError
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return Retry("unparseable 207 body", status)
                if self.credentials.accepted():
                    log.info("inlet accepts our credentials again")
                return Accepted(entries)
            if status in (401, 403):
                if not refreshed and self._tokens is not None and token is not None:
                    self._tokens.invalidate(token)
                    refreshed = True
                    METRICS.retries.labels("token_refresh").inc()
                    continue
                self.credentials.rejected()
                return Stalled("auth", f"inlet answered {status} with a fresh token: check credentials and inlet")
            if status == 413:
                return TooLarge("request larger than the inlet accepts (413)")
            if status == 400:
                return BadRequest(_problem_message(answer))
            if status in (408, 429) or status >= 500:
                return Retry("", status, _retry_after(resp.headers.get("Retry-After")))
            return Stalled(f"http_{status}", f"inlet answered {status}: {_problem_message(answer)}")

    def _apply_entries(
        self, chunk: list[_Item], entries: list[Any], result: BatchResult
    ) -> tuple[list[_Item], bool]:
        """Resolve a chunk from its 207 entries; return what must be re-sent, and whether the round
        made progress (some message accepted or resolved for good)."""
        if len(entries) != len(chunk):
            aligned = _align_by_xaction(entries, len(chunk))
            if aligned is None:
                log.warning("207 with %d entries for %d messages; re-sending the request", len(entries), len(chunk))
                return chunk, False
            entries = aligned
        # Only what must be re-sent is: the failed messages, and after a failed profile update
        # every later update with the same ordering key (the profile's primary identity, see
        # _items) in the chunk, so an older update never overtakes a newer one. Accepted
        # ExperienceEvents and other profiles' updates are not sent again.
        records = result.records
        failures = result.failures
        retry_at: dict[int, int] = {}  # position → status of its transient failure this round
        accepted = resolved = 0
        for i, entry in enumerate(entries):
            status = _entry_status(entry)
            if status is None:
                accepted += 1
                continue
            if status in (408, 429) or status >= 500:
                retry_at[i] = status
            else:
                resolved += 1
                msg = str(entry.get("message", ""))[:500] if isinstance(entry, dict) else ""
                xid = entry.get("xactionId") if isinstance(entry, dict) else None
                _fail(result, chunk[i], MessageFailure(status, msg, str(xid) if xid else None))
        if not retry_at:
            return [], True
        progressed = accepted + resolved > 0
        limit = self._delivery.max_message_retries
        if progressed and limit:
            # Count a record's failures only in rounds where the inlet accepted others: a message
            # that keeps failing while its neighbours pass is not the inlet's bad day.
            for i, status in retry_at.items():
                ri = chunk[i][0]
                n = result.message_retries[ri] = result.message_retries.get(ri, 0) + 1
                if n > limit and ri not in failures:
                    _fail(result, chunk[i], MessageFailure(status, f"still failing after {n} attempts (last: {status})"))
                    log.warning("giving up on %s[%d]@%d: its message failed %d times while others were accepted",
                                records[ri].tp[0], records[ri].tp[1], records[ri].offset, n)
        first_retry: dict[Any, int] = {}  # ordering key → position of its first failed update
        failed: set[int] = set()
        for i in retry_at:
            ri, _, order, _ = chunk[i]
            if ri not in failures:
                failed.add(i)
                if order is not None:
                    first_retry.setdefault(order, i)
        retry = []
        end = len(chunk)
        for i, item in enumerate(chunk):
            ri, _, order, _ = item
            if i in failed or (order is not None and first_retry and ri not in failures
                               and i > first_retry.get(order, end)):
                retry.append(item)
        return retry, progressed

    # -- helpers -------------------------------------------------------------------------------
    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _RETRY_AFTER_CAP_S)
        cap = min(self._delivery.backoff_max_s, self._delivery.backoff_initial_s * (2 ** min(attempt, 20)))
        return random.uniform(0, cap)

    def _note_failure(self) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def _note_success(self) -> None:
        self.failing_since = None
        METRICS.last_delivery_timestamp.set(time.time())


def _fail(result: BatchResult, item: _Item, failure: MessageFailure) -> None:
    """A permanent failure of a message fails every record it stands for."""
    result.failures.setdefault(item[0], failure)
    for ri in item[3]:
        result.failures.setdefault(ri, failure)


def _entry_status(entry: Any) -> int | None:
    """None for an accepted message, else its HTTP-like status (both documented styles)."""
    if not isinstance(entry, dict):
        return 500
    raw = entry.get("statusCode", entry.get("status"))
    if raw is None:
        return None if "xactionId" in entry or not entry.get("message") else 400
    try:
        status = int(raw)
    except (TypeError, ValueError):
        return 500
    return status if status >= 400 else None


def _align_by_xaction(entries: list[Any], n: int) -> list[Any] | None:
    """Map entries to messages by the index after the last '-' or ':' of xactionId (2024 style)."""
    out: list[Any] = [None] * n
    for entry in entries:
        xid = entry.get("xactionId") if isinstance(entry, dict) else None
        if not isinstance(xid, str):
            return None
        tail = xid.rsplit("-", 1)[-1].rsplit(":", 1)[-1]
        if not tail.isdigit() or int(tail) >= n:
            return None
        out[int(tail)] = entry
    return None if any(e is None for e in out) else out


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _problem_message(answer: bytes) -> str:
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer[:1200].decode("utf-8", "replace")[:300]
    if isinstance(doc, dict):
        report = doc.get("report")
        if isinstance(report, dict) and report.get("message"):
            return str(report["message"])[:300]
        return str(doc.get("title") or doc.get("message") or "")[:300]
    return ""
