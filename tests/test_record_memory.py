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
