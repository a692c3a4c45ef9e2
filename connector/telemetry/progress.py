"""A progress line every ``log.progress_interval_s`` (60 s) and the totals when the pipeline stops,
read from the metrics, so that a log alone says what the connector did: records read and
acknowledged, messages sent to AEP, dead letters, the lag and the rate. Nothing is logged while
nothing happens and nothing is waiting."""

from __future__ import annotations

import logging
from typing import Any

from connector.kafka.source import LAG
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)


def _total(metric: Any) -> float:
    """A counter's value summed over its labels."""
    return float(sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total")))


def snapshot() -> dict[str, float]:
    return {"read": _total(METRICS.records_consumed), "acknowledged": _total(METRICS.records_acknowledged),
            "messages": _total(METRICS.records_delivered), "dead_letters": _total(METRICS.records_dead_lettered),
            "lag": float(sum(LAG.values()))}


def describe(now: dict[str, float], seconds: float | None = None, since: dict[str, float] | None = None) -> str:
    text = (f"{now['read']:,.0f} records read, {now['acknowledged']:,.0f} acknowledged, "
            f"{now['messages']:,.0f} XDM messages accepted by AEP, {now['dead_letters']:,.0f} dead-lettered, "
            f"lag {now['lag']:,.0f}")
    if seconds and since is not None:
        rate = (now["acknowledged"] - since["acknowledged"]) / seconds
        text += f"; {rate:,.0f} records/s over the last {seconds:.0f} s"
    return text


class ProgressLog:
    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next: float | None = None
        self._last = snapshot()

    def __call__(self, now: float) -> None:
        if self._interval <= 0:
            return
        if self._next is None:
            self._next = now + self._interval
            return
        if now < self._next:
            return
        seconds = now - self._next + self._interval
        self._next = now + self._interval
        current = snapshot()
        if current != self._last or current["lag"]:
            log.info("progress: %s", describe(current, seconds, self._last))
        self._last = current

    @staticmethod
    def totals() -> str:
        return describe(snapshot())
