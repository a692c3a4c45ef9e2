"""Per-partition acknowledgement tracking: what may be committed, and nothing more.

For each assigned partition we remember the offsets *received*, in arrival order, and the set of
offsets acknowledged (delivered to AEP, or durably written to the dead-letter topic). The
committable position is one past the highest offset ``h`` such that every record received at or
below ``h`` is acknowledged. Offsets are never assumed contiguous (compaction and transaction
markers leave gaps), so "next" always comes from what was actually received.

Each assignment of a partition gets a new epoch; acknowledgements carrying an old epoch (a batch
that finished after its partition was revoked) are ignored. Pure and Kafka-free, so it can be
tested exhaustively.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _PartitionState:
    epoch: int
    received: deque[int] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    committable: int | None = None  # next offset to read (last released + 1)
    reported: int | None = None  # last committable value handed out by take_committable()
    watched_head: int | None = None  # head offset seen by the last stall check
    head_since: float = 0.0  # when the stall check first saw that head


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._epochs: dict[TopicPartition, int] = {}
        self._pending = 0
        self.acked_total = 0  # records released for commit since start (for rates)

    # -- assignment ------------------------------------------------------------------------
    def assign(self, tp: TopicPartition) -> int:
        epoch = self._epochs.get(tp, 0) + 1
        self._epochs[tp] = epoch
        old = self._parts.get(tp)
        if old is not None:
            self._pending -= len(old.received)
        self._parts[tp] = _PartitionState(epoch)
        return epoch

    def revoke(self, tp: TopicPartition) -> None:
        """Forget a partition; later acks for its current epoch are ignored."""
        state = self._parts.pop(tp, None)
        if state is not None:
            self._pending -= len(state.received)
        self._epochs[tp] = self._epochs.get(tp, 0) + 1

    def current(self, tp: TopicPartition, epoch: int) -> bool:
        """Whether a record of assignment ``epoch`` is still ours: the one test every acknowledgement,
        re-queue and dead letter passes. A record of an older assignment (revoked since) is left
        alone — the partition's next owner reads it again."""
        return self._current(tp, epoch) is not None

    def _current(self, tp: TopicPartition, epoch: int) -> _PartitionState | None:
        state = self._parts.get(tp)
        return state if state is not None and state.epoch == epoch else None

    def assigned(self) -> list[TopicPartition]:
        return list(self._parts)

    # -- records ---------------------------------------------------------------------------
    def received(self, tp: TopicPartition, offset: int) -> int | None:
        """Record that ``offset`` was consumed; returns the partition epoch (None if not assigned)."""
        state = self._parts.get(tp)
        if state is None:
            return None
        if state.received and offset <= state.received[-1]:
            return None  # a re-fetch of something already tracked (e.g. after a seek): ignore
        state.received.append(offset)
        self._pending += 1
        return state.epoch

    def ack(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """Acknowledge one record; returns False if it belongs to a stale assignment."""
        state = self._current(tp, epoch)
        if state is None:
            return False
        received = state.received
        if received and received[0] == offset:
            # Fast path: in-order acknowledgement.
            received.popleft()
            self._pending -= 1
            last = offset
            acked = state.acked
            while received and received[0] in acked:
                last = received.popleft()
                acked.discard(last)
                self._pending -= 1
            state.committable = last + 1
        else:
            state.acked.add(offset)
        self.acked_total += 1
        return True

    # -- commit ----------------------------------------------------------------------------
    def committable(self, tp: TopicPartition) -> int | None:
        state = self._parts.get(tp)
        return state.committable if state is not None else None

    def take_committable(self) -> dict[TopicPartition, int]:
        """Committable positions that moved since the last call."""
        out: dict[TopicPartition, int] = {}
        for tp, state in self._parts.items():
            if state.committable is not None and state.committable != state.reported:
                out[tp] = state.reported = state.committable
        return out

    def stalled(self, now: float, after_s: float) -> list[tuple[TopicPartition, int, float, int]]:
        """Partitions whose oldest unacknowledged record has held the commit point for at least
        ``after_s`` while later records are acknowledged: (tp, its offset, seconds, acked behind).

        Sampled, not tracked per record: call it every second or so; a head is timed from the
        first call that saw it, so the answer is late by at most one interval."""
        out = []
        for tp, state in self._parts.items():
            head = state.received[0] if state.received else None
            if head != state.watched_head:
                state.watched_head = head
                state.head_since = now
                continue
            if head is not None and state.acked and now - state.head_since >= after_s:
                out.append((tp, head, now - state.head_since, len(state.acked)))
        return out

    @property
    def pending(self) -> int:
        """Records received but not yet released for commit, over all partitions."""
        return self._pending
