"""`dlq replay` streams the dead-letter topic a window at a time (a topic larger than the memory
one would give it is never held whole), reports progress, and turns bad option values and an
unreachable Kafka into one-line errors with documented exit codes."""

from __future__ import annotations

import io
import time
import tracemalloc
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from harness import read_topic
from support import free_port

from connector.cli import _parse_time, _Progress, main
from connector.config import KafkaConfig
from connector.dev.demo import connector_toml
from connector.dev.produce import ensure_topics
from connector.kafka.dlq import H_REASON, H_STAGE, H_TIME, H_TOPIC
from connector.tools.replay import ReplayFilter, ReplayReport, replay

LETTERS = 2400
VALUE_BYTES = 8 * 1024  # 2,400 x 8 KiB: ~19 MiB of letters


def _fill_dlq(bootstrap: str, dlq: str, target: str) -> int:
    """Write LETTERS dead letters; every 10th has another reason (the filter skips it). Returns how
    many match ``--reason aep_400``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    now = str(int(time.time() * 1000)).encode()
    matching = 0
    for i in range(LETTERS):
        reason = b"corrupt_avro" if i % 10 == 0 else b"aep_400"
        matching += reason == b"aep_400"
        headers = [(H_TOPIC, target.encode()), (H_REASON, reason), (H_STAGE, b"deliver"), (H_TIME, now)]
        value = b"%08d" % i + b"x" * (VALUE_BYTES - 8)
        while True:
            try:
                producer.produce(dlq, key=str(i % 50).encode(), value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    return matching


@pytest.mark.integration
def test_replay_streams_a_large_dead_letter_topic_in_windows_with_progress(broker: str) -> None:
    run = uuid.uuid4().hex[:8]
    dlq, target = f"r{run}.dlq", f"r{run}.replayed"
    ensure_topics(broker, [dlq, target], partitions=3)
    matching = _fill_dlq(broker, dlq, target)
    settings = SimpleNamespace(kafka=KafkaConfig(bootstrap_servers=broker, group_id=f"g{run}", dlq_topic=dlq,
                                                 topics=[target]))
    seen: list[tuple[int, int, int, int]] = []

    def progress(r: ReplayReport) -> None:
        seen.append((r.read, r.replayed, r.skipped, r.total))

    tracemalloc.start()
    try:
        report = replay(settings, ReplayFilter(reasons=frozenset({"aep_400"})), progress=progress,
                        window_letters=500, window_bytes=1024 * 1024, idle_s=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.read, report.skipped, report.replayed, report.failed) == (LETTERS, LETTERS - matching, matching, 0)
    assert report.total == LETTERS
    # One window is about 1 MiB of letters: the 19 MiB topic was never held at once.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB of Python memory"
    assert len(seen) >= LETTERS * VALUE_BYTES // (2 * 1024 * 1024)  # windows of 1 MiB and one consume() step
    assert seen == sorted(seen) and seen[-1] == (LETTERS, matching, LETTERS - matching, LETTERS)
    values = [m.value()[:8] for m in read_topic(broker, target, idle_s=2)]
    assert sorted(values) == sorted(b"%08d" % i for i in range(LETTERS) if i % 10)  # each matching letter once

    again = replay(settings, ReplayFilter(reasons=frozenset({"aep_400"})), idle_s=2)
    assert (again.read, again.replayed, again.total) == (0, 0, 0)  # progress was committed window by window


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    report = ReplayReport(read=0, total=1000)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    bar, lines = _Progress(tty), _Progress(pipe, every_s=0)
    for read in (250, 500, 1000):
        report.read, report.replayed, report.skipped = read, read - 10, 10
        bar(report)
        lines(report)
    bar.close()
    assert "read 1,000 of 1,000 letters, re-published 990, skipped 10, failed 0" in tty.getvalue()
    assert "[####################################]  1000/1000" in tty.getvalue()  # click's bar, full
    assert pipe.getvalue().splitlines() == [
        "read 250 of 1,000 letters, re-published 240, skipped 10, failed 0",
        "read 500 of 1,000 letters, re-published 490, skipped 10, failed 0",
        "read 1,000 of 1,000 letters, re-published 990, skipped 10, failed 0",
    ]


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "Invalid value for '--since': 'yesterday' is not a time: use ISO 8601"),
    (["--until", "2026-13-45"], "Invalid value for '--until': '2026-13-45' is not a time"),
    (["--limit", "0"], "Invalid value for '--limit'"),
    (["--stage", "nowhere"], "Invalid value for '--stage'"),
    (["--since", "2026-12-02", "--until", "2026-12-01"], "--until must be later than --since"),
])
def test_bad_values_are_one_line_errors_not_tracebacks(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["dlq", "replay", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_time_forms() -> None:
    assert _parse_time("1764547200000") == 1764547200000
    assert _parse_time("2025-12-01") == 1764547200000  # UTC unless a zone is given
    assert _parse_time("2025-12-01T05:30:00+05:30") == 1764547200000
    assert _parse_time("2025-12-01T00:00:00Z") == 1764547200000
    assert _parse_time("24h", now_ms=1764547200000) == 1764547200000 - 86_400_000
    assert _parse_time("7d", now_ms=0) == -7 * 86_400_000
    with pytest.raises(ValueError, match="'yesterday' is not a time"):
        _parse_time("yesterday")


def test_every_replay_option_has_help_text() -> None:
    command = main.commands["dlq"].commands["replay"]  # type: ignore[attr-defined]
    for param in command.params:
        assert getattr(param, "help", None), param.name
    assert "4 the dead-letter topic cannot be read" in (command.help or "")


def test_unreachable_kafka_is_exit_code_4_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(connector_toml(bootstrap=f"127.0.0.1:{free_port()}", emulator_url="http://127.0.0.1:9",
                                  metrics_port=None))
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "x")
    result = CliRunner().invoke(main, ["dlq", "replay", "--config", str(cfg), "--no-progress"])
    assert result.exit_code == 4, result.output
    assert result.output.startswith("error: cannot reach Kafka at 127.0.0.1:"), result.output
    assert "Traceback" not in result.output


@pytest.mark.integration
def test_no_letter_can_stop_or_steer_a_replay(broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed letters (dlq.time not a number, dlq.reason not UTF-8 or absent) are skipped, counted
    and named; a letter naming a topic the configuration does not consume is not published there,
    only to a --to-topic given explicitly."""
    run = uuid.uuid4().hex[:8]
    prefix = f"r{run}.capillary.events."
    dlq, source, foreign, chosen = f"dlq.r{run}", prefix + "customer", f"r{run}.payments", f"r{run}.elsewhere"
    ensure_topics(broker, [dlq, source, foreign, chosen], partitions=1)
    now = str(int(time.time() * 1000)).encode()

    def letter(topic: str, reason: bytes | None = b"aep_400", when: bytes = now) -> list[tuple[str, bytes]]:
        headers = [(H_TOPIC, topic.encode()), (H_STAGE, b"deliver"), (H_TIME, when)]
        return headers + ([(H_REASON, reason)] if reason is not None else [])

    producer = Producer({"bootstrap.servers": broker})
    for key, headers in [(b"good", letter(source)), (b"bad-time", letter(source, when=b"yesterday")),
                         (b"bad-reason", letter(source, reason=b"\xff\xfe")), (b"no-reason", letter(source, None)),
                         (b"foreign", letter(foreign)), (b"good-2", letter(source))]:
        producer.produce(dlq, key=key, value=b"{}", headers=headers)
    assert producer.flush(10) == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text(connector_toml(bootstrap=broker, emulator_url="http://127.0.0.1:9", metrics_port=None,
                                  prefix=prefix, dlq_topic=dlq, group=f"g{run}"))
    monkeypatch.setenv("CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET", "x")

    result = CliRunner().invoke(main, ["dlq", "replay", "--config", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 matched" in result.output and "replayed 2, failed 0" in result.output, result.output
    assert "4 letters skipped as malformed" in result.output, result.output
    for offset, why in [(1, "dlq.time 'yesterday' is not a number"), (2, "dlq.reason is not UTF-8"),
                        (3, "no dlq.reason"), (4, f"source topic '{foreign}' is not consumed")]:
        assert f"{dlq}[0]@{offset}: {why}" in result.output, result.output
    assert sorted(m.key() for m in read_topic(broker, source, idle_s=1)) == [b"good", b"good-2"]
    assert read_topic(broker, foreign, idle_s=1) == []

    # --to-topic is the one way to send letters elsewhere: the foreign one goes where it is told.
    again = CliRunner().invoke(main, ["dlq", "replay", "--config", str(cfg), "--no-progress", "--from-beginning",
                                      "--to-topic", chosen])
    assert again.exit_code == 0 and "replayed 3, failed 0" in again.output, again.output
    assert "3 letters skipped as malformed" in again.output, again.output
    assert sorted(m.key() for m in read_topic(broker, chosen, idle_s=1)) == [b"foreign", b"good", b"good-2"]
    assert read_topic(broker, foreign, idle_s=1) == []
