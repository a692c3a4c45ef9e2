"""Batches respect the record/byte limits, keep order per lane, and put partitions on stable lanes."""

from __future__ import annotations

import orjson

from connector.delivery.batch import WRAPPER_BYTES, Batcher, PendingRecord, encode_body


def rec(tp: tuple[str, int], offset: int, size: int = 100) -> PendingRecord:
    body = orjson.dumps({"x": "a" * (size - 8)})
    return PendingRecord(tp, offset, 1, 0, None, None, None, [body], [("event", "t")], len(body) + 1)


def test_batch_body_is_valid_json_within_max_bytes() -> None:
    b = Batcher(lanes=1, max_records=10_000, max_bytes=5_000, linger_s=10)
    for i in range(200):
        b.add(rec(("t", 0), i), now=0)
    assert b.ready(0, now=0)
    seen = []
    while b.queued():
        batch = b.take(0, now=0)
        body = encode_body(m for r in batch for m in r.messages)
        assert len(body) <= 5_000
        assert len(orjson.loads(body)["messages"]) == len(batch)
        seen += [r.offset for r in batch]
    assert seen == list(range(200))  # order kept, nothing lost


def test_count_and_linger_triggers() -> None:
    b = Batcher(lanes=1, max_records=3, max_bytes=1_000_000, linger_s=0.5)
    b.add(rec(("t", 0), 0), now=0)
    assert not b.ready(0, now=0.1)
    assert b.ready(0, now=0.6)  # linger
    b.add(rec(("t", 0), 1), now=0.1)
    b.add(rec(("t", 0), 2), now=0.1)
    assert b.ready(0, now=0.1)  # count
    assert len(b.take(0, now=0.1)) == 3


def test_partition_always_maps_to_the_same_lane() -> None:
    b = Batcher(lanes=8, max_records=10, max_bytes=100_000, linger_s=0)
    lanes = {b.lane_of(("t", p)) for p in range(64)}
    assert len(lanes) > 1
    assert all(b.lane_of(("t", p)) == b.lane_of(("t", p)) for p in range(64))


def test_partitions_spread_evenly_over_the_lanes() -> None:
    b = Batcher(lanes=8, max_records=10, max_bytes=100_000, linger_s=0)
    seen = [b.lane_of((f"bench.x.{topic}", p)) for topic in ("points", "tx", "tier", "coupon", "profile", "reward")
            for p in range(4)]
    assert sorted(seen.count(lane) for lane in range(8)) == [3] * 8  # 24 partitions, three per lane


def test_requeue_front_and_drop_partitions() -> None:
    b = Batcher(lanes=1, max_records=2, max_bytes=100_000, linger_s=0)
    for i in range(4):
        b.add(rec(("t", i % 2), i), now=0)
    first = b.take(0, now=0)
    b.requeue_front(0, first, now=0)
    assert [r.offset for r in b.lanes[0].queue] == [0, 1, 2, 3]
    assert b.drop_partitions({("t", 1)}) == 2
    assert [r.offset for r in b.lanes[0].queue] == [0, 2]
    assert b.queued_bytes() == sum(r.size for r in b.lanes[0].queue)


def test_max_record_size_leaves_room_for_the_wrapper() -> None:
    b = Batcher(lanes=1, max_records=10, max_bytes=1_000, linger_s=0)
    assert b.max_record_size == 1_000 - WRAPPER_BYTES
