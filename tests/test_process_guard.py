"""Any exception while processing one record dead-letters that record (stage and exception type
named), never the process: inline and in worker processes alike. A transient error (the registry
unreachable) is still raised: nothing may be decided about the record."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from test_workers import _collect_all, _values, spec  # noqa: F401 - the module's spec fixture

from connector.avro_guard import ForeignSchema
from connector.errors import RegistryUnavailable
from connector.metrics import METRICS
from connector.process import Encoded, ProcessorSpec, RecordProcessor, Rejected
from connector.workers import WorkerPool


def _with_registry(spec: ProcessorSpec) -> ProcessorSpec:  # noqa: F811
    return ProcessorSpec(spec.decode.model_copy(update={"schema_registry_url": "http://127.0.0.1:9"}), spec.xdm,
                         spec.org_id, spec.source_name, spec.max_record_size)


def test_an_exception_in_decode_or_transform_costs_one_record(spec: ProcessorSpec,  # noqa: F811
                                                              caplog: pytest.LogCaptureFixture) -> None:
    processor = RecordProcessor(spec)
    values = _values(6, poison=False)
    real_decode, real_transform = processor.decoder.decode, processor.transformer.transform

    def decode(value: bytes | None) -> Any:
        if value is values[1]:
            raise ValueError("a reader bug")
        return real_decode(value)

    calls = iter([False, False, True, False, False])

    def transform(event: Any) -> Any:
        if next(calls):
            raise KeyError("a transform bug")
        return real_transform(event)

    processor.decoder.decode = decode  # type: ignore[method-assign]
    processor.transformer.transform = transform  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="connector.process"):
        out = processor.run(values + [values[1]])
    assert [type(o) for o in out] == [Encoded, Rejected, Encoded, Rejected, Encoded, Encoded, Rejected]
    assert out[1][:3] == ("decode", "ValueError", "unexpected_error") and "a reader bug" in out[1].detail
    assert out[3][:3] == ("transform", "KeyError", "unexpected_error") and out[3].format in ("json", "avro-single")
    assert out[6][:3] == ("decode", "ValueError", "unexpected_error")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # once per stage and type, not once per record


def test_a_registry_outage_is_still_raised(spec: ProcessorSpec) -> None:  # noqa: F811
    def lookup(_sid: int) -> str:
        raise RegistryUnavailable("down")

    processor = RecordProcessor(_with_registry(spec), lookup)
    with pytest.raises(RegistryUnavailable):
        processor.run([b"\x00\x00\x00\x00\x05\x00"])


def test_hostile_schemas_in_a_worker_are_dead_letters_not_deaths(spec: ProcessorSpec) -> None:  # noqa: F811
    """What stopped the connector (issue 29): schema ids naming a JSON Schema or Protobuf subject, a
    schema that does not parse, a recursive one with a record 100,000 deep. In a worker process,
    among good records: each a decode rejection, no worker dies."""
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    served: dict[int, Any] = {
        1: ForeignSchema("JSON"), 2: ForeignSchema("PROTOBUF"),
        3: '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "com.other.Missing"}]}',
        4: orjson.dumps(node).decode(),
    }
    hostile = [b"\x00\x00\x00\x00\x01{}", b"\x00\x00\x00\x00\x02\x0a\x01x", b"\x00\x00\x00\x00\x03\x00",
               b"\x00\x00\x00\x00\x04" + b"\x02" * 100_000 + b"\x00"]
    good = _values(20, poison=False)
    values = good[:5] + hostile[:2] + good[5:10] + hostile[2:] + good[10:]
    restarts = METRICS.worker_restarts._value.get()
    pool = WorkerPool(1, _with_registry(spec), registry_lookup=served.get)
    try:
        seq = pool.submit(0, values)
        got = _collect_all(pool, 1)[seq]
    finally:
        pool.close()
    assert METRICS.worker_restarts._value.get() == restarts
    rejected = [(o.stage, o.reason) for o in got if type(o) is Rejected]
    assert rejected == [("decode", "not_avro_schema"), ("decode", "not_avro_schema"), ("decode", "invalid_schema"),
                        ("decode", "recursive_schema")]
    assert [type(o) for o in got].count(Encoded) == len(good)
