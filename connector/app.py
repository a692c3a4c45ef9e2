"""Process wiring for ``capillary-aep run``: logging, secrets, metrics/health server, pipeline."""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version

from connector.config import ConfigError, Settings
from connector.health import loop_alive, serve_health
from connector.logs import register_secret, register_settings_secrets, setup_logging
from connector.metrics import METRICS
from connector.pipeline import Pipeline

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
    pipeline = Pipeline(settings)
    pipeline.install_signal_handlers()
    if settings.metrics.listen:
        max_age = max(30.0, 10 * settings.kafka.consume_timeout_s)

        def readiness() -> dict[str, bool]:
            sink = pipeline.sink
            checks = {
                "partitions_assigned": bool(pipeline.tracker.assigned()),
                "credentials_accepted": not sink.auth_failed,
                "inlet_healthy": sink.failing_for < settings.delivery.unhealthy_after_s,
                "loop_running": time.monotonic() - pipeline.last_loop < max_age,
                "dead_letter_topic_usable": not pipeline.dlq.unusable,
                "running": not pipeline.stop_reason,
            }
            if pipeline.tokens is not None:
                checks["token_valid"] = pipeline.tokens.valid()
            return checks

        try:
            serve_health(settings.metrics.listen, METRICS.registry, loop_alive(lambda: pipeline.last_loop, max_age),
                         readiness, detail=lambda: pipeline.stop_reason or pipeline.dlq.unusable)
        except OSError as exc:  # the port is taken, or the address is not this host's
            raise ConfigError(f"metrics.listen: cannot listen on {settings.metrics.listen}: "
                              f"{exc.strerror or exc}") from None
    return pipeline.run()
