"""Process wiring for ``capillary-aep run``: logging, secrets, the supervisor and its pipeline processes,
one metrics/health server for the replica."""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from socket import socket
from typing import Any

from prometheus_client import CollectorRegistry

from connector.config import ConfigError, Settings
from connector.pipeline.loop import Pipeline
from connector.runtime.cpus import resolve_processes
from connector.runtime.crash_marker import CrashMarker, SuspectBoard
from connector.runtime.health import serve_health, start_serving
from connector.runtime.link import MergedMetrics, Status, serve_status
from connector.runtime.supervisor import Supervisor
from connector.telemetry.logs import register_secret, register_settings_secrets, set_context, setup_logging
from connector.telemetry.metrics import METRICS

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("capillary-aep-connector")
    except PackageNotFoundError:
        return "dev"


def run_connector(settings: Settings) -> int:
    setup_logging(settings.log.level, settings.log.format)
    register_secret(settings.aep.ims.client_secret.get_secret_value())
    register_settings_secrets(settings)
    METRICS.build_info.info({"version": _version()})
    if settings.processing.workers is not None or settings.processing.worker_memory_limit_mb is not None:
        log.warning("processing.workers and worker_memory_limit_mb are no longer used: each pipeline is one "
                    "process; set processing.processes "
                    "(docs/operations.md#sizing)")
    n = resolve_processes(settings.processing.processes)
    _preload()
    supervisor = Supervisor(n, _pipeline_body(settings, n), settings.delivery.drain_timeout_s + 5)
    supervisor.install_signal_handlers()
    server = None
    if settings.metrics.listen:
        server = _bind_health(settings, supervisor)
        supervisor.close_in_children(server.fileno())
    log.info("running %d pipeline process%s", n, "" if n == 1 else "es")
    supervisor.start()
    if server is not None:
        start_serving(server)
    try:
        return supervisor.run()
    finally:
        supervisor.close()


def _preload() -> None:
    """Import what the pipelines import lazily (the Avro libraries, the transform) before forking, so
    that every child shares it instead of importing its own copy."""
    import connector.decode.avro_guard
    import connector.decode.avro_schemas
    import connector.decode.decoder
    import connector.transform  # noqa: F401


def for_pipeline(settings: Settings, index: int, processes: int) -> Settings:
    """A pipeline process's settings: its static-membership id, its share of the buffer bounds."""
    k, d = settings.kafka, settings.delivery
    kafka = k.model_copy(update={"group_instance_id": f"{k.group_instance_id}-{index}"}) if k.group_instance_id else k
    delivery = d.model_copy(update={"max_buffered_records": max(1, d.max_buffered_records // processes),
                                    "max_buffered_bytes": max(1, d.max_buffered_bytes // processes)})
    return settings.model_copy(update={"kafka": kafka, "delivery": delivery})


def _pipeline_body(settings: Settings, processes: int) -> Any:
    def body(index: int, marker: CrashMarker, suspects: SuspectBoard, sock: socket) -> int:
        set_context(pipeline=index)
        mine = for_pipeline(settings, index, processes)
        pipeline = Pipeline(mine, marker=marker, suspects=suspects)
        pipeline.install_signal_handlers()
        serve_status(sock, lambda: pipeline_status(pipeline, mine))
        return pipeline.run()

    return body


def pipeline_status(pipeline: Pipeline, settings: Settings) -> Status:
    """What a pipeline process tells the supervisor: its metrics, and its liveness and readiness checks."""
    max_age = max(30.0, 10 * settings.kafka.consume_timeout_s)
    sink = pipeline.sink
    ready = {
        "partitions_assigned": bool(pipeline.tracker.assigned()),
        "credentials_accepted": not sink.auth_failed,
        "inlet_healthy": sink.failing_for < settings.delivery.unhealthy_after_s,
        "loop_running": time.monotonic() - pipeline.last_loop < max_age,
        "dead_letter_topic_usable": not pipeline.dlq.unusable,
        "running": not pipeline.stop_reason,
    }
    if pipeline.tokens is not None:
        ready["token_valid"] = pipeline.tokens.valid()
    return {"families": list(METRICS.registry.collect()), "live": {"loop_running": ready["loop_running"]},
            "ready": ready, "detail": pipeline.stop_reason or pipeline.dlq.unusable or ""}


def _bind_health(settings: Settings, supervisor: Supervisor) -> Any:
    """The replica's one /metrics, /healthz and /readyz, over every pipeline process."""

    def statuses() -> list[tuple[int, Status | None]]:
        return [(link.index, link.status() if child.pid else None)
                for link, child in zip(supervisor.links, supervisor.children, strict=True)]

    def alive(index: int) -> bool:
        return bool(supervisor.children[index].pid)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedMetrics(supervisor.metrics.registry,
                                    lambda: [(str(i), s) for i, s in statuses() if s is not None]))

    def liveness() -> dict[str, bool]:
        # A child being restarted is the supervisor's business, not a reason to restart the pod.
        return {"loop_running": all(s is not None and all(s["live"].values()) for i, s in statuses() if alive(i))}

    def readiness() -> dict[str, bool]:
        checks: dict[str, bool] = {"pipelines_running": not supervisor.stopping}
        for _, status in statuses():
            if status is None:
                checks["pipelines_running"] = False
                continue
            for name, ok in status["ready"].items():
                checks[name] = checks.get(name, True) and ok
        return checks

    def detail() -> str:
        parts = [supervisor.stop_reason] if supervisor.stop_reason else []
        parts += [f"pipeline {i}: {s['detail']}" for i, s in statuses() if s is not None and s["detail"]]
        return "; ".join(parts)

    try:
        return serve_health(settings.metrics.listen, registry, liveness, readiness, detail, start=False)
    except OSError as exc:  # the port is taken, or the address is not this host's
        raise ConfigError(f"metrics.listen: cannot listen on {settings.metrics.listen}: "
                          f"{exc.strerror or exc}") from None
