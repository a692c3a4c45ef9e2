"""A buffered record holds what its bodies weigh, no more: the pipeline keeps thousands of records
(delivery.max_buffered_records), so an encoder's spare buffer per body multiplies into the replica's
memory (orjson's output carried ~8 KB for a 1.4 KB body: 361 → 248 MB PSS at the bench's peak)."""

from __future__ import annotations

import tracemalloc

from test_process_guard import _values, spec  # noqa: F401 - the module's spec fixture

from connector.processing.record import Encoded, ProcessorSpec, RecordProcessor


def test_encoded_bodies_take_their_length_in_memory(spec: ProcessorSpec) -> None:  # noqa: F811
    processor = RecordProcessor(spec)
    values = _values(400)
    processor.run(values)  # warm: compiled plans, caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        outcomes = processor.run(values)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    bodies = [b for o in outcomes if type(o) is Encoded for b in o.bodies]
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename")
               if stat.traceback[0].filename.endswith("record.py"))
    assert bodies
    assert held < 1.5 * sum(map(len, bodies)), (held, sum(map(len, bodies)))


def test_a_record_carries_its_profile_updates_as_built_only_for_a_coalescing_sender(
        spec: ProcessorSpec) -> None:  # noqa: F811
    """With ``carry_profiles`` (a streaming run that coalesces) each profile update's envelope rides
    beside its body — the body's own content, so the merge need not parse it — and nothing else
    does; without it (coalescing off, offline tools) records hold their bodies only."""
    import dataclasses

    import orjson

    values = _values(300)
    carrying = RecordProcessor(dataclasses.replace(spec, carry_profiles=True)).run(values)
    plain = RecordProcessor(spec).run(values)
    profiles = 0
    for o, p in zip(carrying, plain):
        if type(o) is not Encoded:
            continue
        assert type(p) is Encoded and p.parsed is None and p.bodies == o.bodies
        kinds = [kind for kind, _ in o.labels]
        if "profile" not in kinds:
            assert o.parsed is None
            continue
        assert o.parsed is not None and len(o.parsed) == len(o.bodies)
        for kind, body, envelope in zip(kinds, o.bodies, o.parsed):
            assert (orjson.dumps(envelope) == body) if kind == "profile" else envelope is None
            profiles += kind == "profile"
    assert profiles > 50
