"""The Grafana dashboard imports into any Grafana: its datasource is a variable (no hard-coded uid
anywhere), it has job/instance/topic variables that every query uses, and it has the ingress and
pipeline-process panels an on-call engineer needs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from support import ROOT

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
TOPIC_METRICS = ("capillary_aep_records_consumed_total", "capillary_aep_records_acknowledged_total",
                 "capillary_aep_consumer_lag", "capillary_aep_committed_offset", "capillary_aep_records_decoded_total")


def _load(name: str = "capillary-aep.json") -> dict[str, Any]:
    return json.loads((ROOT / "deploy" / "grafana" / "dashboards" / name).read_text())


def _datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``datasource`` value anywhere in the document (panels, targets, variables, annotations)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}.{key}", value
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def _queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_no_panel_target_or_variable_hard_codes_a_datasource_uid(path: Any) -> None:
    doc = json.loads(path.read_text())
    refs = list(_datasource_refs(doc))
    assert refs
    for where, ref in refs:
        assert isinstance(ref, dict), (where, ref)  # a bare name/uid string is hard-coded too
        assert ref.get("uid") == "${datasource}", (where, ref)
    assert "__inputs" not in doc  # provisioning does not substitute ${DS_*} inputs; the variable works for both


def test_datasource_job_instance_and_topic_variables() -> None:
    variables = {v["name"]: v for v in _load()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert not ds.get("current")  # starts on the Grafana's default Prometheus (provisioning marks ours default)
    for name, source in (("job", "capillary_aep_build_info"), ("instance", "capillary_aep_build_info"),
                         ("topic", "capillary_aep_records_consumed_total"),
                         ("ingest_job", "capillary_ingest_requests_total")):
        var = variables[name]
        assert var["type"] == "query", name
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert var["query"]["query"].startswith(f"label_values({source}"), name
        assert var["query"]["query"].endswith(f", {name.removeprefix('ingest_')})"), name
        assert var["includeAll"] and var["multi"], name
        # "All" jobs means the jobs found (so up{job=~"$job"} counts only connector targets); within
        # them every replica and topic may simply match anything.
        assert var.get("allValue") == (None if name in ("job", "ingest_job") else ".*"), name
    assert 'job=~"$job"' in variables["instance"]["query"]["query"]  # chained: replicas of the chosen jobs


def test_every_query_follows_the_variables() -> None:
    for title, expr in _queries(_load()):
        for selector in re.findall(r"\b(capillary_aep_[a-z0-9_]+|process_[a-z_]+)(\{[^}]*\})?", expr):
            name, labels = selector
            assert 'job=~"$job"' in labels and 'instance=~"$instance"' in labels, (title, expr)
            if name in TOPIC_METRICS:
                assert 'topic=~"$topic"' in labels, (title, expr)
        for _name, labels in re.findall(r"\b(capillary_ingest_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert 'job=~"$ingest_job"' in labels, (title, expr)
        assert 'job="' not in expr, (title, expr)  # no job name hard-coded


def test_ingress_row_and_pipeline_process_panels() -> None:
    doc = _load()
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert "Webhook ingress" in rows and "Pipeline processes" in rows
    exprs = "\n".join(e for _, e in _queries(doc))
    for needle in (
        "sum by (status) (rate(capillary_ingest_requests_total",  # requests by status
        "histogram_quantile(0.5, sum by (le) (rate(capillary_ingest_accepted_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(capillary_ingest_accepted_request_duration_seconds_bucket",
        "sum by (event_type) (rate(capillary_ingest_events_total",  # events/s
        "capillary_ingest_broker_up",  # broker unavailable
        "rate(capillary_ingest_auth_failures_total",  # 401 rate
        "capillary_ingest_inflight_requests",  # in flight
        # pipeline processes: running against configured, restarts by cause, and per process (the
        # `pipeline` label every child's series carries) CPU, memory and partitions
        "sum by (instance) (capillary_aep_pipeline_processes_running",
        "sum by (instance) (capillary_aep_pipeline_processes{",
        "sum by (instance, cause) (increase(capillary_aep_pipeline_restarts_total",
        "sum by (instance) (increase(capillary_aep_records_crashed_total",
        "sum by (instance, pipeline) (rate(process_cpu_seconds_total",
        "sum by (instance, pipeline) (process_resident_memory_bytes",
        "sum by (instance, pipeline) (capillary_aep_assigned_partitions",
    ):
        assert needle in exprs, needle


REMOVED = ("capillary_aep_transform_workers", "capillary_aep_worker_restarts_total",
           "capillary_aep_worker_busy_seconds_total", "capillary_aep_partition_moves_total",
           "capillary_aep_worker_resident_memory_bytes")


def test_no_query_uses_a_metric_of_the_former_transform_workers() -> None:
    exprs = "\n".join(e for _, e in _queries(_load()))
    assert [name for name in REMOVED if name in exprs] == []


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = _load()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


def test_every_panel_says_what_it_shows() -> None:
    for panel in _load()["panels"]:
        if panel["type"] != "row":
            assert len(panel.get("description", "")) > 20, panel["title"]


def test_backlog_and_utilisation_panels() -> None:
    """Broker-side lag (it exists at zero replicas), dead-letter growth, and input wait per replica and
    per pipeline process: what tells a backlog from a bottleneck."""
    exprs = "\n".join(e for _, e in _queries(_load()))
    for needle in (
        'capillary_aep:kafka_consumergroup_lag:sum_by_topic{topic=~"$topic"}',  # the group named once, in the rule
        "sum by (reason) (increase(capillary_aep_records_dead_lettered_total",
        "sum by (instance, pipeline) (rate(capillary_aep_input_wait_seconds_total",
        "sum by (instance) (rate(capillary_aep_input_wait_seconds_total",
        "sum by (instance) (rate(capillary_aep_input_held_seconds_total",
    ):
        assert needle in exprs, needle
    assert "consumergroup=" not in exprs  # never a second place to change the group
