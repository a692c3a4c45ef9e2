"""Which record a pipeline process was on when it died, so that a record that kills processes costs
one dead letter, not a crash loop (issue 29's isolation, for one-process pipelines).

The supervisor maps a small shared page per child before it forks it. Before processing a batch,
the child writes the batch's ``(topic, partition, offset)`` keys there; before each record, that
record's index (one store into shared memory). When the child dies by a signal or an unexpected
exit, the supervisor reads the index back: that record becomes a *suspect*, published on a shared
board (:class:`SuspectBoard`) that every child reads before its next batch; a suspect that already
killed ``STRIKES`` processes is dead-lettered as ``crashed_processing`` instead of processed. A kill
that merely happened while a record was being processed (an operator's ``kill -9``, an OOM kill
caused by something else) strikes an innocent record once, and it is processed again: only a record
that kills twice is given up.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence

import orjson

STRIKES = 2  # deaths while processing this record before it is dead-lettered
_SIZE = 1 << 20  # a batch's keys fit (~40 bytes each): a batch that does not is processed in halves
_HEADER = struct.Struct("<qI")  # index of the record being processed (-1: none), length of the keys
_KEYS_AT = 16

Key = tuple[str, int, int]  # topic, partition, offset


class CrashMarker:
    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _SIZE)  # anonymous and shared: the forked child writes, we read
        self.slot = memoryview(self._map)[:8].cast("q")  # the record index, written per record
        self.slot[0] = -1

    def begin(self, keys: Sequence[Key]) -> bool:
        """Name the batch about to be processed; False if its keys do not fit (process it in parts)."""
        blob = orjson.dumps(keys)
        if _KEYS_AT + len(blob) > _SIZE:
            return False
        self._map[_KEYS_AT:_KEYS_AT + len(blob)] = blob
        _HEADER.pack_into(self._map, 0, -1, len(blob))
        return True

    def end(self) -> None:
        self.slot[0] = -1

    def culprit(self) -> Key | None:
        """The record being processed when the writer died, if it was processing one."""
        index, length = _HEADER.unpack_from(self._map, 0)
        if index < 0 or not length:
            return None
        keys = orjson.loads(self._map[_KEYS_AT:_KEYS_AT + length])
        if index >= len(keys):
            return None
        topic, partition, offset = keys[index]
        return topic, partition, offset

    def reset(self) -> None:
        _HEADER.pack_into(self._map, 0, -1, 0)


class SuspectBoard:
    """The records suspected of killing a process, shared with every child at once: the supervisor
    publishes, children read it when its version moved (one shared-memory read per batch). A
    seqlock: the version is odd while the supervisor writes, and a reader retries a torn read."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _SIZE)
        self._version = memoryview(self._map)[:8].cast("q")
        self._version[0] = 0
        self.suspects: dict[Key, tuple[int, str]] = {}  # the supervisor's copy

    @property
    def version(self) -> int:
        return int(self._version[0])

    def strike(self, key: Key, how: str) -> int:
        """One more process died on ``key``: publish, and return how many it has killed."""
        deaths = self.suspects.get(key, (0, ""))[0] + 1
        self.suspects[key] = (deaths, how)
        blob = orjson.dumps([[*k, n, h] for k, (n, h) in self.suspects.items()])
        if 16 + len(blob) > _SIZE:  # thousands of killers: publish the worst that fit
            worst = sorted(self.suspects.items(), key=lambda kv: -kv[1][0])
            keep = min(len(worst), 10_000)
            while True:  # 10,000 keys with long topic names do not fit either
                blob = orjson.dumps([[*k, n, h] for k, (n, h) in worst[:keep]])
                if 16 + len(blob) <= _SIZE:
                    break
                keep = min(keep - 1, keep * (_SIZE - 16) // len(blob))
        self._version[0] += 1  # odd: writing
        struct.pack_into("<I", self._map, 8, len(blob))
        self._map[16:16 + len(blob)] = blob
        self._version[0] += 1
        return deaths

    def read(self) -> tuple[int, dict[Key, tuple[int, str]]] | None:
        """``(version, suspects)`` as published (in a child); None when no consistent read came in a
        few tries (the supervisor is writing, or died writing): the caller keeps what it had and
        tries again on its next batch."""
        for _ in range(100):
            before = self.version
            if before % 2:
                continue
            (length,) = struct.unpack_from("<I", self._map, 8)
            blob = bytes(self._map[16:16 + length]) if before else b"[]"
            if self.version == before:
                try:
                    return before, {(t, p, o): (n, h) for t, p, o, n, h in orjson.loads(blob)}
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    return None
        return None
