"""`capillary-aep transform FILE`: the dry run prints envelopes and names what would be rejected."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import orjson
from fastavro import parse_schema, writer
from support import python_module

from connector.avro_schemas import LocalSchemas
from connector.config import DecodeConfig
from connector.dev.samples import generate_events, sample_xdm_config
from connector.dryrun import dry_run
from connector.process import ProcessorSpec, RecordProcessor
from connector.transform import Transformer


def transformer() -> Transformer:
    return Transformer(sample_xdm_config(), org_id="EXAMPLE0RG@AdobeOrg", source_name="t")


def processor() -> RecordProcessor:
    return RecordProcessor(ProcessorSpec(DecodeConfig(), sample_xdm_config(), "EXAMPLE0RG@AdobeOrg", "t", 940_000))


def test_json_lines_give_one_envelope_per_message_and_report_bad_lines() -> None:
    events = generate_events(10, seed=3)
    data = b"\n".join(orjson.dumps(e) for e in events) + b"\n{not json\n" + orjson.dumps({"eventName": "nope"})
    out, err = io.BytesIO(), io.StringIO()
    sent, rejected = dry_run(data, processor(), out, err)
    expected = sum(len(transformer().transform(e)) for e in events)
    lines = out.getvalue().splitlines()
    assert sent == len(lines) == expected
    assert all("header" in orjson.loads(line) and "body" in orjson.loads(line) for line in lines)
    assert rejected == 2
    assert "record 11: dead letter (decode/invalid_json)" in err.getvalue()
    assert "record 12: dead letter (transform/" in err.getvalue()


def test_avro_container_file(tmp_path: Path) -> None:
    schemas = LocalSchemas.load()
    events = generate_events(30, seed=4, event_names=["pointsIssued"])
    buf = io.BytesIO()
    writer(buf, parse_schema(schemas.parsed("pointsIssued")), events)
    out, err = io.BytesIO(), io.StringIO()
    sent, rejected = dry_run(buf.getvalue(), processor(), out, err)
    assert rejected == 0 and sent == sum(len(transformer().transform(e)) for e in events)


def test_cli_reads_stdin() -> None:
    events = generate_events(3, seed=5)
    data = b"\n".join(orjson.dumps(e) for e in events)
    proc = subprocess.run(python_module("connector", "transform", "-"), input=data, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    envelopes = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert len(envelopes) == sum(len(transformer().transform(e)) for e in events)
    assert b"0 records would be dead-lettered" in proc.stderr
