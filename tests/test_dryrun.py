"""`capillary-aep transform FILE`: the dry run prints envelopes and names what would be rejected."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema, writer
from support import python_module

from connector.config import DecodeConfig
from connector.decode.avro_schemas import LocalSchemas
from connector.dev.samples import generate_events, sample_xdm_config
from connector.processing.record import ProcessorSpec, RecordProcessor
from connector.tools.dryrun import dry_run
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


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _offline(*args: str, stdin: bytes | None = None) -> Any:
    """``capillary-aep ARGS`` with no CAPILLARY_AEP__ variable at all: no secret anywhere."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPILLARY_AEP__")}
    return subprocess.run(python_module("connector", *args), input=stdin, capture_output=True, timeout=60, env=env,
                          cwd=EXAMPLES.parent)


def _transform(*args: str, stdin: bytes | None = None) -> Any:
    return _offline("transform", *args, stdin=stdin)


def test_the_examples_transform_pretty_printed_or_as_json_lines() -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    assert len(files) >= 6
    for path in files:
        event = orjson.loads(path.read_bytes())
        assert b"\n  " in path.read_bytes()  # pretty-printed, as Capillary's documentation shows events
        proc = _transform(str(path))
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == len(transformer().transform(event)), path.name
    lines = _transform(str(EXAMPLES / "events.jsonl"))
    assert lines.returncode == 0 and len(lines.stdout.splitlines()) >= len(files)


def test_a_record_that_would_be_dead_lettered_exits_1() -> None:
    bad = orjson.loads((EXAMPLES / "pointsIssued.json").read_bytes())
    bad["createdAt"] = "not a time"
    proc = _transform("-", stdin=orjson.dumps(bad, option=orjson.OPT_INDENT_2))
    assert proc.returncode == 1 and b"1 records would be dead-lettered" in proc.stderr
    assert b"dead letter (transform/" in proc.stderr


def test_transform_and_xdm_export_read_a_config_without_any_secret(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('[aep]\ninlet_id = "0123abcd"\norg_id = "MYORG@AdobeOrg"\n[aep.ims]\nclient_id = "c"\n'
                      '[xdm]\ntenant_id = "acme"\n[xdm.event]\ndataset_id = "5f00e1"\n'
                      'schema_id = "https://ns.adobe.com/acme/schemas/e1"\n')
    proc = _transform("-c", str(config), str(EXAMPLES / "pointsIssued.json"))
    assert proc.returncode == 0, proc.stderr
    envelope = orjson.loads(proc.stdout.splitlines()[0])
    assert envelope["header"]["imsOrgId"] == "MYORG@AdobeOrg" and "_acme" in envelope["body"]["xdmEntity"]
    export = _offline("xdm", "export", str(tmp_path / "out"), "-c", str(config))
    assert export.returncode == 0, export.stderr
    assert "_acme" in (tmp_path / "out" / "fieldgroup-event.json").read_text()


def test_a_placeholder_left_in_the_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('[aep]\ninlet_id = "<64-hex inletId from Flow Service>"\norg_id = "MYORG@AdobeOrg"\n'
                      '[xdm.event]\ndataset_id = "<ExperienceEvent dataset id>"\n'
                      'schema_id = "https://ns.adobe.com/acme/schemas/<id>"\n')
    proc = _transform("-c", str(config), str(EXAMPLES / "pointsIssued.json"))
    assert proc.returncode == 2
    assert all(key in proc.stderr.decode() for key in ("xdm.event.dataset_id", "xdm.event.schema_id"))
