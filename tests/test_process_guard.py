"""Any exception while processing one record dead-letters that record (stage and exception type
named), never the process. A transient error (the registry
unreachable) is still raised: nothing may be decided about the record."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import pytest
from harness import write_config

from connector.config import load_settings
from connector.decode.avro_guard import ForeignSchema
from connector.decode.avro_schemas import LocalSchemas
from connector.dev.produce import SampleEncoder
from connector.dev.samples import generate_events
from connector.errors import RegistryUnavailable
from connector.processing.record import Encoded, ProcessorSpec, RecordProcessor, Rejected


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ProcessorSpec:
    path = write_config(tmp_path_factory.mktemp("guard") / "c.toml", bootstrap="127.0.0.1:9",
                        emulator_url="http://127.0.0.1:9", prefix="w.", group="g", metrics_port=9)
    s = load_settings(path, aep={"dcs_url": "http://127.0.0.1:9", "inlet_id": "i", "org_id": "o@AdobeOrg",
                                 "authentication_required": False})
    # No registry: the values below are JSON and single-object Avro, which need none.
    decode = s.decode.model_copy(update={"schema_registry_url": ""})
    return ProcessorSpec(decode, s.xdm, s.aep.org_id, s.aep.source_name, 940_000)


def _values(n: int, seed: int = 3) -> list[bytes | None]:
    enc = SampleEncoder(LocalSchemas.load())
    return [enc.encode(ev, "json" if i % 2 else "avro-single")
            for i, ev in enumerate(generate_events(n, seed=seed, now_ms=int(time.time() * 1000)))]


def _with_registry(spec: ProcessorSpec) -> ProcessorSpec:
    return ProcessorSpec(spec.decode.model_copy(update={"schema_registry_url": "http://127.0.0.1:9"}), spec.xdm,
                         spec.org_id, spec.source_name, spec.max_record_size)


def test_an_exception_in_decode_or_transform_costs_one_record(spec: ProcessorSpec,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    processor = RecordProcessor(spec)
    values = _values(6)
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
    with caplog.at_level(logging.ERROR, logger="connector.processing.record"):
        out = processor.run(values + [values[1]])
    assert [type(o) for o in out] == [Encoded, Rejected, Encoded, Rejected, Encoded, Encoded, Rejected]
    assert out[1][:3] == ("decode", "ValueError", "unexpected_error") and "a reader bug" in out[1].detail
    assert out[3][:3] == ("transform", "KeyError", "unexpected_error") and out[3].format in ("json", "avro-single")
    assert out[6][:3] == ("decode", "ValueError", "unexpected_error")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # once per stage and type, not once per record


def test_a_registry_outage_is_still_raised(spec: ProcessorSpec) -> None:
    def lookup(_sid: int) -> str:
        raise RegistryUnavailable("down")

    processor = RecordProcessor(_with_registry(spec), lookup)
    with pytest.raises(RegistryUnavailable):
        processor.run([b"\x00\x00\x00\x00\x05\x00"])


def test_hostile_schemas_are_dead_letters_not_deaths(spec: ProcessorSpec) -> None:
    """What stopped the connector (issue 29): schema ids naming a JSON Schema or Protobuf subject, a
    schema that does not parse, a recursive one with a record 100,000 deep. Among good records: each
    a decode rejection, nothing raised."""
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    served: dict[int, Any] = {
        1: ForeignSchema("JSON"), 2: ForeignSchema("PROTOBUF"),
        3: '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "com.other.Missing"}]}',
        4: orjson.dumps(node).decode(),
    }
    hostile = [b"\x00\x00\x00\x00\x01{}", b"\x00\x00\x00\x00\x02\x0a\x01x", b"\x00\x00\x00\x00\x03\x00",
               b"\x00\x00\x00\x00\x04" + b"\x02" * 100_000 + b"\x00"]
    good = _values(20)
    values = good[:5] + hostile[:2] + good[5:10] + hostile[2:] + good[10:]
    got = RecordProcessor(_with_registry(spec), served.get).run(values)
    rejected = [(o.stage, o.reason) for o in got if type(o) is Rejected]
    assert rejected == [("decode", "not_avro_schema"), ("decode", "not_avro_schema"), ("decode", "invalid_schema"),
                        ("decode", "recursive_schema")]
    assert [type(o) for o in got].count(Encoded) == len(good)


def test_a_message_json_cannot_carry_is_dead_lettered_not_a_crash(spec: ProcessorSpec) -> None:
    from connector.transform.transformer import XdmMessage

    processor = RecordProcessor(spec)
    values = _values(3)
    real = processor.transformer.transform
    calls = iter([False, True, False])

    def transform(event: Any) -> list[Any]:
        out = real(event)
        if next(calls):  # what a bytes field passed through with validation off would give
            out = [XdmMessage("event", "x", "x", {"body": {"raw": b"\x00\x01"}})]
        return out

    processor.transformer.transform = transform  # type: ignore[method-assign]
    outcomes = processor.run(values)
    assert [type(o) for o in outcomes] == [Encoded, Rejected, Encoded]
    assert outcomes[1][:3] == ("transform", "TransformError", "invalid_value")
    assert "not JSON-serialisable" in outcomes[1].detail
