"""The backfill's progress: a bar with rate and ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

import pytest

from connector.backfill import progress as progress_mod
from connector.backfill.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    return now


def test_a_terminal_gets_one_bar_redrawn_in_place_with_rate_and_eta(clock: list[float]) -> None:
    out = Tty()
    p = Progress(out, width=10)
    p.begin("reading", total=1000)
    clock[0] += 2.0
    p.advance(250)  # 125 records/s: 750 left → 6 s
    assert out.getvalue() == "\r[##........] reading: 250 of 1,000 records (25.0%), 125/s, ETA 00:06\x1b[K"
    p.end()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1  # one line, finished


def test_elsewhere_plain_lines_at_most_every_few_seconds(clock: list[float]) -> None:
    out = io.StringIO()
    p = Progress(out, every_s=5.0)
    p.begin("uploading", total=4096, unit="bytes")
    clock[0] += 6.0
    p.advance(1024)
    clock[0] += 1.0
    p.advance(1024)  # within 5 s of the last line: nothing
    lines = out.getvalue().splitlines()
    assert lines == ["uploading: 1.0 KB of 4.0 KB (25.0%), 171 B/s, ETA 00:18"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
