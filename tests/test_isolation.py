"""A record that kills the process processing it is isolated (its chunk split until it is alone),
dead-lettered as crashed_processing with the exit code or signal, and every other record of its
chunk, and of the chunks behind it, is answered once and in order."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from test_workers import _collect_all, _delivery_view, _values, spec  # noqa: F401 - the module's spec fixture

from connector.isolation import STRIKES, Isolation, describe_exit
from connector.metrics import METRICS
from connector.process import CRASH_EXIT_CODE, ProcessorSpec, RecordProcessor, Rejected
from connector.workers import WorkerPool

MARKER = b"KILL-THE-PROCESS"


def _crashing(spec: ProcessorSpec, signum: int = 0) -> ProcessorSpec:  # noqa: F811
    return ProcessorSpec(spec.decode, spec.xdm, spec.org_id, spec.source_name, spec.max_record_size,
                         crash_on=(MARKER, signum))


def test_pieces_make_up_their_chunk_once_whatever_order_they_come_in() -> None:
    seqs = iter(range(100, 200))
    iso = Isolation(lambda: next(seqs))
    assert iso.answered(7, ["a"]) == (7, ["a"])  # a chunk never split passes through
    (p1, a1, b1), (p2, a2, b2) = iso.split(8, 5)
    assert (a1, b1, a2, b2) == (0, 2, 2, 5)
    (p3, _, _), (p4, _, _) = iso.split(p2, 3)  # the second half is split again: records 2 and 3–4
    assert iso.chunk_of(p3) == iso.chunk_of(p4) == iso.chunk_of(p1) == 8
    assert iso.answered(p4, ["d", "e"]) is None
    assert iso.answered(p1, ["a", "b"]) is None
    assert not iso.strike(p3) and iso.strike(p3)  # alone, it has to kill twice
    assert iso.answered(p3, ["X"]) == (8, ["a", "b", "X", "d", "e"])
    assert len(iso) == 0


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGSEGV) == "signal SIGSEGV"
    assert describe_exit(86) == "exit code 86"
    assert describe_exit(None) == "exit status unknown"


@pytest.mark.parametrize(("signum", "how"), [(0, f"exit code {CRASH_EXIT_CODE}"), (signal.SIGSEGV, "signal SIGSEGV")])
def test_a_record_that_kills_its_process_is_isolated_and_the_rest_answered(
        spec: ProcessorSpec, signum: int, how: str) -> None:  # noqa: F811
    good = _values(120, seed=11, poison=False)
    killer = b'{"eventName": "' + MARKER + b'"}'
    first = good[:37] + [killer] + good[37:99]  # 100 records, the killer at 37
    second, third = good[99:110], good[110:]
    want = RecordProcessor(spec).run(good)
    crashed, restarts = METRICS.records_crashed._value.get(), METRICS.worker_restarts._value.get()
    pool = WorkerPool(1, _crashing(spec, signum))
    try:
        seqs = [pool.submit(0, chunk) for chunk in (first, second, third)]
        got = _collect_all(pool, 3, deadline_s=120)
        assert pool.pending(0) == []
    finally:
        pool.close()
    out = got[seqs[0]]
    assert len(out) == 100
    lone = out[37]
    assert type(lone) is Rejected
    assert (lone.stage, lone.error_class, lone.reason) == ("process", "ProcessCrashed", "crashed_processing")
    assert how in lone.detail
    rest = out[:37] + out[38:] + got[seqs[1]] + got[seqs[2]]
    assert _delivery_view(rest) == _delivery_view(want)
    assert METRICS.records_crashed._value.get() == crashed + 1
    # Halving 100 records down to one: 7 deaths, then one more alone (STRIKES).
    deaths = METRICS.worker_restarts._value.get() - restarts
    assert 7 + STRIKES - 1 <= deaths <= 9, deaths


def test_chunks_are_answered_in_submission_order_around_an_isolation(spec: ProcessorSpec) -> None:  # noqa: F811
    good = _values(30, seed=12, poison=False)
    killer = b'{"x": "' + MARKER + b'"}'
    pool = WorkerPool(1, _crashing(spec))
    order: list[int] = []
    try:
        seqs = [pool.submit(0, good[:10] + [killer]), pool.submit(0, good[10:20]), pool.submit(0, good[20:])]
        deadline = time.monotonic() + 120
        while len(order) < 3 and time.monotonic() < deadline:
            pool.collect(0.2, lambda seq, _outcomes: order.append(seq))
    finally:
        pool.close()
    assert order == seqs


def test_a_process_dying_on_a_lone_record_once_does_not_condemn_it(spec: ProcessorSpec) -> None:  # noqa: F811
    """An innocent record alone at a worker that dies (killed from outside) is sent once more and
    answered: only a record that kills twice is dead-lettered."""
    value = _values(1, seed=13, poison=False)
    pool = WorkerPool(1, spec)
    try:
        _collect_all(pool, 1) if pool.submit(0, value) else None  # started and ready
        os.kill(pool.pids[0], signal.SIGSTOP)  # it cannot read the next chunk before it dies
        seq = pool.submit(0, value)
        os.kill(pool.pids[0], signal.SIGKILL)
        got: dict[int, Any] = _collect_all(pool, 1)
    finally:
        pool.close()
    assert type(got[seq][0]) is not Rejected


def test_a_worker_past_its_memory_allowance_dead_letters_the_record_and_lives_on(spec: ProcessorSpec) -> None:  # noqa: F811
    """processing.worker_memory_limit_mb: with the decode limits out of the way, an array of 50
    million nulls (400 MB of Python objects from 5 bytes) hits the worker's address-space cap: a
    MemoryError, so a dead letter, and the worker goes on with the next record."""
    nulls = '{"type": "record", "name": "Nulls", "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}]}'
    unguarded = spec.decode.model_copy(update={"schema_registry_url": "http://127.0.0.1:9",
                                               "max_array_items": 10**9, "max_decoded_ratio": 10**9})
    limited = ProcessorSpec(unguarded, spec.xdm, spec.org_id, spec.source_name, spec.max_record_size,
                            memory_limit_mb=64)
    good = _values(2, seed=14, poison=False)
    bomb = b"\x00\x00\x00\x00\x01" + b"\x80\xc2\xd7\x2f" + b"\x00"  # zigzag(50,000,000), then the end
    restarts = METRICS.worker_restarts._value.get()
    pool = WorkerPool(1, limited, registry_lookup={1: nulls}.get)
    try:
        seq = pool.submit(0, [good[0], bomb, good[1]])
        out = _collect_all(pool, 1)[seq]
    finally:
        pool.close()
    assert METRICS.worker_restarts._value.get() == restarts
    assert type(out[1]) is Rejected and (out[1].stage, out[1].error_class, out[1].reason) == (
        "decode", "MemoryError", "unexpected_error")
    assert type(out[0]) is not Rejected and type(out[2]) is not Rejected
