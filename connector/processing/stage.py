"""The processing stage: consumed records in, their outcomes (connector.processing.record) out, in order, on the
pipeline's own thread — each pipeline is one process (connector.runtime.supervisor), so there is no
hand-off to pay for.

Under a supervisor the stage names each record in a shared crash marker before processing it
(connector.runtime.crash_marker), and dead-letters the records that already killed ``STRIKES``
processes instead of processing them again. Entries are ``(message, tp, epoch)``; the stage reads
``message.value()`` (and topic, partition, offset when marking). Not thread-safe: the pipeline's
thread owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from connector.errors import Stage
from connector.pipeline.offsets import TopicPartition
from connector.processing.record import Outcome, RecordProcessor, Rejected
from connector.runtime.crash_marker import STRIKES, CrashMarker, Key, SuspectBoard
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

Entry = tuple[Any, TopicPartition, int]  # (consumed message, its partition, the partition's epoch)
OnOutcomes = Callable[[list[Entry], list[Outcome]], None]


class Processing:
    def __init__(self, processor: RecordProcessor, on_outcomes: OnOutcomes, marker: CrashMarker | None = None,
                 suspects: SuspectBoard | None = None) -> None:
        self.processor = processor
        self._on_outcomes = on_outcomes
        self._marker = marker
        self._board = suspects
        self._seen = 0  # the board's version last read
        self._suspects: dict[Key, tuple[int, str]] = {}  # records that killed processes: key → (deaths, how the last one died)

    def submit(self, entries: list[Entry]) -> None:
        board = self._board
        if board is not None and board.version != self._seen and (published := board.read()) is not None:
            self._seen, self._suspects = published
        self._on_outcomes(entries, self._screened(entries) if self._suspects else self._process(entries))

    def _process(self, entries: list[Entry]) -> list[Outcome]:
        if self._marker is None:
            return self.processor.run([e[0].value() for e in entries])
        return self._marked(self._marker, entries)

    def _marked(self, marker: CrashMarker, entries: list[Entry]) -> list[Outcome]:
        if not marker.begin([(tp[0], tp[1], m.offset()) for m, tp, _ in entries]):
            if len(entries) == 1:  # cannot happen with Kafka's names; unmarked rather than never
                return self.processor.run([entries[0][0].value()])
            half = len(entries) // 2
            return self._marked(marker, entries[:half]) + self._marked(marker, entries[half:])
        try:
            return self.processor.run([e[0].value() for e in entries], marker.slot)
        finally:
            marker.end()

    def _screened(self, entries: list[Entry]) -> list[Outcome]:
        """Records that killed ``STRIKES`` processes are answered without being processed."""
        out: list[Outcome | None] = []
        rest: list[Entry] = []
        for e in entries:
            key = (*e[1], e[0].offset())
            deaths, how = self._suspects.get(key, (0, ""))
            if deaths >= STRIKES:
                log.error("%s[%d]@%d killed %d pipeline processes (last: %s): dead-lettering it as crashed_processing",
                          *key, deaths, how)
                METRICS.records_crashed.inc()
                out.append(Rejected(Stage.PROCESS, "ProcessCrashed", "crashed_processing",
                                    f"the process processing it died ({how})"))
            else:
                out.append(None)
                rest.append(e)
        done = iter(self._process(rest))
        return [o if o is not None else next(done) for o in out]
