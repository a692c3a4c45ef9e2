"""Crash isolation: the record that kills a processing process is found and dead-lettered, the rest
of its chunk goes on.

Decode refuses what it knows to be hostile (connector/avro_guard.py) and any exception of one
record dead-letters that record (connector/process.py), but a record can still end the process
that reads it: a crash in a C extension, a kill for memory. Sending its chunk again whole would
kill the next process too, and stop the connector with the whole chunk undelivered. So when a
worker dies while it was on a chunk, that chunk (the first it had not answered: workers answer in
order) is split in two, and the halves are sent to its successor in its place, ahead of the chunks
that followed; a half that kills again is split again. A single record that kills a process is
sent alone once more, and if it kills that one too it is answered with a ``crashed_processing``
rejection and dead-lettered. A killer record costs about log2(chunk size) + 2 restarts, each
logged and counted; an innocent record is dead-lettered only if two processes die while it is the
only record they hold.

:class:`Isolation` is the bookkeeping, no I/O: which pieces make up which chunk, and their outcomes
so far, so the caller sees each chunk answered once, whole and in order.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

STRIKES = 2  # deaths of a process holding only this record before it is dead-lettered


def describe_exit(code: int | None) -> str:
    """``signal SIGSEGV`` or ``exit code 70`` (multiprocessing's exitcode: negative for a signal)."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Isolation:
    def __init__(self, new_seq: Callable[[], int]) -> None:
        self._new_seq = new_seq
        self._pieces: dict[int, tuple[int, int]] = {}  # piece seq → (chunk seq, offset in the chunk)
        self._partial: dict[int, list[Any]] = {}  # chunk seq → outcomes so far (None: not yet)
        self._left: dict[int, int] = {}  # chunk seq → records not yet answered
        self._strikes: dict[int, int] = {}  # seq of a one-record piece or chunk → deaths while alone

    def chunk_of(self, seq: int) -> int:
        """The chunk a sequence number belongs to (itself, unless it is a piece)."""
        piece = self._pieces.get(seq)
        return seq if piece is None else piece[0]

    def split(self, seq: int, size: int) -> list[tuple[int, int, int]]:
        """Replace ``seq`` (``size`` > 1 records) by two pieces: ``(piece seq, start, end)`` with
        start and end relative to ``seq``'s records."""
        chunk, base = self._pieces.pop(seq, (seq, 0))
        if chunk not in self._partial:  # a whole chunk splits for the first time
            self._partial[chunk] = [None] * size
            self._left[chunk] = size
        half = size // 2
        out = []
        for start, end in ((0, half), (half, size)):
            piece = self._new_seq()
            self._pieces[piece] = (chunk, base + start)
            out.append((piece, start, end))
        return out

    def strike(self, seq: int) -> bool:
        """A process died holding only this one record: True when it has done so ``STRIKES`` times."""
        n = self._strikes.get(seq, 0) + 1
        if n >= STRIKES:
            self._strikes.pop(seq, None)
            return True
        self._strikes[seq] = n
        return False

    def answered(self, seq: int, outcomes: list[Any]) -> tuple[int, list[Any]] | None:
        """Outcomes of ``seq`` came back: ``(chunk seq, its outcomes)`` once the chunk is whole."""
        self._strikes.pop(seq, None)
        piece = self._pieces.pop(seq, None)
        if piece is None:
            return seq, outcomes
        chunk, base = piece
        partial = self._partial[chunk]
        partial[base:base + len(outcomes)] = outcomes
        self._left[chunk] -= len(outcomes)
        if self._left[chunk]:
            return None
        del self._left[chunk]
        return chunk, self._partial.pop(chunk)

    def __len__(self) -> int:
        """Chunks being narrowed down."""
        return len(self._partial)
