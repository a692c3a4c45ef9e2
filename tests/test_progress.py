"""A progress line every interval while something happens, totals at stop, from the metrics."""

from __future__ import annotations

import logging

import pytest

from connector.telemetry.metrics import METRICS
from connector.telemetry.progress import ProgressLog


def test_a_line_per_interval_while_records_move_and_none_while_idle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connector.telemetry.progress")
    progress = ProgressLog(60.0)
    progress(1000.0)  # the first call starts the clock
    METRICS.records_consumed.labels("t").inc(120)
    METRICS.records_acknowledged.labels("t").inc(120)
    progress(1030.0)  # within the interval: nothing yet
    assert caplog.records == []
    progress(1060.0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("progress: ") and "acknowledged" in line and "2 records/s over the last 60 s" in line
    progress(1120.0)  # nothing moved and nothing waits: silent
    assert len(caplog.records) == 1
    assert "acknowledged" in ProgressLog.totals() and "dead-lettered" in ProgressLog.totals()


def test_no_line_when_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connector.telemetry.progress")
    progress = ProgressLog(0)
    METRICS.records_acknowledged.labels("t").inc(5)
    for now in (0.0, 100.0, 200.0):
        progress(now)
    assert caplog.records == []
