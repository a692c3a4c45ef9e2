"""A real Prometheus (Debian's ``prometheus`` package) scrapes a running connector with the
project's scrape config and alert rules: every ``capillary_aep_*`` name that the dashboard and the
rules use must exist among the scraped series, every rule must evaluate, and every dashboard query
must be valid PromQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer
from harness import new_group, pipeline_pids, start_connector
from support import ROOT, ManagedProcess, free_port, wait_until
from test_ops_deploy import dashboard_exprs, grafana_expand, rule_exprs

from connector.dev.produce import produce_events
from connector.dev.samples import generate_events

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NAME = re.compile(r"\bcapillary_aep_[a-z0-9_]+")
# Labelled by cause, so without a sample until the supervisor restarts a pipeline process: the test
# kills one to see it.
AFTER_A_RESTART = {"capillary_aep_pipeline_restarts_total"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(PROMETHEUS).is_file(),
                       reason="no prometheus binary: install Debian's `prometheus` package (.ci/run does)"),
]


def referenced_names() -> set[str]:
    return {n for expr in dashboard_exprs() + rule_exprs() for n in NAME.findall(expr)}


def prometheus_config(target: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with fast intervals and the connector job pointed at ``target``."""
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(ROOT / "deploy" / "prometheus" / f) for f in cfg["rule_files"]]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "capillary-aep")
    del job["dns_sd_configs"]
    job.update(scrape_interval="1s", static_configs=[{"targets": [target]}])
    cfg["scrape_configs"] = [job]
    return cfg


class Prometheus:
    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        port = free_port()
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self.proc = ManagedProcess(
            [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            log_path=tmp_path / "prometheus.log")
        wait_until(lambda: not self.proc.alive() or httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200,
                   30, what="prometheus ready")
        assert self.proc.alive(), self.proc.log_text()[-3000:]

    def api(self, path: str, **params: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]


def test_prometheus_scrapes_every_series_the_dashboard_and_alerts_use(broker, emulator, prefix,
                                                                      tmp_path: Path) -> None:
    names = referenced_names()
    assert len(names) >= 15, names  # the parser found the expressions

    # Traffic that creates every labelled series: all formats, a retry, undecodable records.
    events = generate_events(40, seed=31)
    produce_events(broker, events, "mixed", registry_url=emulator.url, topic_prefix=prefix)
    producer = Producer({"bootstrap.servers": broker})
    for i in range(2):
        producer.produce(prefix + "customer", value=b"\x07 not an event", key=f"bad-{i}".encode())
    assert producer.flush(10) == 0
    emulator.faults(status=503, count=1)
    c = start_connector(tmp_path, bootstrap=broker, emulator_url=emulator.url, prefix=prefix, group=new_group(),
                        env={"CAPILLARY_AEP__KAFKA__EXTRA": '{"statistics.interval.ms": 500}'})
    c.wait_acknowledged(len(events) + 2)

    prom = Prometheus(tmp_path, prometheus_config(f"127.0.0.1:{c.metrics_port}"))
    try:
        wait_until(lambda: prom.query('up{job="capillary-aep"} == 1'), 30, what="the connector target up")

        def scraped() -> set[str]:
            rows = prom.query('group by (__name__) ({__name__=~"capillary_aep_.+"})')
            return {r["metric"]["__name__"] for r in rows}

        try:
            wait_until(lambda: names - AFTER_A_RESTART <= scraped(), 30, what="every referenced series")
        except (AssertionError, TimeoutError):
            pytest.fail(f"referenced but never scraped: {sorted(names - AFTER_A_RESTART - scraped())}")

        # The values are the connector's, not just names.
        acked = prom.query("sum(capillary_aep_records_acknowledged_total)")
        assert float(acked[0]["value"][1]) == len(events) + 2
        dead = prom.query("sum by (stage, reason) (capillary_aep_records_dead_lettered_total)")
        assert [(r["metric"], r["value"][1]) for r in dead] == [({"stage": "decode", "reason": "unknown_format"},
                                                                 "2")]
        assert prom.query('capillary_aep_retries_total{reason="http_503"} >= 1')

        # Every alert rule loads and evaluates without error.
        def rules() -> list[dict[str, Any]]:
            found = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else []

        evaluated = wait_until(rules, 30, what="every rule evaluated")
        assert {r["name"] for r in evaluated} == {r.get("alert") or r["record"] for r in _alerts()}
        assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []

        # Every dashboard query is valid PromQL (Grafana's $__rate_interval becomes a fixed range,
        # the dashboard's variables "All").
        for expr in dashboard_exprs():
            prom.query(grafana_expand(expr))

        # A pipeline process killed while idle: the supervisor restarts it, and counts the restart
        # with no record to blame; the replica is whole again.
        os.kill(pipeline_pids(c)[-1], signal.SIGKILL)
        wait_until(lambda: prom.query('capillary_aep_pipeline_restarts_total{cause="unknown", pipeline="supervisor"} >= 1'),
                   30, what="the restart counted")
        wait_until(lambda: prom.query("capillary_aep_pipeline_processes_running == capillary_aep_pipeline_processes"),
                   30, what="every pipeline process running again")
        assert scraped() >= AFTER_A_RESTART  # (the dead process's labelled series are gone with it)
    finally:
        prom.proc.stop()
        c.stop()


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]
