"""The offset tracker releases exactly the contiguous acknowledged prefix, whatever the ack order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.pipeline.offsets import OffsetTracker

TP = ("t", 0)


def test_in_order_acks_advance_committable_to_next_offset() -> None:
    tr = OffsetTracker()
    e = tr.assign(TP)
    for off in (0, 1, 2):
        tr.received(TP, off)
    tr.ack(TP, e, 0)
    assert tr.committable(TP) == 1
    tr.ack(TP, e, 1)
    tr.ack(TP, e, 2)
    assert tr.take_committable() == {TP: 3}
    assert tr.take_committable() == {}  # only changes are reported
    assert tr.pending == 0


def test_gap_in_acks_holds_the_commit_back() -> None:
    tr = OffsetTracker()
    e = tr.assign(TP)
    for off in (10, 11, 12):
        tr.received(TP, off)
    tr.ack(TP, e, 12)
    tr.ack(TP, e, 11)
    assert tr.committable(TP) is None
    assert tr.pending == 3
    tr.ack(TP, e, 10)
    assert tr.committable(TP) == 13
    assert tr.pending == 0


def test_offsets_with_holes_from_compaction_are_not_assumed_contiguous() -> None:
    tr = OffsetTracker()
    e = tr.assign(TP)
    for off in (5, 9, 40):
        tr.received(TP, off)
    tr.ack(TP, e, 5)
    tr.ack(TP, e, 9)
    assert tr.committable(TP) == 10  # next offset after 9, not "5 + 2"
    tr.ack(TP, e, 40)
    assert tr.committable(TP) == 41


def test_acks_from_a_previous_assignment_are_ignored() -> None:
    tr = OffsetTracker()
    old = tr.assign(TP)
    tr.received(TP, 0)
    tr.revoke(TP)
    new = tr.assign(TP)
    tr.received(TP, 0)
    assert not tr.ack(TP, old, 0)
    assert tr.committable(TP) is None
    assert tr.ack(TP, new, 0)
    assert tr.committable(TP) == 1


def test_unassigned_partition_tracks_nothing() -> None:
    tr = OffsetTracker()
    assert tr.received(TP, 0) is None
    assert tr.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.randoms(use_true_random=False), st.data())
def test_committable_is_always_the_contiguous_acked_prefix(gaps: list[int], rnd: random.Random, data) -> None:
    offsets, off = [], 0
    for g in gaps:
        off += g + 1
        offsets.append(off)
    tr = OffsetTracker()
    e = tr.assign(TP)
    for o in offsets:
        tr.received(TP, o)
    acked: set[int] = set()
    order = offsets[:]
    rnd.shuffle(order)
    k = data.draw(st.integers(0, len(order)))
    for o in order[:k]:
        tr.ack(TP, e, o)
        acked.add(o)
        prefix = 0
        while prefix < len(offsets) and offsets[prefix] in acked:
            prefix += 1
        expected = offsets[prefix - 1] + 1 if prefix else None
        assert tr.committable(TP) == expected
        assert tr.pending == len(offsets) - prefix


def test_a_record_is_current_only_under_the_assignment_it_was_read_in() -> None:
    tr = OffsetTracker()
    assert not tr.current(TP, 0)  # never assigned
    first = tr.assign(TP)
    assert tr.current(TP, first)
    tr.revoke(TP)
    assert not tr.current(TP, first)
    second = tr.assign(TP)
    assert tr.current(TP, second) and not tr.current(TP, first)
