"""What the pipeline checks on the side, at most once a second: the progress line, partitions whose
commit point is stuck, the catch-up ETA, the workers' memory, the heap's free pages, and — while credentials are
rejected or no request has renewed the token — an IMS probe, so consumption resumes once the
credentials are fixed and ``/readyz`` stays truthful."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from connector.config import DeliveryConfig
from connector.delivery.auth import TokenProvider
from connector.delivery.sink import Sink
from connector.errors import AuthFailure, TransientError
from connector.kafka.source import LAG
from connector.pipeline.offsets import OffsetTracker, TopicPartition
from connector.runtime.heap import HeapTrimmer
from connector.telemetry.metrics import METRICS
from connector.telemetry.progress import ProgressLog

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
_ETA_WINDOW_S = 60.0  # the catch-up ETA divides the lag by the acknowledgement rate over this window
_AUTH_PROBE_INTERVAL_S = 30.0


class Housekeeping:
    def __init__(self, tracker: OffsetTracker, delivery: DeliveryConfig, progress_interval_s: float = 60.0) -> None:
        self._tracker = tracker
        self._progress = ProgressLog(progress_interval_s)
        self._stall_after = delivery.stall_warning_s
        self._next = 0.0
        self._stall_logged: dict[TopicPartition, float] = {}
        self._ack_samples: deque[tuple[float, int]] = deque()  # (time, acknowledged so far), last minute
        self._trim = HeapTrimmer()  # the consumer process's free heap pages back to the system
        METRICS.catchup_objective.set(delivery.catchup_objective_s)

    def __call__(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + INTERVAL_S
        self._trim(now)
        self._progress(now)
        self.check_stalls(now)
        self._catchup_eta(now)

    def check_stalls(self, now: float) -> None:
        """Name every partition whose commit point is held by one record while later ones are
        acknowledged (a record stuck in delivery or in the dead-letter topic): log once per
        ``stall_warning_s`` each, and keep the gauge current."""
        after = self._stall_after
        stalled = self._tracker.stalled(now, after)
        METRICS.stalled_partitions.set(len(stalled))
        for tp, offset, age, behind in stalled:
            if now - self._stall_logged.get(tp, float("-inf")) >= after:
                self._stall_logged[tp] = now
                log.warning("commit point of %s[%d] has not moved for %.0fs: %s[%d]@%d is not acknowledged while "
                            "%d later records are", tp[0], tp[1], age, tp[0], tp[1], offset, behind)
        if len(self._stall_logged) > len(stalled):
            current = {s[0] for s in stalled}
            self._stall_logged = {tp: t for tp, t in self._stall_logged.items() if tp in current}

    def _catchup_eta(self, now: float) -> None:
        """Consumer lag ÷ the acknowledgement rate over the last minute: when the backlog clears."""
        samples = self._ack_samples
        samples.append((now, self._tracker.acked_total))
        while samples and now - samples[0][0] > _ETA_WINDOW_S:
            samples.popleft()
        lag = sum(LAG.get(tp, 0) for tp in self._tracker.assigned())
        span = now - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
        METRICS.catchup_eta.set(0.0 if lag == 0 else lag / rate if rate > 0 else float("inf"))


class AuthProbe:
    """Fetch a token at start and, while credentials are rejected, every 30 s; mark the sink's
    credentials accepted once IMS accepts them again and nothing is in flight."""

    def __init__(self, tokens: TokenProvider | None, sink: Sink, clock: Callable[[], float]) -> None:
        self._tokens = tokens
        self._credentials = sink.credentials
        self._clock = clock
        self._last = 0.0

    def due(self, idle: bool) -> bool:
        """Rejected credentials, or idle with no valid token (no sender renews it then)."""
        tokens = self._tokens
        return self._credentials.failed or (tokens is not None and idle and not tokens.valid())

    def __call__(self, idle: bool, force: bool = False) -> None:
        if self._tokens is None:
            return
        now = self._clock()
        if not force and now - self._last < _AUTH_PROBE_INTERVAL_S:
            return
        self._last = now
        try:
            self._tokens.token()
        except AuthFailure as exc:
            self._credentials.rejected()
            log.error("%s — consumption is paused and nothing is committed until this is fixed", exc)
        except TransientError as exc:
            log.warning("IMS not reachable yet: %s", exc)
        else:
            if idle:
                self._credentials.accepted()

