"""Which transform worker serves which partition: one at a time, moved when the load is uneven.

A partition's records are transformed in order, so a partition belongs to one worker at a time.
Topics carry very different traffic (in the sample mix, points and transactions bring 3/4 of the
events), and placing partitions by count alone can leave one worker with twice the work of the
other: in ``bench/run.py`` one worker was busy while the other idled, and the tail of a backlog
was drained by one worker alone. So the records of each partition are counted (halved every
interval: the last few seconds weigh most), and when the busiest worker carries clearly more than
the least busy one, one partition moves. A moving partition is *held*: its records wait in the
consumer process until the old worker has answered every chunk holding that partition, and only
then go to the new worker, which therefore sees only records after the old one's. Per-partition
order holds across a move.

Pure bookkeeping, no I/O: the pipeline owns the records, asks :meth:`plan` for a move, holds the
partition's records under :data:`HELD` and calls :meth:`release` when the old worker is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

HELD = -1  # the owner of a partition that is moving: its records wait for the move to finish

# An imbalance is worth a move when the busiest worker has this share of all recent records more
# than the least busy, and the move takes at least _MIN_GAIN off it: small ones are not worth the
# held records, and would make partitions flap between workers on noise.
_MIN_GAP = 0.10
_MIN_GAIN = 0.02
_MIN_RECORDS = 200  # recent records (decayed counts) below which the load is too small to judge


class Placement:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._owner: dict[Any, int] = {}
        self._partitions = [0] * workers  # partitions per worker, for placing new ones
        self._moving: dict[Any, tuple[int, int]] = {}  # partition → (from, to)
        self.recent: Counter[Any] = Counter()  # partition → records lately (decayed by plan())
        self.moves = 0

    def owner(self, key: Any) -> int:
        """The worker serving a partition (:data:`HELD` while it moves); new partitions go to the
        worker with the fewest."""
        no = self._owner.get(key)
        if no is None:
            no = self._owner[key] = min(range(self.workers), key=self._partitions.__getitem__)
            self._partitions[no] += 1
        return no

    def count(self, keys: Iterable[Any]) -> None:
        """Records just consumed, one key per record."""
        self.recent.update(keys)

    @property
    def moving(self) -> dict[Any, tuple[int, int]]:
        return self._moving

    def loads(self) -> list[float]:
        loads = [0.0] * self.workers
        for key, n in self.recent.items():
            no = self._owner.get(key)
            if no is not None:
                loads[self._moving[key][0] if no == HELD else no] += n
        return loads

    def plan(self) -> tuple[Any, int, int] | None:
        """Called once per interval: the partition to move (key, from, to), or None. Decays the
        counts. One move at a time."""
        loads = self.loads()
        recent = self.recent
        self.recent = Counter({k: n // 2 for k, n in recent.items() if n > 1})
        total = sum(loads)
        if self._moving or self.workers < 2 or total < _MIN_RECORDS:
            return None
        hi = max(range(self.workers), key=loads.__getitem__)
        lo = min(range(self.workers), key=loads.__getitem__)
        gap = loads[hi] - loads[lo]
        if gap < _MIN_GAP * total:
            return None
        best, gain = None, _MIN_GAIN * total
        for key, n in recent.items():
            # Moving n records' worth lowers the busier side of the pair by min(n, gap - n).
            if self._owner.get(key) == hi and min(n, gap - n) > gain:
                best, gain = key, min(n, gap - n)
        return None if best is None else (best, hi, lo)

    def hold(self, key: Any, to: int) -> int:
        """Start moving a partition to worker ``to``; returns the worker it leaves."""
        src = self._owner[key]
        assert src != HELD and src != to
        self._moving[key] = (src, to)
        self._owner[key] = HELD
        return src

    def release(self, key: Any) -> int:
        """The old worker is done with the partition: it belongs to its new worker from now on."""
        src, to = self._moving.pop(key)
        self._owner[key] = to
        self._partitions[src] -= 1
        self._partitions[to] += 1
        self.moves += 1
        return to

    def forget(self, keys: Iterable[Any]) -> None:
        """Partitions revoked or lost: placed anew if they come back."""
        for key in keys:
            no = self._owner.pop(key, None)
            if no == HELD:
                no = self._moving.pop(key)[0]  # counted on the worker it was leaving
            if no is not None:
                self._partitions[no] -= 1
            self.recent.pop(key, None)
