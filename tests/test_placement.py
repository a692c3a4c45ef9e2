"""Partitions are placed on transform workers, stick to one, and move when the load is uneven:
never two workers on one partition at once, so every partition's records stay in order."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest
from harness import write_config
from support import FakeMessage

from connector.config import load_settings
from connector.dev.samples import generate_events
from connector.placement import HELD, Placement


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


# == the worker-pool processing stage: moves under load keep every partition in order ============
# Tested directly: real worker processes, no Kafka, no HTTP, no pipeline.

def _Msg(tp: tuple[str, int], off: int, value: bytes) -> FakeMessage:
    return FakeMessage(tp[0], tp[1], off, None, value)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from connector.process import ProcessorSpec

    path = write_config(tmp_path_factory.mktemp("placement") / "c.toml", bootstrap="127.0.0.1:9",
                        emulator_url="http://127.0.0.1:9", prefix="w.", group="g", metrics_port=9)
    s = load_settings(path, aep={"authentication_required": False})
    return ProcessorSpec(s.decode.model_copy(update={"schema_registry_url": ""}), s.xdm, s.aep.org_id,
                         s.aep.source_name, 940_000)


def _stage(spec: Any, parts: list[tuple[str, int]]) -> tuple[Any, dict[tuple[str, int], list[int]]]:
    """A started two-worker stage and, per partition, the offsets in the order their outcomes came."""
    from connector.processing import PoolProcessing

    seen: dict[tuple[str, int], list[int]] = {tp: [] for tp in parts}

    def on_outcomes(entries: list[Any], outcomes: list[Any]) -> None:
        assert len(entries) == len(outcomes)
        for m, tp, _epoch in entries:
            seen[tp].append(m.offset())

    stage = PoolProcessing(2, spec, None, on_outcomes)
    stage.start()
    for tp in parts:  # first seen in this order: alternate workers
        stage.placement.owner(tp)
    return stage, seen


def test_a_moving_partition_waits_until_its_old_worker_answered(spec: Any) -> None:
    a, b = ("w.points", 0), ("w.points", 1)
    stage, seen = _stage(spec, [a, b])
    events = [orjson.dumps(ev) for ev in generate_events(40, seed=2)]
    try:
        assert stage.placement.owner(a) == 0 and stage.placement.owner(b) == 1
        stage.submit([(_Msg(a, i, events[i]), a, 1) for i in range(10)])
        assert stage.pool.busy(0) == 1  # at worker 0, not answered yet
        stage.placement.plan = lambda: (a, 0, 1)  # type: ignore[method-assign]
        stage.rebalance(time.monotonic())
        stage.submit([(_Msg(a, i, events[i]), a, 1) for i in range(10, 20)])
        assert stage.pool.busy(1) == 0, "records of a moving partition went to its new worker too early"
        assert len(stage.waiting[HELD]) == 10
        stage.placement.plan = lambda: None  # type: ignore[method-assign]
        deadline = time.monotonic() + 30
        while len(seen[a]) < 20:
            stage.poll(0.05)
            assert time.monotonic() < deadline
        assert stage.placement.owner(a) == 1 and stage.placement.moves == 1
        assert seen[a] == list(range(20))
    finally:
        stage.close()


def test_partitions_moved_between_workers_under_load_stay_in_order(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import connector.processing as processing_mod

    monkeypatch.setattr(processing_mod, "PLACEMENT_INTERVAL_S", 0.0)  # look for a move on every turn
    # Two partitions carry 90% of the records, a different pair every 600 records, so partitions
    # keep moving while records of theirs are at a worker (first seen 0, 1, 2, 3: 0 and 2 on
    # worker 0).
    parts = [("w.points", i) for i in range(4)]
    pairs = [(0, 2), (1, 3), (0, 1), (2, 3), (0, 3)]
    events = generate_events(6000, seed=11)
    rnd = random.Random(5)
    offsets = dict.fromkeys(parts, 0)
    entries = []
    for i, ev in enumerate(events):
        heavy = pairs[i // 600 % len(pairs)]
        light = [n for n in range(4) if n not in heavy]
        tp = parts[i % 4] if i < 4 else parts[rnd.choice(heavy if rnd.random() < 0.9 else light)]
        entries.append((_Msg(tp, offsets[tp], orjson.dumps(ev)), tp, 1))
        offsets[tp] += 1
    stage, seen = _stage(spec, parts)
    try:
        deadline = time.monotonic() + 120
        pos = 0
        while any(len(seen[tp]) < n for tp, n in offsets.items()):
            if pos < len(entries) and not stage.full():
                stage.submit(entries[pos:pos + 200])
                pos += 200
            stage.poll(0.0 if pos < len(entries) else 0.05)
            stage.rebalance(time.monotonic())
            assert time.monotonic() < deadline, f"not finished: {({tp: len(v) for tp, v in seen.items()})}"
    finally:
        stage.close()
    assert stage.placement.moves >= 1  # the test means nothing if nothing moved
    for tp in parts:  # each partition's outcomes came back once each, in offset order
        assert seen[tp] == list(range(offsets[tp])), tp


def test_records_of_a_revoked_partition_not_yet_at_a_worker_are_dropped(spec: Any) -> None:
    a, b = ("w.points", 0), ("w.points", 2)  # both on worker 0
    stage, seen = _stage(spec, [a, ("w.points", 1), b])
    events = [orjson.dumps(ev) for ev in generate_events(30, seed=4)]
    try:
        stage.submit([(_Msg(a, i, events[i]), a, 1) for i in range(10)])  # at worker 0
        stage.submit([(_Msg(b, i, events[i]), b, 1) for i in range(10, 15)])  # waiting behind it
        assert len(stage.waiting[0]) == 5
        stage.drop({b})
        assert 0 not in stage.waiting
        deadline = time.monotonic() + 30
        while stage.outstanding:
            stage.poll(0.05)
            assert time.monotonic() < deadline
        assert seen[a] == list(range(10)) and seen[b] == []
    finally:
        stage.close()
