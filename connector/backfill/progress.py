"""Progress on stderr: a bar with rate and ETA on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import time
from typing import TextIO


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or no rate yet
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f}"
    for suffix in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or suffix == "TB":
            return f"{n:,.1f} {suffix}" if suffix != "B" else f"{n:,.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    def __init__(self, stream: TextIO, every_s: float = 5.0, width: int = 30) -> None:
        self.stream, self.every_s, self.width = stream, every_s, width
        self.tty = stream.isatty()
        self.phase = ""
        self.total = 0
        self.done = 0
        self.unit = ""
        self._start = self._last = 0.0
        self._base = 0

    def begin(self, phase: str, total: int, done: int = 0, unit: str = "records") -> None:
        self.end()
        self.phase, self.total, self.done, self.unit = phase, max(total, 0), done, unit
        self._base = done
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= (0.2 if self.tty else self.every_s):
            self._last = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.done - self._base) / elapsed
        left = max(self.total - self.done, 0)
        eta = left / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        unit = "B" if self.unit == "bytes" else self.unit
        return (f"{self.phase}: {_human(self.done, unit)} of {_human(self.total, unit)} {'' if unit == 'B' else unit} "
                f"({pct:.1f}%), {_human(rate, unit)}/s, ETA {_eta(eta)}").replace("  ", " ")

    def _show(self, now: float) -> None:
        if self.tty:
            filled = int(self.width * min(1.0, self.done / self.total)) if self.total else self.width
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.line(now)}\033[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.phase:
            self._show(time.monotonic())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
        self.phase = ""
