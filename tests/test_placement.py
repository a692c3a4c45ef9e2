"""Partitions are placed on transform workers, stick to one, and move when the load is uneven:
never two workers on one partition at once, so every partition's records stay in order."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import write_config
from support import FakeMessage, FakeSource

from connector.config import load_settings
from connector.placement import HELD, Placement
from connector.samples import generate_events


def test_new_partitions_spread_over_the_workers_and_stick() -> None:
    pl = Placement(2)
    owners = [pl.owner(("t", p)) for p in range(6)]
    assert sorted(owners) == [0, 0, 0, 1, 1, 1]
    assert [pl.owner(("t", p)) for p in range(6)] == owners


def _skewed(pl: Placement, heavy: list[Any], light: list[Any], n: int = 1000) -> None:
    pl.count([k for k in heavy for _ in range(n)] + [k for k in light for _ in range(n // 20)])


def test_the_busiest_worker_gives_up_the_partition_that_evens_the_load_best() -> None:
    pl = Placement(2)
    parts = [("t", p) for p in range(4)]
    assert [pl.owner(k) for k in parts] == [0, 1, 0, 1]
    _skewed(pl, heavy=[parts[0], parts[2]], light=[parts[1], parts[3]])  # worker 0 has ~all of it
    key, src, dst = pl.plan()  # type: ignore[misc]
    assert (src, dst) == (0, 1) and key in (parts[0], parts[2])
    assert pl.hold(key, dst) == 0
    assert pl.owner(key) == HELD
    _skewed(pl, heavy=[parts[0], parts[2]], light=[parts[1], parts[3]])
    assert pl.plan() is None  # one move at a time
    assert pl.release(key) == 1 and pl.owner(key) == 1 and pl.moves == 1
    assert pl.loads()[0] == pytest.approx(pl.loads()[1], rel=0.15)


def test_an_even_or_small_load_moves_nothing() -> None:
    pl = Placement(2)
    parts = [("t", p) for p in range(4)]
    for k in parts:
        pl.owner(k)
    _skewed(pl, heavy=parts[:2], light=parts[2:])  # one heavy partition on each worker
    assert pl.plan() is None
    pl.count([parts[0]] * 100)  # lopsided, but too little to judge
    pl.recent.clear()
    pl.count([parts[0]] * 100)
    assert pl.plan() is None
    assert Placement(1).plan() is None


def test_a_revoked_partition_is_forgotten_even_while_it_moves() -> None:
    pl = Placement(2)
    a, b = ("t", 0), ("t", 1)
    pl.owner(a), pl.owner(b)
    pl.hold(a, 1)
    pl.forget([a])
    assert pl.moving == {} and pl.moves == 0
    assert pl.owner(a) == 0  # placed anew: worker 0 has fewer partitions now


def test_repeated_plans_converge_on_random_skewed_traffic() -> None:
    rnd = random.Random(3)
    for _ in range(20):
        pl = Placement(2)
        parts = [("t", p) for p in range(12)]
        weights = [rnd.choice([1, 1, 2, 5, 20]) for _ in parts]
        for k in parts:
            pl.owner(k)
        for _ in range(30):
            pl.count([k for k, w in zip(parts, weights) for _ in range(w * 50)])
            move = pl.plan()
            if move:
                pl.hold(move[0], move[2])
                pl.release(move[0])
        loads = [0, 0]
        for k, w in zip(parts, weights):
            loads[pl.owner(k)] += w
        # Moves alone (no swaps) can do no better than one partition's weight; below a tenth of
        # the total, the imbalance is left alone.
        assert abs(loads[0] - loads[1]) <= max(0.1 * sum(weights), max(weights) + 0.02 * sum(weights)), (weights, loads)


# == the pipeline: moves under load keep every partition in order ==============================

def _Msg(tp: tuple[str, int], off: int, value: bytes) -> FakeMessage:  # noqa: N802
    return FakeMessage(tp[0], tp[1], off, None, value)


def _pipeline(tmp_path: Path, parts: list[tuple[str, int]]) -> tuple[Any, dict[tuple[str, int], list[int]]]:
    """A pipeline with two real workers, no Kafka and no HTTP; returns it and, per partition, the
    offsets in the order they reached the batcher."""
    from connector.pipeline import Pipeline
    from connector.sink import BatchResult
    from connector.workers import WorkerPool

    path = write_config(tmp_path / "c.toml", bootstrap="127.0.0.1:9", emulator_url="http://127.0.0.1:9",
                        prefix="w.", group="g", metrics_port=9, extra="[processing]\nworkers = 2\n")
    p = Pipeline(load_settings(path, aep={"authentication_required": False}))
    p.source = FakeSource([], 200, assign=False)
    p._on_assign([type("TP", (), {"topic": t, "partition": n})() for t, n in parts])
    seen: dict[tuple[str, int], list[int]] = {tp: [] for tp in parts}
    add = p.batcher.add

    def record(rec: Any, now: float) -> None:
        seen[rec.tp].append(rec.offset)
        add(rec, now)

    p.batcher.add = record  # type: ignore[method-assign]
    p.sink.deliver = lambda records, _cancel: BatchResult(records, requests=1)  # type: ignore[method-assign]
    p.pool = WorkerPool(2, p.spec, p.registry_lookup)
    return p, seen


def _close(p: Any) -> None:
    p.pool.close()
    p.executor.shutdown(wait=True)
    p.client.close()


def test_a_moving_partition_waits_until_its_old_worker_answered(tmp_path: Path) -> None:
    a, b = ("w.points", 0), ("w.points", 1)
    p, seen = _pipeline(tmp_path, [a, b])
    events = [orjson.dumps(ev) for ev in generate_events(40, seed=2)]
    try:
        assert p.placement.owner(a) == 0 and p.placement.owner(b) == 1
        p._ingest([_Msg(a, i, events[i]) for i in range(10)], time.monotonic())
        assert p.pool.busy(0) == 1  # at worker 0, not collected yet
        p.placement.plan = lambda: (a, 0, 1)  # type: ignore[method-assign]
        p._balance_workers()
        p._ingest([_Msg(a, i, events[i]) for i in range(10, 20)], time.monotonic())
        assert p.pool.busy(1) == 0, "records of a moving partition went to its new worker too early"
        assert len(p._waiting[HELD]) == 10
        p.placement.plan = lambda: None  # type: ignore[method-assign]
        deadline = time.monotonic() + 30
        while len(seen[a]) < 20:
            p.run_once()
            assert time.monotonic() < deadline
        assert p.placement.owner(a) == 1 and p.placement.moves == 1
        assert seen[a] == list(range(20))
    finally:
        _close(p)


def test_partitions_moved_between_workers_under_load_stay_in_order(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import connector.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "_PLACEMENT_INTERVAL_S", 0.0)  # look for a move on every loop
    # Two partitions carry 90% of the records, a different pair every 600 records, so partitions
    # keep moving while records of theirs are at a worker (first seen 0, 1, 2, 3: 0 and 2 on
    # worker 0).
    parts = [("w.points", i) for i in range(4)]
    pairs = [(0, 2), (1, 3), (0, 1), (2, 3), (0, 3)]
    events = generate_events(6000, seed=11)
    rnd = random.Random(5)
    offsets = dict.fromkeys(parts, 0)
    msgs = []
    for i, ev in enumerate(events):
        heavy = pairs[i // 600 % len(pairs)]
        light = [n for n in range(4) if n not in heavy]
        tp = parts[i % 4] if i < 4 else parts[rnd.choice(heavy if rnd.random() < 0.9 else light)]
        msgs.append(_Msg(tp, offsets[tp], orjson.dumps(ev)))
        offsets[tp] += 1
    p, seen = _pipeline(tmp_path, parts)
    p.source = src = FakeSource(msgs, 200, assign=False)
    try:
        deadline = time.monotonic() + 120
        while src.stored != offsets:
            p.run_once()
            p._dispatch(time.monotonic(), flush=src.pos == len(msgs))
            assert time.monotonic() < deadline, f"not finished: stored {src.stored}, want {offsets}"
    finally:
        _close(p)
    assert p.placement.moves >= 1  # the test means nothing if nothing moved
    for tp in parts:  # each partition's records reached the batcher once each, in offset order
        assert seen[tp] == list(range(offsets[tp])), tp
