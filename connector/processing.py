"""The processing stage: consumed records in, their outcomes (connector.process) out, per partition
in order. Two implementations behind one small interface, in the spirit of arroyo's strategies:

* :class:`InlineProcessing` runs decode → transform → encode on the calling (consumer) thread;
* :class:`PoolProcessing` hands records to worker processes (connector.workers), a partition to one
  worker at a time (connector.placement), in chunks that grow with the rate, and moves a partition to
  a less busy worker only once its old worker has answered every chunk holding it.

Either calls ``on_outcomes(entries, outcomes)`` with a batch of entries and their outcomes, in the
order the entries of each partition were submitted. Entries are ``(message, tp, epoch)``; the stage
only reads ``message.value()``. Not thread-safe: the consumer thread owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from connector.metrics import METRICS
from connector.offsets import TopicPartition
from connector.placement import HELD, Placement
from connector.process import Outcome, ProcessorSpec, RecordProcessor

log = logging.getLogger(__name__)

Entry = tuple[Any, TopicPartition, int]  # (consumed message, its partition, the partition's epoch)
OnOutcomes = Callable[[list[Entry], list[Outcome]], None]
# schema id → writer schema text, ForeignSchema (not Avro) or None (connector.registry)
SchemaLookup = Callable[[int], Any]

FULL_CHUNK = 256  # records: a chunk worth queueing behind the one a worker is on
MAX_CHUNK = 1_000  # records per chunk: bounds the memory of a hand-off on both sides
PLACEMENT_INTERVAL_S = 1.0  # how often the workers' loads are compared (see connector.placement)


class Processing(Protocol):
    workers: int

    def start(self) -> None: ...
    def submit(self, entries: list[Entry]) -> None: ...
    def poll(self, timeout: float) -> None: ...
    def full(self) -> bool: ...
    @property
    def outstanding(self) -> int: ...
    def rebalance(self, now: float) -> None: ...
    def drop(self, tps: set[TopicPartition]) -> None: ...
    @property
    def pids(self) -> list[int]: ...
    def close(self) -> None: ...


class InlineProcessing:
    """On this thread: outcomes are handed over before :meth:`submit` returns."""

    workers = 0

    def __init__(self, spec: ProcessorSpec, registry_lookup: SchemaLookup | None, on_outcomes: OnOutcomes) -> None:
        self.processor = RecordProcessor(spec, registry_lookup)
        self._on_outcomes = on_outcomes

    def start(self) -> None:
        pass

    def submit(self, entries: list[Entry]) -> None:
        self._on_outcomes(entries, self.processor.run([e[0].value() for e in entries]))

    def poll(self, timeout: float) -> None:
        pass

    def full(self) -> bool:
        return False

    @property
    def outstanding(self) -> int:
        return 0

    def rebalance(self, now: float) -> None:
        pass

    def drop(self, tps: set[TopicPartition]) -> None:
        pass

    @property
    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


class PoolProcessing:
    """In ``workers`` processes. ``pool_factory(workers, spec, registry_lookup)`` makes the pool
    (connector.workers.WorkerPool) when the stage starts."""

    def __init__(self, workers: int, spec: ProcessorSpec, registry_lookup: SchemaLookup | None,
                 on_outcomes: OnOutcomes, pool_factory: Callable[..., Any] | None = None) -> None:
        self.workers = workers
        self._spec = spec
        self._lookup = registry_lookup
        self._on_outcomes = on_outcomes
        self._factory = pool_factory
        self.pool: Any = None
        self.placement = Placement(workers)
        self._next_placement = 0.0
        self.chunks: dict[int, list[Entry]] = {}  # seq → entries at a worker
        self.waiting: dict[int, list[Entry]] = {}  # worker (or HELD) → entries for its next chunk

    def start(self) -> None:
        if self.pool is None:
            if self._factory is None:
                from connector.workers import WorkerPool

                self._factory = WorkerPool
            self.pool = self._factory(self.workers, self._spec, self._lookup)
            log.info("decoding and transforming in %d worker processes (pids %s)", self.workers, self.pool.pids)

    @property
    def pids(self) -> list[int]:
        return self.pool.pids if self.pool is not None else []

    @property
    def outstanding(self) -> int:
        return self.pool.outstanding if self.pool is not None else 0

    def full(self) -> bool:
        """The workers are the bottleneck: read no further ahead until they catch up."""
        return sum(map(len, self.waiting.values())) >= MAX_CHUNK * self.workers

    def submit(self, entries: list[Entry]) -> None:
        waiting = self.waiting
        owner = self.placement.owner
        for e in entries:
            waiting.setdefault(owner(e[1]), []).append(e)
        self.placement.count(e[1] for e in entries)
        self._feed()

    def poll(self, timeout: float) -> None:
        """Hand over the outcomes that came back (waiting up to ``timeout`` for the first), then feed
        the workers. Raises :class:`WorkerCrashed`."""
        if self.pool.outstanding and self.pool.collect(timeout, self._answer) and self.placement.moving:
            self._release_moved()
        if self.waiting:
            self._feed()

    def _answer(self, seq: int, outcomes: list[Outcome]) -> None:
        self._on_outcomes(self.chunks.pop(seq), outcomes)

    def _feed(self) -> None:
        """Send each worker the records waiting for it, as one chunk, when it is idle, or when it is
        busy with one chunk and a full one is ready. Under load, records pile up while a worker works,
        so chunks grow with the rate (fewer, cheaper hand-offs); at a trickle, each goes at once."""
        pool = self.pool
        for worker_no in list(self.waiting):
            if worker_no == HELD:
                continue
            chunk = self.waiting[worker_no]
            busy = pool.busy(worker_no)
            if busy == 0 or (busy == 1 and len(chunk) >= FULL_CHUNK):
                if len(chunk) > MAX_CHUNK:
                    self.waiting[worker_no] = chunk[MAX_CHUNK:]
                    chunk = chunk[:MAX_CHUNK]
                else:
                    del self.waiting[worker_no]
                self.chunks[pool.submit(worker_no, [e[0].value() for e in chunk])] = chunk

    def rebalance(self, now: float) -> None:
        """Once a second: move one partition from the busiest worker to the least busy one if the
        load is uneven (connector.placement), holding its records until the old worker is done."""
        if now < self._next_placement:
            return
        self._next_placement = now + PLACEMENT_INTERVAL_S
        move = self.placement.plan()
        if move is None:
            return
        tp, src, dst = move
        self.placement.hold(tp, dst)
        self._shift(tp, src, HELD)  # records waiting for the old worker are held, ahead of later ones
        log.debug("moving %s[%d] from transform worker %d to %d", tp[0], tp[1], src, dst)
        self._release_moved()

    def _release_moved(self) -> None:
        """Partitions on the move whose old worker has answered every chunk holding them: theirs are
        the records held, in order, and every later one."""
        for tp, (src, _dst) in list(self.placement.moving.items()):
            if any(e[1] == tp for seq in self.pool.pending(src) for e in self.chunks[seq]):
                continue
            self._shift(tp, HELD, self.placement.release(tp))
            METRICS.partition_moves.inc()

    def _shift(self, tp: TopicPartition, src: int, dst: int) -> None:
        """Move tp's waiting records from one list to the end of another, in order."""
        chunk = self.waiting.get(src)
        if not chunk:
            return
        mine = [e for e in chunk if e[1] == tp]
        if not mine:
            return
        rest = [e for e in chunk if e[1] != tp]
        if rest:
            self.waiting[src] = rest
        else:
            del self.waiting[src]
        self.waiting.setdefault(dst, []).extend(mine)

    def drop(self, tps: set[TopicPartition]) -> None:
        """Revoked partitions: records not yet at a worker are not worth transforming (those at a
        worker are dropped by the caller when their outcomes come back, by epoch); their placement
        is forgotten, a move under way included."""
        self.placement.forget(tps)
        for worker_no, chunk in list(self.waiting.items()):
            keep = [e for e in chunk if e[1] not in tps]
            if keep:
                self.waiting[worker_no] = keep
            else:
                del self.waiting[worker_no]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def make_processing(workers: int, spec: ProcessorSpec, registry_lookup: SchemaLookup | None,
                    on_outcomes: OnOutcomes) -> Processing:
    if workers == 0:
        return InlineProcessing(spec, registry_lookup, on_outcomes)
    return PoolProcessing(workers, spec, registry_lookup, on_outcomes)
