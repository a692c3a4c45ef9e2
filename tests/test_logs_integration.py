"""With JSON logging on, every line a process writes is JSON: librdkafka's own lines (a broker that
cannot be reached) come through the logger, not raw on stderr."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import orjson
import pytest
from support import ManagedProcess, free_port, python_module, wait_until

from connector.dev.demo import connector_toml
from connector.dev.emulator import config as em

pytestmark = pytest.mark.integration


def test_librdkafka_lines_are_json_log_lines(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(connector_toml(bootstrap=f"127.0.0.1:{free_port()}", emulator_url="http://127.0.0.1:9",
                                     metrics_port=free_port(), extra='[log]\nformat = "json"\n'))
    log = tmp_path / "run.log"
    env = {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
    proc = ManagedProcess(python_module("connector", "run", "--config", str(config)), env=env, log_path=log)
    try:
        # Nothing listens on the broker's port: librdkafka reports the refused connection.
        wait_until(lambda: '"logger":"rdkafka"' in log.read_text(), 60, what="a librdkafka line in the log")
        proc.signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    raw = [line for line in lines if not line.startswith("{")]
    assert raw == [], raw[:3]
    docs = [orjson.loads(line) for line in lines]
    rdkafka = [d for d in docs if d["logger"] == "rdkafka"]
    assert rdkafka and any("Connection refused" in d["msg"] or "FAIL" in d["msg"] for d in rdkafka)


def test_progress_lines_while_it_works_and_totals_at_stop(broker, emulator, prefix, tmp_path: Path) -> None:
    from harness import new_group, start_connector

    from connector.dev.produce import produce_events
    from connector.dev.samples import generate_events

    events = generate_events(60, seed=12)
    produce_events(broker, events, "json", topic_prefix=prefix)
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                        env={"CAPILLARY_AEP__LOG__PROGRESS_INTERVAL_S": "0.5"})
    c.wait_acknowledged(len(events))
    wait_until(lambda: "progress: " in c.proc.log_text(), 30, what="a progress line")
    assert c.stop() == 0
    text = c.proc.log_text()
    progress = next(line for line in text.splitlines() if "progress: " in line)
    assert "records read" in progress and "records/s over the last" in progress
    # Each pipeline process says its own totals as it stops.
    stopped = [line for line in text.splitlines() if "stopped: " in line]
    assert stopped and all("dead-lettered" in line for line in stopped)
    assert sum(int(re.search(r"(\d+) acknowledged", line).group(1)) for line in stopped) == len(events)


def test_a_taken_metrics_port_is_a_config_error_and_an_unexpected_one_exit_11_in_one_json_line(
        tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        config = tmp_path / "connector.toml"
        config.write_text(connector_toml(bootstrap=f"127.0.0.1:{free_port()}", emulator_url="http://127.0.0.1:9",
                                         metrics_port=port, extra='[log]\nformat = "json"\n'))
        env = {**os.environ, "CAPILLARY_AEP__AEP__IMS__CLIENT_SECRET": em.DEMO_CLIENT_SECRET}
        log = tmp_path / "run.log"
        proc = ManagedProcess(python_module("connector", "run", "--config", str(config)), env=env, log_path=log)
        assert proc.wait(60) == 2
        (line,) = [orjson.loads(x) for x in log.read_text().splitlines() if "metrics.listen" in x]
        assert line["level"] == "ERROR" and f"cannot listen on 127.0.0.1:{port}" in line["msg"]
    finally:
        taken.close()
    # An exception nobody foresaw (here: the pipeline cannot be built) is one JSON line, exit 11.
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nimport connector.pipeline.loop as p\n"
                     "class Boom(Exception): pass\n"
                     "def broken(*a, **k):\n    raise Boom('cannot build')\n"
                     "p.Pipeline.__init__ = broken\n"
                     "from connector.cli import main\nsys.exit(main())\n")
    log = tmp_path / "crash.log"
    proc = ManagedProcess([sys.executable, str(crash), "run", "--config", str(config)], env=env, log_path=log)
    assert proc.wait(60) == 11
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    assert all(x.startswith("{") for x in lines), lines[:3]
    docs = [orjson.loads(x) for x in lines if "unexpected error" in x]  # one per pipeline process
    assert docs and all(d["level"] == "ERROR" and "Boom: cannot build" in d["exc"] for d in docs)
